"""DistillationTrainer: the same batches distilled by a transformers Trainer and by kd's own engine
give the same loss terms at step 1 and the same weights after 20 steps; projections join the
optimizer, every term reaches the Trainer's logs, and a checkpoint keeps the projections."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from kd_core import ConfigError, DistillationConfig, GeneralDistiller, TrainingConfig
from kd_core.assembly import linear_schedule_with_warmup
from kd_core.schema import DataFile, ModelSpec
from kd_models import DistillationTrainer, HFAdaptor
from kd_models.tasks import SequenceClassificationTask
from tests.conftest import DEMO_DATA, ROOT
from tests.models.trainer_worker import BATCH, DISTILLATION, LR, STEPS, arguments, student_of


@pytest.fixture
def setup(tiny_teacher_dir: Path, sst2_dir: Path):
    task = SequenceClassificationTask()
    spec = ModelSpec(model=str(tiny_teacher_dir))
    teacher = task.load_teacher(spec)
    data = task.read(DataFile(path=str(sst2_dir / "train.tsv"), text="sentence", label="label", limit=40), spec, 64,
                     None, "data.train")
    return teacher, student_of(teacher), data, task.collator(spec)


def test_the_trainer_distils_as_kd_distill_does(setup, tmp_path: Path) -> None:
    teacher, student, data, collate = setup
    ours, initial = copy.deepcopy(student), copy.deepcopy(student)
    config = DistillationConfig.from_dict(DISTILLATION)
    distiller = GeneralDistiller(TrainingConfig(output_dir=str(tmp_path / "kd"), progress=False, ckpt_steps=STEPS),
                                 config, teacher, ours, HFAdaptor(), HFAdaptor())
    trainer = DistillationTrainer(model=student, teacher_model=teacher, distillation=DISTILLATION,
                                  args=arguments(tmp_path / "trainer"), train_dataset=data, data_collator=collate)
    assert [n for n, _ in trainer.loss_plan.named_parameters()], "the linear projection exists"
    trainer.loss_plan.load_state_dict(distiller.loss_plan.state_dict())  # the same random projection
    trainer.train()
    optimizer = torch.optim.AdamW(ours.parameters(), lr=LR, weight_decay=0.0)
    distiller.train(optimizer, DataLoader(data, batch_size=BATCH, shuffle=False, collate_fn=collate), num_steps=STEPS,
                    scheduler_class=linear_schedule_with_warmup,
                    scheduler_args={"num_warmup_steps": 0, "num_training_steps": STEPS}, max_grad_norm=1.0)
    logged = [entry for entry in trainer.state.log_history if "kd" in entry]
    first = json.loads((tmp_path / "kd" / "metrics.jsonl").read_text().splitlines()[0])
    assert len(logged) == STEPS
    for term in ("kd", "hard_label", "match0.hidden_mse"):
        assert logged[0][term] == pytest.approx(first[term], rel=1e-5), term
    difference, trained = (max(float((a - b).abs().max()) for a, b in zip(student.state_dict().values(),
                                                                           other.state_dict().values(), strict=True))
                           for other in (ours, initial))
    assert difference < 1e-4 and trained > 100 * difference, (difference, trained)
    projections = zip(trainer.loss_plan.state_dict().values(), distiller.loss_plan.state_dict().values(), strict=True)
    assert max(float((a - b).abs().max()) for a, b in projections) < 1e-4, "the projection trained alike"


def test_a_trainer_checkpoint_keeps_the_projections(setup, tmp_path: Path) -> None:
    teacher, student, data, collate = setup
    checkpointed = arguments(tmp_path / "run", max_steps=4, save_strategy="steps", save_steps=2)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, distillation=DISTILLATION, args=checkpointed,
                                  train_dataset=data, data_collator=collate)
    trainer.train()
    saved = torch.load(tmp_path / "run" / "checkpoint-2" / "kd_loss_plan.pt", weights_only=True)
    assert saved.keys() == trainer.loss_plan.state_dict().keys()
    resumed = DistillationTrainer(model=copy.deepcopy(student), teacher_model=teacher, distillation=DISTILLATION,
                                  args=checkpointed, train_dataset=data, data_collator=collate)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    for key, value in trainer.loss_plan.state_dict().items():
        torch.testing.assert_close(resumed.loss_plan.state_dict()[key], value)


def _torchrun(processes: int, output: Path, teacher: Path, *args: str) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", str(29500 + (os.getpid() + processes) % 1000), "-m", "tests.models.trainer_worker",
               "--teacher", str(teacher), "--data", str(DEMO_DATA / "train.tsv"), "--output", str(output), *args]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=environment)
    assert result.returncode == 0, result.stderr[-4000:]
    return {rank: torch.load(output / f"rank-{rank}.pt", weights_only=True) for rank in range(processes)}


def _largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("max_grad_norm", ["1.0", "0"])
def test_two_processes_distil_as_one_with_the_global_batch(tiny_teacher_dir: Path, tmp_path: Path,
                                                          max_grad_norm: str) -> None:
    """Under torchrun (2 processes, gloo) the Trainer's DDP averages the student's gradients and
    DistillationTrainer the projections' (before clipping, or before the step without it), which
    start from the main process's weights even where the processes made others: the processes stay
    identical, and end where one process with their global batch ends, far closer
    than another initial seed."""
    two = _torchrun(2, tmp_path / "two", tiny_teacher_dir, "--batch-size", "2", "--max-grad-norm", max_grad_norm,
                    "--unequal-start")
    one = _torchrun(1, tmp_path / "one", tiny_teacher_dir, "--batch-size", "4", "--max-grad-norm", max_grad_norm)[0]
    other = _torchrun(1, tmp_path / "other", tiny_teacher_dir, "--batch-size", "4", "--seed", "8",
                      "--max-grad-norm", max_grad_norm)[0]
    for part in ("student", "projections"):
        assert _largest_difference(two[0][part], two[1][part]) == 0, f"the processes' {part} differ"
        noise = _largest_difference(two[0][part], one[part])
        assert noise < 1e-5, (part, noise)
    assert _largest_difference(one["student"], other["student"]) > 1e-2
    logged_two, logged_one = two[0]["logs"], one["logs"]
    assert len(logged_two) == STEPS == len(logged_one)
    for term in ("kd", "hard_label", "match0.hidden_mse"):
        assert logged_two[0][term] == pytest.approx(logged_one[0][term], rel=1e-5), "terms are means over processes"


def test_accumulated_micro_batches_distil_as_one_batch_of_their_rows(setup, tmp_path: Path) -> None:
    """2 accumulated micro-batches of 2 sentences end where batches of 4 end: every term (the
    hidden states' over real tokens, of sentences of different lengths) is a mean over the step's
    items, not a mean of the micro-batches' means."""
    teacher, student, data, collate = setup
    students, logs = {}, {}
    for name, batch, accumulate in (("whole", BATCH, 1), ("accumulated", BATCH // 2, 2)):
        model = copy.deepcopy(student)
        trainer = DistillationTrainer(model=model, teacher_model=teacher, distillation=DISTILLATION,
                                      args=arguments(tmp_path / name, per_device_train_batch_size=batch,
                                                     gradient_accumulation_steps=accumulate),
                                      train_dataset=data, data_collator=collate)  # projections from args.seed
        trainer.train()
        students[name] = model.state_dict()
        logs[name] = [entry for entry in trainer.state.log_history if "kd" in entry]
    apart = max(float((students["whole"][k] - students["accumulated"][k]).abs().max()) for k in students["whole"])
    assert apart < 1e-5, apart
    for term in ("loss", "kd", "hard_label", "match0.hidden_mse"):
        assert logs["accumulated"][0][term] == pytest.approx(logs["whole"][0][term], rel=1e-5), term


def test_the_trainer_refuses_fused_linear_whose_decoder_call_would_go_around_its_wrapping(setup,
                                                                                       tmp_path: Path) -> None:
    teacher, student, data, collate = setup
    with pytest.raises(ConfigError, match=r"does not take distillation\.fused_linear"):
        DistillationTrainer(model=student, teacher_model=teacher, distillation={**DISTILLATION, "fused_linear": True},
                            args=arguments(tmp_path), train_dataset=data, data_collator=collate)
