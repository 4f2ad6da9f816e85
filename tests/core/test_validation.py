"""Evaluation during training (kd_core.validation through the engine): the steps it runs at, the
best weights restored, early stopping, and exact resume of all of it."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional as F
from torch.utils.data import DataLoader

from kd_core import ConfigError, KDError
from kd_core.assembly import linear_schedule_with_warmup
from kd_core.checkpoint import list_checkpoints
from kd_core.validation import BEST_DIR, Validation
from tests.core.models import TokenDataset
from tests.core.test_engine import _distiller

STEPS = 17
BATCHES = 7  # an epoch of 40 rows in batches of 6


def _loader() -> DataLoader:
    return DataLoader(TokenDataset(size=40), batch_size=6, shuffle=True, generator=torch.Generator().manual_seed(7))


def _scripted(values: list[float]) -> Iterator[float]:
    yield from values
    while True:
        yield values[-1]


class _Script:
    """An evaluation that gives the next of ``values`` at each call (the engine's logic alone)."""

    def __init__(self, values: list[float]) -> None:
        self.values = _scripted(values)
        self.calls = 0

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        self.calls += 1
        return {"score": next(self.values)}


def _validation_loss(model: torch.nn.Module) -> dict[str, float]:
    """A real evaluation: the student's mean cross-entropy on held-out random rows."""
    data = TokenDataset(size=24, seed=5)
    model.eval()
    with torch.no_grad():
        logits = model(data.ids, data.mask, data.labels)["logits"]
    return {"loss": float(F.cross_entropy(logits, data.labels)), "accuracy": float((logits.argmax(-1) ==
                                                                                      data.labels).float().mean())}


class _Interrupt(Exception):
    pass


def _train(output_dir: Path, validation: Validation | None, stop_at: int | None = None, resume: bool = False,
           ckpt_steps: int = 3, num_epochs: int | None = None, dropout: float = 0.2, **config):
    distiller = _distiller(output_dir, dropout=dropout, ckpt_steps=ckpt_steps, **config)
    optimizer = torch.optim.AdamW(distiller.model_S.parameters(), lr=5e-2)

    def callback(model, step):
        if stop_at is not None and step == stop_at:
            raise _Interrupt

    steps = None if num_epochs else STEPS
    total = num_epochs * BATCHES if num_epochs else STEPS
    result = distiller.train(optimizer, _loader(), num_steps=steps, num_epochs=num_epochs,
                             scheduler_class=linear_schedule_with_warmup,
                             scheduler_args={"num_warmup_steps": 3, "num_training_steps": total},
                             callback=callback, resume=resume, validation=validation)
    return distiller, result


def _records(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def test_evaluation_runs_every_eval_steps_and_at_the_last_step(tmp_path: Path) -> None:
    script = _Script([0.1, 0.2, 0.3, 0.4])
    validation = Validation(script, "score", eval_steps=5, keep_best=False)
    with pytest.warns(UserWarning, match="still improving"):
        _train(tmp_path, validation)
    assert [h["step"] for h in validation.history] == [5, 10, 15, 17]
    assert script.calls == 4
    scored = {r["step"]: r["validation_score"] for r in _records(tmp_path) if "validation_score" in r}
    assert scored == {5: 0.1, 10: 0.2, 15: 0.3, 17: 0.4}


def test_without_eval_steps_evaluation_runs_at_the_end_of_every_epoch(tmp_path: Path) -> None:
    validation = Validation(_Script([0.3, 0.2, 0.1]), "score", keep_best=False)
    _train(tmp_path, validation, num_epochs=3)
    assert [h["step"] for h in validation.history] == [BATCHES, 2 * BATCHES, 3 * BATCHES]


def test_evaluation_changes_nothing_of_the_training(tmp_path: Path) -> None:
    plain, _ = _train(tmp_path / "plain", None)
    validated, _ = _train(tmp_path / "validated", Validation(_validation_loss, "loss", greater_is_better=False,
                                                             eval_steps=2, keep_best=False))
    for key, value in plain.model_S.state_dict().items():
        assert torch.equal(validated.model_S.state_dict()[key], value), key


def test_the_best_weights_are_restored_and_equal_the_checkpoint_of_their_step(tmp_path: Path) -> None:
    validation = Validation(_Script([0.2, 0.7, 0.4, 0.5]), "score", eval_steps=4)
    distiller, result = _train(tmp_path, validation, ckpt_steps=4)
    assert validation.best_step == 8 and result.validation["best_step"] == 8
    assert result.validation["best_value"] == 0.7 and result.global_step == STEPS
    saved = load_file(str(tmp_path / "checkpoints" / "step-00000008" / "model.safetensors"))
    last = load_file(str(list_checkpoints(tmp_path / "checkpoints")[-1] / "model.safetensors"))
    state = distiller.model_S.state_dict()
    assert any(not torch.equal(last[k], saved[k]) for k in saved), "steps 8 and 17 must differ for this to test"
    for key, value in saved.items():
        assert torch.equal(state[key], value), key
    # only the files the current best and the kept checkpoints refer to stay (step 4's by checkpoint 4)
    assert sorted(p.name for p in (tmp_path / BEST_DIR).iterdir()) == ["step-00000004.safetensors",
                                                                       "step-00000008.safetensors"]


def test_min_delta_decides_when_to_stop_not_which_weights_are_kept() -> None:
    validation = Validation(lambda model: {}, "score", patience=2, min_delta=0.01)
    assert validation.record(1, {"score": 0.80})
    assert validation.record(2, {"score": 0.805}) and validation.record(3, {"score": 0.809})
    assert (validation.best_step, validation.best_value) == (3, 0.809)
    assert validation.should_stop and validation.summary()["kept"] == "best"


def test_a_fresh_run_forgets_the_evaluations_and_best_files_of_an_earlier_one(tmp_path: Path) -> None:
    validation = Validation(_Script([0.9, 0.1]), "score", eval_steps=10)
    _train(tmp_path, validation)
    assert validation.best_step == 10
    validation.evaluate, validation.eval_steps = _Script([0.1, 0.2]), 4
    _, again = _train(tmp_path, validation)
    assert [h["step"] for h in validation.history] == [4, 8, 12, 16, 17] and again.validation["best_step"] == 8
    files = sorted(p.name for p in (tmp_path / BEST_DIR).iterdir())
    assert files == ["step-00000004.safetensors", "step-00000008.safetensors"], "step 10's is the earlier run's"


def test_a_resume_whose_best_weights_are_gone_fails_before_training(tmp_path: Path) -> None:
    with pytest.raises(_Interrupt):
        _train(tmp_path, Validation(_Script([0.5]), "score", eval_steps=2), stop_at=3)
    (tmp_path / BEST_DIR / "step-00000002.safetensors").unlink()
    script = _Script([0.5])
    with pytest.raises(KDError, match="best weights of step 2 cannot be read"):
        _train(tmp_path, Validation(script, "score", eval_steps=2), resume=True)
    assert script.calls == 0


def test_keep_best_false_keeps_the_last_weights(tmp_path: Path) -> None:
    distiller, result = _train(tmp_path, Validation(_Script([0.9, 0.1, 0.1, 0.1]), "score", eval_steps=4,
                                                    keep_best=False), ckpt_steps=STEPS)
    last = load_file(str(tmp_path / "checkpoints" / f"step-{STEPS:08d}" / "model.safetensors"))
    for key, value in last.items():
        assert torch.equal(distiller.model_S.state_dict()[key], value), key
    assert result.validation["kept"] == "last"
    assert not (tmp_path / BEST_DIR).exists()


def test_early_stopping_after_patience_evaluations_without_improvement(tmp_path: Path) -> None:
    # scored at 2, 4, 6, 8: 6 is the best but gains less than min_delta over 4, and 8 none: stop at 8
    script = _Script([0.5, 0.6, 0.605, 0.55, 0.9])
    validation = Validation(script, "score", eval_steps=2, patience=2, min_delta=0.01)
    _, result = _train(tmp_path, validation)
    assert result.global_step == 8 and script.calls == 4
    assert result.validation["stopped_early"] and result.validation["best_step"] == 6
    assert [r["step"] for r in _records(tmp_path)][-1] == 8
    assert list_checkpoints(tmp_path / "checkpoints")[-1].name == "step-00000008", "a checkpoint where it stopped"


def test_lower_is_better_and_a_nan_is_never_the_best() -> None:
    validation = Validation(lambda model: {}, "loss", greater_is_better=False, patience=2)
    assert validation.record(1, {"loss": 2.0})
    assert not validation.record(2, {"loss": math.nan})
    assert validation.record(3, {"loss": 1.5})
    assert not validation.record(4, {"loss": 1.6})
    assert (validation.best_step, validation.best_value, validation.since_best) == (3, 1.5, 1)
    assert not validation.should_stop
    assert not validation.record(5, {"loss": 1.5})
    assert validation.should_stop


def test_an_evaluation_without_the_metric_is_named() -> None:
    validation = Validation(lambda model: {"accuracy": 1.0}, "f1")
    with pytest.raises(ConfigError, match="not 'f1'"):
        validation.score(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("stop_at", [3, 6])  # after the best (step 2), before the stop (step 8)
def test_a_resumed_run_ends_with_the_same_best_model_and_stops_at_the_same_step(tmp_path: Path,
                                                                                  stop_at: int) -> None:
    def validation() -> Validation:
        return Validation(_validation_loss, "loss", greater_is_better=False, eval_steps=2, patience=3)

    straight, expected = _train(tmp_path / "straight", validation(), keep_checkpoints=1)
    assert expected.validation["best_step"] < expected.global_step, "the best must not be the last to test this"
    with pytest.raises(_Interrupt):
        _train(tmp_path / "killed", validation(), stop_at=stop_at, keep_checkpoints=1)
    resumed, result = _train(tmp_path / "killed", validation(), resume=True, keep_checkpoints=1)
    assert result.validation == expected.validation
    assert result.global_step == expected.global_step
    for key, value in straight.model_S.state_dict().items():
        assert torch.equal(resumed.model_S.state_dict()[key], value), key
    scored = [(r["step"], r["validation_loss"]) for r in _records(tmp_path / "killed") if "validation_loss" in r]
    assert scored == [(r["step"], r["validation_loss"]) for r in _records(tmp_path / "straight")
                      if "validation_loss" in r]
    # only the weights a kept checkpoint or the current best refers to stay on disk
    best_files = sorted(p.name for p in (tmp_path / "killed" / BEST_DIR).iterdir())
    assert best_files == [f"step-{expected.validation['best_step']:08d}.safetensors"]


def test_resuming_a_run_that_stopped_early_trains_no_further(tmp_path: Path) -> None:
    script = [0.5, 0.4, 0.3]
    _, first = _train(tmp_path, Validation(_Script(script), "score", eval_steps=2, patience=2))
    assert first.validation["stopped_early"] and first.global_step == 6
    again = _Script(script)
    distiller, second = _train(tmp_path, Validation(again, "score", eval_steps=2, patience=2), resume=True)
    assert again.calls == 0 and second.global_step == 6 and second.validation == first.validation
    best = load_file(str(tmp_path / BEST_DIR / "step-00000002.safetensors"))
    for key, value in best.items():
        assert torch.equal(distiller.model_S.state_dict()[key], value), key


def test_resuming_with_validation_from_a_run_without_it_is_refused(tmp_path: Path) -> None:
    with pytest.raises(_Interrupt):
        _train(tmp_path, None, stop_at=3)
    with pytest.raises(Exception, match="without a validation set"):
        _train(tmp_path, Validation(_Script([0.1]), "score", eval_steps=2), resume=True)
