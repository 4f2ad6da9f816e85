"""Model-size analysis (``kd size``): parameters and megabytes per module."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from torch import nn

from kd_core.cli import build_cli
from kd_core.size import format_sizes, module_sizes


def test_sizes_count_each_module_and_shared_parameters_once() -> None:
    shared = nn.Linear(4, 3)  # 15 parameters
    model = nn.Sequential(nn.Embedding(10, 4), shared, nn.Sequential(shared, nn.Linear(3, 2).half()))
    model[0].weight.requires_grad_(False)
    rows = {r.name: r for r in module_sizes(model)}
    assert rows["Sequential"].params == 40 + 15 + 8 and rows["Sequential"].trainable == 15 + 8
    assert rows["2"].params == 15 + 8 and rows["2.1"].params == 8
    assert rows["Sequential"].bytes == 4 * (40 + 15) + 2 * 8  # the fp16 layer takes 2 bytes a parameter
    assert [r.depth for r in module_sizes(model, max_depth=1)] == [0, 1, 1, 1]
    text = format_sizes(module_sizes(model, max_depth=1))
    assert "total 63 parameters (23 trainable)" in text and "  2 " in text


def test_kd_size_prints_a_tree_and_json(tiny_teacher_dir: Path) -> None:
    result = CliRunner().invoke(build_cli(), ["size", str(tiny_teacher_dir), "--depth", "2"])
    assert result.exit_code == 0, result.output
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir)
    total = sum(p.numel() for p in model.parameters())
    assert f"total {total:,} parameters" in result.stdout
    assert "    encoder" in result.stdout and "      layer" not in result.stdout  # depth 2 stops above the layers

    rows = json.loads(CliRunner().invoke(build_cli(), ["size", str(tiny_teacher_dir), "--json", "--depth", "1"]).stdout)
    by_name = {r["name"]: r for r in rows}
    assert by_name["bert"]["params"] == sum(p.numel() for p in model.bert.parameters())
    assert by_name["classifier"]["megabytes"] == round((64 * 2 + 2) * 4 / 2**20, 4)  # fp32 Linear(64, 2)
