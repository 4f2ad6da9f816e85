"""Experiment trackers beside metrics.jsonl (``report_to``): TensorBoard's event file read back
with tensorboard's own reader, a plugin's tracker, resume, TextBrewer's ``log_dir``, bad names."""

from __future__ import annotations

import functools
import json
import shutil
import sys
import types
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from kd_core import DistillationConfig, GeneralDistiller, TrainingConfig, UnknownNameError, hookimpl, lookup
from kd_core import plugins as plugins_module
from kd_core.checkpoint import list_checkpoints
from kd_core.loggers import LOG_DIR
from kd_core.validation import Validation
from tests.core.models import TinyEncoder, TokenDataset

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

MATCHES = [{"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
            "proj": ["linear", 8, 16]}]
STEPS = 9


def _distiller(output_dir: Path, **config: Any) -> GeneralDistiller:
    torch.manual_seed(0)
    teacher, student = TinyEncoder(width=16, layers=2), TinyEncoder(width=8, layers=1)
    train_config = TrainingConfig(output_dir=str(output_dir), progress=False, seed=0, ckpt_steps=3, **config)
    distill_config = DistillationConfig(temperature=2, kd_loss_type="kl", hard_label_weight=0.5,
                                        intermediate_matches=MATCHES)
    adaptor = lookup("adaptors", "features")()
    return GeneralDistiller(train_config, distill_config, teacher, student, adaptor, adaptor)


def _train(output_dir: Path, resume: bool = False, **config: Any) -> None:
    distiller = _distiller(output_dir, **config)
    data = TokenDataset(size=24)
    validation = Validation(lambda model: {"accuracy": float(next(model.parameters()).detach().abs().mean())},
                            "accuracy", eval_steps=4)
    distiller.train(torch.optim.AdamW(distiller.model_S.parameters(), lr=1e-2),
                    DataLoader(data, batch_size=6, shuffle=True, generator=torch.Generator().manual_seed(1)),
                    num_steps=STEPS, validation=validation, resume=resume)


def _records(output_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    reader = event_accumulator.EventAccumulator(str(log_dir), size_guidance={event_accumulator.SCALARS: 0})
    reader.Reload()
    return {tag: [(e.step, e.value) for e in reader.Scalars(tag)] for tag in reader.Tags()["scalars"]}


def _expected(records: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for key, value in record.items():
            if key != "step":
                expected.setdefault(key, []).append((record["step"], float(value)))
    return expected


def _assert_same(scalars: dict[str, list[tuple[int, float]]], records: list[dict[str, Any]]) -> None:
    expected = _expected(records)
    assert set(scalars) == set(expected)
    for tag, points in expected.items():
        assert [step for step, _ in scalars[tag]] == [step for step, _ in points], tag
        # TensorBoard stores float32
        torch.testing.assert_close(torch.tensor([v for _, v in scalars[tag]]), torch.tensor([v for _, v in points]),
                                   rtol=1e-6, atol=1e-7, msg=tag)


def test_the_tensorboard_event_file_holds_every_term_of_metrics_jsonl(tmp_path: Path) -> None:
    _train(tmp_path, report_to=["tensorboard"])
    records = _records(tmp_path)
    assert len(records) == STEPS
    terms = set().union(*records)
    assert {"loss", "kd", "match0.hidden_mse", "hard_label", "lr", "elapsed_s", "examples_per_s",
            "validation_accuracy"} <= terms
    _assert_same(_scalars(tmp_path / LOG_DIR), records)


def test_a_resumed_run_drops_what_the_interrupted_one_logged_after_its_checkpoint(tmp_path: Path) -> None:
    _train(tmp_path, report_to=["tensorboard"])
    for newer in list_checkpoints(tmp_path / "checkpoints")[1:]:
        shutil.rmtree(newer)  # as if killed after step 3's checkpoint with steps 4-9 already logged
    _train(tmp_path, resume=True, report_to=["tensorboard"])
    records = _records(tmp_path)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    _assert_same(_scalars(tmp_path / LOG_DIR), records)


def test_textbrewer_log_dir_turns_tensorboard_on_and_places_it(tmp_path: Path) -> None:
    config = TrainingConfig(output_dir=str(tmp_path / "out"), log_dir=str(tmp_path / "tb"))
    assert config.report_to == ["tensorboard"] and config.logs_path == tmp_path / "tb"
    assert TrainingConfig.from_dict(config.to_dict()) == config
    _train(tmp_path / "out", log_dir=str(tmp_path / "tb"))
    _assert_same(_scalars(tmp_path / "tb"), _records(tmp_path / "out"))
    assert not (tmp_path / "out" / LOG_DIR).exists()


class _ListLogger:
    """A plugin's tracker: keeps what it is told in ``sink``."""

    def __init__(self, sink: dict[str, list], log_dir: Path, start_step: int) -> None:
        self.sink = sink
        sink["opened"].append((log_dir, start_step))

    def log(self, record, step: int) -> None:
        self.sink["received"].append((step, dict(record)))

    def close(self) -> None:
        self.sink["closed"].append(True)


def test_a_plugin_tracker_receives_every_record_and_is_closed(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    sink: dict[str, list] = {"opened": [], "received": [], "closed": []}
    module = types.ModuleType("kd_test_logger_plugin")
    module.kd_register_loggers = hookimpl(lambda register: register("list", functools.partial(_ListLogger, sink)))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    installed = [*entry_points(group="kd"), EntryPoint(name="list-logger", value=module.__name__, group="kd")]
    monkeypatch.setattr(plugins_module, "entry_points", lambda group: installed)
    _train(tmp_path, report_to=["list", "tensorboard"])
    records = _records(tmp_path)
    assert sink["opened"] == [(tmp_path / LOG_DIR, 0)] and sink["closed"] == [True]
    assert sink["received"] == [(r["step"], r) for r in records]
    _assert_same(_scalars(tmp_path / LOG_DIR), records)


def test_an_unknown_tracker_fails_before_training_and_suggests(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match=r"Did you mean 'tensorboard'\?"):
        _train(tmp_path, report_to=["tensorbord"])
    assert not list_checkpoints(tmp_path / "checkpoints")
