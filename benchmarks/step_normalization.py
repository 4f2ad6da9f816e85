"""Does a step's result depend on how its batch is split? The SST-2 recipe, split four ways.

``examples/recipes/sst2_minilm.yaml`` (MiniLM teacher, 2x128 student, ``ce`` on the logits plus
``hidden_mse`` over tokens through a projection, Adam) run for a few steps with a global batch
of 16 as one batch (1 x 16), as two accumulated micro-batches (2 x 8) and as two processes under
torchrun (2 ranks x 8: data-parallel, and FSDP2 with the student and the teacher sharded),
dropout off so that only the split differs. Each run's student is compared with the 1 x 16
run's: the L2 norm of the weight difference relative to the difference another seed's 1 x 16
run ends at (the measure of issue 19). kd normalises every term over the step's tokens
(kd_core.normalization), so the splits should differ by float noise only.

    python -m benchmarks.step_normalization            # about 1 minute on 2 cores
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from benchmarks.results_file import RESULTS, write_results
from kd_core.machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "recipes" / "sst2_minilm.yaml"
RESULT = RESULTS / "step-normalization.json"


def _overrides(steps: int, batch_size: int, accumulation: int, seed: int, distributed: str) -> list[str]:
    fields = {
        "training.num_steps": steps, "training.batch_size": batch_size,
        "training.gradient_accumulation_steps": accumulation, "training.seed": seed, "training.eval_steps": "null",
        "training.ckpt_steps": "null", "training.progress": "false",
        "teacher.finetune": "null", "teacher.allow_untrained_head": "true",
        "student.config.hidden_dropout_prob": 0.0, "student.config.attention_probs_dropout_prob": 0.0,
        "data.eval": "null", "data.validation": "null", "training.distributed": distributed,
    }
    return [argument for key, value in fields.items() for argument in ("--set", f"{key}={value}")]


def _run(output: Path, processes: int, steps: int, batch_size: int, accumulation: int = 1, seed: int = 0,
         distributed: str = "ddp") -> float:
    kd = shutil.which("kd") or sys.exit("the kd command is not on PATH: activate the environment (make .venv)")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                "--master_port", str(29600 + os.getpid() % 1000), kd] if processes > 1 else [kd]
    command = [*launcher, "distill", str(RECIPE), "-o", str(output), *_overrides(steps, batch_size, accumulation, seed,
                                                                                   distributed)]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": str(max(1, torch.get_num_threads() // processes))})
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def _folder(work: Path, run: str) -> Path:
    return work / run.replace(" ", "").replace(",", "-")


def _weights(output: Path) -> dict[str, torch.Tensor]:
    return load_file(output / "student" / "model.safetensors")


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "step-normalization")
    args = parser.parse_args(argv)
    runs = {"1 x 16": (1, 16, 1, 0, "ddp"), "2 accumulated x 8": (1, 8, 2, 0, "ddp"),
            "2 ranks x 8": (2, 8, 1, 0, "ddp"), "2 ranks x 8, FSDP": (2, 8, 1, 0, "fsdp"),
            "1 x 16, seed 1": (1, 16, 1, 1, "ddp")}
    seconds = {}
    for name, (processes, batch_size, accumulation, seed, distributed) in runs.items():
        seconds[name] = round(_run(_folder(args.work, name), processes, args.steps, batch_size, accumulation,
                                   seed, distributed), 1)
        print(f"{name}: {seconds[name]} s", flush=True)
    weights = {name: _weights(_folder(args.work, name)) for name in runs}
    reference = weights["1 x 16"]
    seed_effect = _distance(reference, weights["1 x 16, seed 1"])
    splits = {}
    for name in ("2 accumulated x 8", "2 ranks x 8", "2 ranks x 8, FSDP"):
        difference = _distance(weights[name], reference)
        splits[name] = {"l2_difference": difference, "relative_to_other_seed": difference / seed_effect}
        print(f"{name} vs 1 x 16: L2 {difference:.3g}, {difference / seed_effect:.3g} of another seed's difference")
    write_results({"benchmark": "step_normalization", "date": datetime.date.today().isoformat(),
                   "machine": describe_machine(), "recipe": str(RECIPE.relative_to(ROOT)), "steps": args.steps,
                   "other_seed_l2": seed_effect, "splits": splits, "seconds": seconds,
                   "command": "python -m benchmarks.step_normalization"}, RESULT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
