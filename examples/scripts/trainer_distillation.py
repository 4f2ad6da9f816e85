"""Distillation added to a transformers Trainer script: an SST-2 teacher into a 3-layer student.

    python examples/scripts/trainer_distillation.py --teacher runs/teacher/model --output runs/trainer-kd

The teacher is any fine-tuned sequence classifier (``kd train`` writes one: see the README). The
student takes every other layer of the teacher (``kd_models.extract_student``); the data is the
SST-2 subset that ships with kd-core. Everything but the three marked lines is an ordinary
Trainer script.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, TrainingArguments

from kd_core.data import read_records
from kd_core.demo import DEMO_DATA as SST2
from kd_models import DistillationTrainer, extract_student  # kd (1 of 3)


def tokenized(tokenizer, path: Path, limit: int | None) -> list[dict]:
    rows = read_records(path, limit)
    encoded = tokenizer([row["sentence"] for row in rows], truncation=True, max_length=128)
    return [{**{k: v[i] for k, v in encoded.items()}, "labels": int(row["label"])} for i, row in enumerate(rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="A fine-tuned sequence classifier (folder).")
    parser.add_argument("--output", default="runs/trainer-kd")
    parser.add_argument("--max-steps", type=int, default=600)
    parser.add_argument("--limit", type=int, default=None, help="Read only this many training and dev sentences.")
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher)
    student = extract_student(teacher, num_layers=teacher.config.num_hidden_layers // 2, method="first")
    training = TrainingArguments(output_dir=args.output, per_device_train_batch_size=32, learning_rate=1e-4,
                                 max_steps=args.max_steps, warmup_steps=args.max_steps // 10, logging_steps=50,
                                 save_strategy="no", eval_strategy="no", report_to="none", use_cpu=True)
    trainer = DistillationTrainer(  # kd (2 of 3): a Trainer that distils
        model=student, teacher_model=teacher,
        distillation={"temperature": 4, "kd_loss_type": "kl", "hard_label_weight": 0.5},  # kd (3 of 3)
        args=training, train_dataset=tokenized(tokenizer, SST2 / "train.tsv", args.limit),
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())})
    trainer.train()
    metrics = trainer.evaluate(tokenized(tokenizer, SST2 / "dev.tsv", args.limit))
    print(metrics)
    trainer.save_model(args.output)
    tokenizer.save_pretrained(args.output)


if __name__ == "__main__":
    main()
