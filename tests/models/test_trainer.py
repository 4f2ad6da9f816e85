"""DistillationTrainer: the same batches distilled by a transformers Trainer and by kd's own engine
give the same loss terms at step 1 and the same weights after 20 steps; projections join the
optimizer, every term reaches the Trainer's logs, and a checkpoint keeps the projections."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, TrainingArguments

from kd_core import DistillationConfig, GeneralDistiller, TrainingConfig
from kd_core.assembly import linear_schedule_with_warmup
from kd_core.schema import DataFile, ModelSpec
from kd_models import DistillationTrainer, HFAdaptor
from kd_models.tasks import SequenceClassificationTask

STEPS, BATCH, LR = 20, 4, 1e-3
DISTILLATION = {"temperature": 2, "kd_loss_type": "kl", "hard_label_weight": 0.5,
                "intermediate_matches": [{"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse",
                                          "weight": 1, "proj": ["linear", 32, 64]}]}


@pytest.fixture
def setup(tiny_teacher_dir: Path, sst2_dir: Path):
    task = SequenceClassificationTask()
    spec = ModelSpec(model=str(tiny_teacher_dir))
    teacher = task.load_teacher(spec)
    data = task.read(DataFile(path=str(sst2_dir / "train.tsv"), text="sentence", label="label", limit=40), spec, 64,
                     None, "data.train")
    torch.manual_seed(7)
    student = AutoModelForSequenceClassification.from_config(
        type(teacher.config)(**{**teacher.config.to_dict(), "num_hidden_layers": 2, "hidden_size": 32,
                                "intermediate_size": 64}))
    return teacher, student, data, task.collator(spec)


def _arguments(output: Path, **extra) -> TrainingArguments:
    settings = {"per_device_train_batch_size": BATCH, "max_steps": STEPS, "learning_rate": LR, "weight_decay": 0.0,
                "warmup_steps": 0, "lr_scheduler_type": "linear", "max_grad_norm": 1.0, "optim": "adamw_torch",
                "train_sampling_strategy": "sequential", "logging_steps": 1, "save_strategy": "no",
                "report_to": "none", "use_cpu": True, "seed": 0, "disable_tqdm": True}
    return TrainingArguments(output_dir=str(output), **{**settings, **extra})


def test_the_trainer_distils_as_kd_distill_does(setup, tmp_path: Path) -> None:
    teacher, student, data, collate = setup
    ours, initial = copy.deepcopy(student), copy.deepcopy(student)
    config = DistillationConfig.from_dict(DISTILLATION)
    distiller = GeneralDistiller(TrainingConfig(output_dir=str(tmp_path / "kd"), progress=False, ckpt_steps=STEPS),
                                 config, teacher, ours, HFAdaptor(), HFAdaptor())
    trainer = DistillationTrainer(model=student, teacher_model=teacher, distillation=DISTILLATION,
                                  args=_arguments(tmp_path / "trainer"), train_dataset=data, data_collator=collate)
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
    arguments = _arguments(tmp_path / "run", max_steps=4, save_strategy="steps", save_steps=2)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, distillation=DISTILLATION, args=arguments,
                                  train_dataset=data, data_collator=collate)
    trainer.train()
    saved = torch.load(tmp_path / "run" / "checkpoint-2" / "kd_loss_plan.pt", weights_only=True)
    assert saved.keys() == trainer.loss_plan.state_dict().keys()
    resumed = DistillationTrainer(model=copy.deepcopy(student), teacher_model=teacher, distillation=DISTILLATION,
                                  args=arguments, train_dataset=data, data_collator=collate)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    for key, value in trainer.loss_plan.state_dict().items():
        torch.testing.assert_close(resumed.loss_plan.state_dict()[key], value)
