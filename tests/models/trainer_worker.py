"""DistillationTrainer runs shared by tests/models/test_trainer.py: the recipe, the student, the
Trainer's arguments, and a worker that torchrun launches with N processes (or one runs alone),
which distils fixed SST-2 rows and leaves each process's student and projections in
OUTPUT/rank-R.pt."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, TrainingArguments

from kd_core import GeneralDistiller
from kd_core.schema import DataFile, ModelSpec
from kd_models import DistillationTrainer
from kd_models.tasks import SequenceClassificationTask

STEPS, BATCH, LR = 20, 4, 1e-3
DISTILLATION = {"temperature": 2, "kd_loss_type": "kl", "hard_label_weight": 0.5,
                "intermediate_matches": [{"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse",
                                          "weight": 1, "proj": ["linear", 32, 64]}]}


def student_of(teacher: nn.Module, seed: int = 7) -> nn.Module:
    """A random 2 x 32 student of the teacher's class."""
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(
        type(teacher.config)(**{**teacher.config.to_dict(), "num_hidden_layers": 2, "hidden_size": 32,
                                "intermediate_size": 64}))


def arguments(output: Path, **extra: Any) -> TrainingArguments:
    """Deterministic Trainer arguments: sequential batches, no dropout noise in the comparison."""
    settings = {"per_device_train_batch_size": BATCH, "max_steps": STEPS, "learning_rate": LR, "weight_decay": 0.0,
                "warmup_steps": 0, "lr_scheduler_type": "linear", "max_grad_norm": 1.0, "optim": "adamw_torch",
                "train_sampling_strategy": "sequential", "logging_steps": 1, "save_strategy": "no",
                "report_to": "none", "use_cpu": True, "seed": 0, "disable_tqdm": True}
    return TrainingArguments(output_dir=str(output), **{**settings, **extra})


def _start_each_process_elsewhere() -> None:
    """Shift every process's projections but the main one's as soon as they are made, so that
    the processes agree only if DistillationTrainer gives them the main process's."""
    rank = int(os.environ.get("RANK", "0"))
    prepare = GeneralDistiller.prepare

    def shifted(self: GeneralDistiller) -> None:
        prepare(self)
        with torch.no_grad():
            for parameter in self.loss_plan.parameters():
                parameter.add_(0.1 * rank)

    GeneralDistiller.prepare = shifted


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="A TSV file with sentence and label columns.")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, required=True, help="Per process.")
    parser.add_argument("--seed", type=int, default=7, help="Of the student's initial weights.")
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--unequal-start", action="store_true",
                        help="Give each process other initial projections: the main process's must win.")
    options = parser.parse_args()
    task = SequenceClassificationTask()
    spec = ModelSpec(model=str(options.teacher))
    teacher = task.load_teacher(spec)
    length = 16
    rows = task.read(DataFile(path=str(options.data), text="sentence", label="label", limit=400), spec, length, None,
                     "data.train")
    # rows cut to the same number of tokens: a token-level mean per process then equals the global one
    full = [i for i in range(len(rows)) if int(torch.as_tensor(rows[i]["attention_mask"]).sum()) == length][:80]
    data = torch.utils.data.Subset(rows, full)
    if options.unequal_start:
        _start_each_process_elsewhere()
    trainer = DistillationTrainer(model=student_of(teacher, options.seed), teacher_model=teacher,
                                  distillation=DISTILLATION, train_dataset=data, data_collator=task.collator(spec),
                                  args=arguments(options.output, per_device_train_batch_size=options.batch_size,
                                                 ddp_backend="gloo", max_grad_norm=options.max_grad_norm))
    trainer.train()
    options.output.mkdir(parents=True, exist_ok=True)
    torch.save({"student": trainer.model.state_dict(), "projections": trainer.loss_plan.state_dict(),
                "logs": [entry for entry in trainer.state.log_history if "kd" in entry]},
               options.output / f"rank-{trainer.args.process_index}.pt")


if __name__ == "__main__":
    main()
