"""Cost of whole distillation steps: kd's engine against the same step in plain PyTorch.

Same teacher (the packaged MiniLM, 6 x 384), student (BERT 2 x 128), SST-2 batches of 32 and
losses (TextBrewer ``ce`` at T=4, hard labels, ``hidden_mse`` with a linear projection at
teacher layer 6 / student layer 2), measured side by side in one run. The ratio is kd's
overhead per step. Run with ``make bench``; results go to benchmarks/results/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from kd_core import DistillationConfig, GeneralDistiller, TrainingConfig, lookup
from kd_core.recipe import DataSpec, ModelSpec, StudentSpec

STEPS = 6
STUDENT = {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 512,
           "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
MATCH = {"layer_T": 6, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
         "proj": ["linear", 128, 384]}


@pytest.fixture(scope="module")
def setup(minilm_path: Path, sst2_dir: Path):
    task = lookup("tasks", "sequence_classification")
    teacher_spec = ModelSpec(model=str(minilm_path), num_labels=2)
    data = task.prepare_data(DataSpec.from_dict({
        "train": {"path": str(sst2_dir / "train.tsv"), "text": "sentence", "label": "label",
                  "limit": 32 * STEPS}, "max_length": 64}), teacher_spec, None)
    teacher = task.load_teacher(teacher_spec).eval()
    loader = DataLoader(data.train, batch_size=32, collate_fn=data.collate)
    return task, teacher, loader


def _student(task, teacher):
    torch.manual_seed(0)
    return task.build_student(StudentSpec(config=STUDENT), teacher)


def test_kd_general_distiller_steps(benchmark, setup, tmp_path: Path) -> None:
    task, teacher, loader = setup

    def run() -> None:
        student = _student(task, teacher)
        distiller = GeneralDistiller(
            TrainingConfig(output_dir=str(tmp_path), progress=False, ckpt_steps=10**6),
            DistillationConfig(temperature=4, kd_loss_type="ce", hard_label_weight=0.5, intermediate_matches=[MATCH]),
            teacher, student, task.adaptor(teacher), task.adaptor(student))
        distiller.train(torch.optim.AdamW(student.parameters(), lr=1e-4), loader, num_steps=STEPS)

    benchmark.pedantic(run, rounds=3, warmup_rounds=1)


def test_plain_pytorch_steps(benchmark, setup) -> None:
    task, teacher, loader = setup

    def run() -> None:
        student = _student(task, teacher)
        projection = torch.nn.Linear(128, 384)
        optimizer = torch.optim.AdamW([*student.parameters(), *projection.parameters()], lr=1e-4)
        for batch in loader:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            with torch.no_grad():
                out_T = teacher(**inputs, output_hidden_states=True)
            out_S = student(**inputs, output_hidden_states=True)
            p_T = F.softmax(out_T.logits / 4, -1)
            kd = -(p_T * F.log_softmax(out_S.logits / 4, -1)).sum(-1).mean()
            hard = F.cross_entropy(out_S.logits, batch["labels"])
            mask = inputs["attention_mask"].unsqueeze(-1).float()
            diff = (projection(out_S.hidden_states[2]) - out_T.hidden_states[6]) ** 2
            hidden = (diff.mean(-1, keepdim=True) * mask).sum() / mask.sum()
            (kd + 0.5 * hard + hidden).backward()
            optimizer.step()
            optimizer.zero_grad()

    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
