"""Data-parallel training with torchrun on CPU (gloo): two processes with per-process batch b end
where one process with batch 2b ends, up to float-reduction noise; rank 0 alone writes; resume works."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _torchrun(processes: int, output: Path, *args: str, fails: bool = False) -> str:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", str(29500 + os.getpid() % 1000), "-m", "tests.e2e.ddp_worker",
               "--output", str(output), *args]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=environment)
    assert (result.returncode != 0) == fails, result.stderr[-4000:]
    return result.stderr


def _weights(output: Path) -> dict[str, torch.Tensor]:
    return torch.load(output / "student.pt", weights_only=True)


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_processes_follow_one_process_with_the_global_batch(tmp_path: Path) -> None:
    _torchrun(2, tmp_path / "two", "--batch-size", "4")
    _torchrun(1, tmp_path / "one", "--batch-size", "8")
    _torchrun(1, tmp_path / "other-seed", "--batch-size", "8", "--seed", "1")
    two, one, other = _weights(tmp_path / "two"), _weights(tmp_path / "one"), _weights(tmp_path / "other-seed")
    noise, seed_effect = _max_difference(two, one), _max_difference(one, other)
    assert noise < 1e-5 and noise < seed_effect / 1000, (noise, seed_effect)
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 13)), "rank 0 alone writes metrics"


def test_two_processes_and_two_micro_batches_follow_one_batch_token_for_token(tmp_path: Path) -> None:
    # sentences of 2 to 10 tokens: each process's (or micro-batch's) half of a step holds another
    # number of tokens, and every term is the mean over the whole step's tokens
    _torchrun(2, tmp_path / "two", "--batch-size", "4", "--ragged")
    _torchrun(1, tmp_path / "accumulated", "--batch-size", "4", "--accumulate", "2", "--ragged")
    _torchrun(1, tmp_path / "one", "--batch-size", "8", "--ragged")
    _torchrun(1, tmp_path / "other-seed", "--batch-size", "8", "--ragged", "--seed", "1")
    one, other = _weights(tmp_path / "one"), _weights(tmp_path / "other-seed")
    seed_effect = _max_difference(one, other)
    for name in ("two", "accumulated"):
        noise = _max_difference(_weights(tmp_path / name), one)
        assert noise < 1e-5 and noise < seed_effect / 1000, (name, noise, seed_effect)


def test_distributed_run_resumes_bit_for_bit(tmp_path: Path) -> None:
    _torchrun(2, tmp_path / "straight", "--batch-size", "4", "--ckpt-steps", "5")
    _torchrun(2, tmp_path / "resumed", "--batch-size", "4", "--ckpt-steps", "5")
    for name in ("step-00000010", "step-00000012"):  # as if killed after step 5
        shutil.rmtree(tmp_path / "resumed" / "checkpoints" / name)
    _torchrun(2, tmp_path / "resumed", "--batch-size", "4", "--ckpt-steps", "5", "--resume")
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_the_main_process_decides_when_to_stop_and_which_weights_every_rank_keeps(tmp_path: Path) -> None:
    # every other rank scores 100 worse: ranks that judged for themselves would stop apart and hang
    _torchrun(2, tmp_path / "two", "--batch-size", "4", "--steps", "40", "--validate")
    _torchrun(1, tmp_path / "one", "--batch-size", "8", "--steps", "40", "--validate")
    two, one = (json.loads((tmp_path / name / "validation.json").read_text()) for name in ("two", "one"))
    assert two["stopped_early"] and (two["best_step"], two["last_step"]) == (one["best_step"], one["last_step"])
    assert two["best_step"] < two["last_step"] < 40
    assert _max_difference(_weights(tmp_path / "two"), _weights(tmp_path / "one")) < 1e-5


def test_fsdp_shards_student_and_teacher_and_follows_one_process(tmp_path: Path) -> None:
    _torchrun(2, tmp_path / "fsdp", "--batch-size", "4", "--ragged", "--distributed", "fsdp", "--report-held")
    _torchrun(1, tmp_path / "one", "--batch-size", "8", "--ragged")
    _torchrun(1, tmp_path / "other-seed", "--batch-size", "8", "--ragged", "--seed", "1")
    for rank in (0, 1):  # each process held about half of each model while it trained
        held = json.loads((tmp_path / "fsdp" / f"held-{rank}.json").read_text())
        assert 0.3 < held["student"] < 0.7 and 0.3 < held["teacher"] < 0.7, held
    one, other = _weights(tmp_path / "one"), _weights(tmp_path / "other-seed")
    sharded = _weights(tmp_path / "fsdp")  # whole again: the student saved after training
    assert sharded.keys() == one.keys() and all(sharded[k].shape == one[k].shape for k in one)
    noise, seed_effect = _max_difference(sharded, one), _max_difference(one, other)
    assert noise < 1e-5 and noise < seed_effect / 1000, (noise, seed_effect)


def test_an_fsdp_run_resumes_bit_for_bit(tmp_path: Path) -> None:
    arguments = ("--batch-size", "4", "--ragged", "--distributed", "fsdp", "--ckpt-steps", "5")
    _torchrun(2, tmp_path / "straight", *arguments)
    _torchrun(2, tmp_path / "resumed", *arguments)
    for name in ("step-00000010", "step-00000012"):  # as if killed after step 5
        shutil.rmtree(tmp_path / "resumed" / "checkpoints" / name)
    _torchrun(2, tmp_path / "resumed", *arguments, "--resume")
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    error = _torchrun(2, tmp_path / "resumed", "--batch-size", "4", "--ragged", "--ckpt-steps", "5", "--resume",
                      fails=True)
    assert "training.distributed fsdp; resume it the same way" in error


def test_fsdp_refuses_what_would_not_run_on_every_process(tmp_path: Path) -> None:
    error = _torchrun(2, tmp_path / "validated", "--batch-size", "4", "--distributed", "fsdp", "--validate",
                      fails=True)
    assert "training.distributed 'fsdp' runs every forward on every process together" in error
    assert "validation during training" in error
