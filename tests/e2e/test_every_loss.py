"""Every registered loss in one TextBrewer-style config, run for a few steps through
GeneralDistiller on the packaged MiniLM teacher and a 3-layer student, with features captured
by kd-models' adaptor (examples/catalogue/every_loss_distill_config.json)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from kd_core import DistillationConfig, GeneralDistiller, TrainingConfig, lookup, registry
from kd_core.schema import DataSpec, ModelSpec, StudentSpec
from kd_core.tasks import prepare_data

pytestmark = pytest.mark.real_teacher

CONFIG = Path(__file__).resolve().parents[2] / "examples" / "catalogue" / "every_loss_distill_config.json"
STEPS = 3


@pytest.fixture(scope="module")
def setup(minilm_path: Path, sst2_dir: Path):
    task = lookup("tasks", "sequence_classification")
    teacher_spec = ModelSpec(model=str(minilm_path), num_labels=2, allow_untrained_head=True)  # mechanics only
    data = prepare_data(task, DataSpec.from_dict({
        "train": {"path": str(sst2_dir / "train.tsv"), "text": "sentence", "label": "label", "limit": 24},
        "max_length": 32}), teacher_spec, None)
    teacher = task.load_teacher(teacher_spec)
    return task, data, teacher


def test_the_config_uses_every_registered_loss() -> None:
    config = DistillationConfig.from_json(CONFIG)
    used = {m.loss for m in config.intermediate_matches} | {"ce", "kl", "mse", "reverse_kl", "jsd"}
    assert used == set(registry("losses").names())


@pytest.mark.parametrize("kd_loss_type", ["ce", "kl", "mse", "reverse_kl", "jsd"])
def test_every_loss_runs_through_general_distiller(setup, tmp_path: Path, kd_loss_type: str) -> None:
    task, data, teacher = setup
    torch.manual_seed(0)
    student = task.build_student(StudentSpec(config={"num_hidden_layers": 3, "hidden_size": 192,
                                                     "num_attention_heads": 12, "intermediate_size": 768}), teacher)
    config = DistillationConfig.from_json(CONFIG).model_copy(update={"kd_loss_type": kd_loss_type})
    distiller = GeneralDistiller(TrainingConfig(output_dir=str(tmp_path), seed=0, progress=False), config,
                                 teacher, student, task.adaptor(teacher), task.adaptor(student))
    before_S = {k: v.clone() for k, v in student.state_dict().items()}
    before_proj = {k: v.clone() for k, v in distiller.loss_plan.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    loader = DataLoader(data.train, batch_size=8, shuffle=True, collate_fn=data.collate)
    distiller.train(optimizer, loader, num_steps=STEPS)

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == STEPS
    expected = {"kd", "hard_label", *(f"match{i}.{m.loss}" for i, m in enumerate(config.intermediate_matches))}
    for record in records:
        assert expected <= set(record), expected - set(record)
        assert all(math.isfinite(record[name]) for name in expected)
    assert records[0]["kd"] > 0 and records[-1]["hard_label"] > 0  # the two weight schedules
    assert any(not torch.equal(before_S[k], v) for k, v in student.state_dict().items())
    changed = {k for k, v in distiller.loss_plan.state_dict().items() if not torch.equal(before_proj[k], v)}
    assert changed == set(before_proj), f"projections not trained: {set(before_proj) - changed}"
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
