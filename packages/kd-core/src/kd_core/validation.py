"""Evaluation during training: a validation set scored every ``eval_steps`` optimizer steps (or at
the end of every epoch, and always at the last step), the best weights kept, and early stopping
after ``patience`` evaluations without improvement. This is what transformers' Trainer gives with
``eval_strategy``, ``load_best_model_at_end`` and ``EarlyStoppingCallback``, and TextBrewer with its
evaluation callback at every checkpoint.

:class:`Validation` is what every trainer's and distiller's ``train`` takes as ``validation=``
(the Python way in); ``kd train`` and ``kd distill`` build one from a recipe's ``data.validation``
(or ``data.validation_split``) and ``training`` section. Its state (every evaluation, the best
value and its step, the evaluations since the last improvement) is saved in each checkpoint and
the best weights under ``OUTPUT/best/``, so a resumed run ends with the same best model as one
that was never interrupted. The validation set is for choices; ``data.eval`` stays the reported
test set and is never read during training.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import nn

from kd_core.checkpoint import STATE_JSON_FILE, rng_state, save_weights, set_rng_state
from kd_core.errors import ConfigError, KDError

BEST_DIR = "best"
"""Where the best weights (one safetensors file per step that was best) live under a run's folder."""
PREFIX = "validation_"
"""The prefix of validation metrics in ``metrics.jsonl`` (``validation_accuracy``)."""


@dataclass
class Validation:
    """Score the model on a validation set during training, keep the best weights, stop early.

    ``evaluate(model)`` returns the validation metrics by name; ``metric`` is the one that decides
    (``greater_is_better`` as the registered metric says). ``eval_steps``: evaluate every that many
    optimizer steps (None: at the end of every epoch); the last step is always evaluated.
    ``keep_best``: end training with the weights of the best score (else the last). ``patience``:
    stop after that many evaluations in a row that do not beat the best by more than ``min_delta``
    (None: never stop early); as in transformers' EarlyStoppingCallback, ``min_delta`` only decides
    when to stop: the best kept is the best score.
    """

    evaluate: Callable[[nn.Module], dict[str, float]]
    metric: str
    greater_is_better: bool = True
    eval_steps: int | None = None
    patience: int | None = None
    min_delta: float = 0.0
    keep_best: bool = True
    history: list[dict[str, float]] = field(default_factory=list, init=False)
    """Every evaluation so far: ``{"step": ..., METRIC: value, ...}``."""
    best_value: float | None = field(default=None, init=False)
    best_step: int | None = field(default=None, init=False)
    since_best: int = field(default=0, init=False)
    """Evaluations in a row without an improvement of more than ``min_delta``."""

    def __post_init__(self) -> None:
        if self.eval_steps is not None and self.eval_steps < 1:
            raise ConfigError(f"eval_steps must be 1 or more, got {self.eval_steps}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be 1 or more, got {self.patience}")
        if self.min_delta < 0:
            raise ConfigError(f"min_delta must be 0 or more, got {self.min_delta}")

    def due(self, step: int, total_steps: int, end_of_epoch: bool) -> bool:
        """Whether optimizer step ``step`` (just taken) is evaluated."""
        if step >= total_steps:
            return True
        return step % self.eval_steps == 0 if self.eval_steps is not None else end_of_epoch

    def reset(self) -> None:
        """Forget every evaluation: a fresh run starts judging anew."""
        self.history, self.best_value, self.best_step, self.since_best = [], None, None, 0

    def score(self, model: nn.Module) -> dict[str, float]:
        """The validation metrics of ``model``. Evaluation draws nothing from the random
        generators training uses (their states are put back), so a run with validation trains
        exactly as one without it."""
        saved = rng_state()
        was_training = model.training
        try:
            values = {k: float(v) for k, v in self.evaluate(model).items()}
        finally:
            set_rng_state(saved)
            model.train(was_training)
        if self.metric not in values:
            raise ConfigError(f"validation: the evaluation gave {', '.join(values) or 'no metrics'}, "
                              f"not {self.metric!r}")
        return values

    def record(self, step: int, values: dict[str, float]) -> bool:
        """Record the metrics ``values`` of step ``step``; whether they are the best so far (a NaN
        never is, and counts as no improvement)."""
        value = float(values[self.metric])
        self.history.append({"step": step, **{k: float(v) for k, v in values.items()}})
        if math.isnan(value):
            self.since_best += 1
            return False
        if self.best_value is None:
            self.best_value, self.best_step, self.since_best = value, step, 0
            return True
        gain = value - self.best_value if self.greater_is_better else self.best_value - value
        self.since_best = 0 if gain > self.min_delta else self.since_best + 1
        if gain > 0:
            self.best_value, self.best_step = value, step
        return gain > 0

    @property
    def should_stop(self) -> bool:
        """Whether ``patience`` evaluations in a row brought no improvement."""
        return self.patience is not None and self.since_best >= self.patience

    @property
    def still_improving(self) -> bool:
        """Whether the last of several evaluations was the best: the model had not finished learning."""
        return len(self.history) > 1 and self.best_step == self.history[-1]["step"]

    def metrics_record(self) -> dict[str, float]:
        """The last evaluation as ``metrics.jsonl`` keys (``validation_accuracy``, ...)."""
        last = self.history[-1]
        return {f"{PREFIX}{k}": v for k, v in last.items() if k != "step"}

    def summary(self) -> dict[str, Any]:
        """What a run's report says of its validation."""
        kept = "best" if self.keep_best and self.best_step is not None else "last"
        return {"metric": self.metric, "best_value": self.best_value, "best_step": self.best_step,
                "evaluations": len(self.history), "last_step": self.history[-1]["step"] if self.history else None,
                "stopped_early": self.should_stop, "kept": kept}

    # -- the best weights and the state checkpoints hold -----------------------------------------

    @staticmethod
    def best_file(output_dir: Path, step: int) -> Path:
        """The file that holds the weights of step ``step`` when it was the best."""
        return output_dir / BEST_DIR / f"step-{step:08d}.safetensors"

    def save_best(self, output_dir: Path, model: nn.Module) -> None:
        """Write ``model``'s weights as those of the best step (atomically, on disk before a
        checkpoint can refer to them)."""
        assert self.best_step is not None
        save_weights(self.best_file(output_dir, self.best_step), model.state_dict())

    def restore_best(self, output_dir: Path, model: nn.Module) -> None:
        """Load the best step's weights into ``model``."""
        model.load_state_dict(self.best_weights(output_dir))

    def best_weights(self, output_dir: Path) -> dict[str, Any]:
        """The best step's weights as written by :meth:`save_best`; a KDError names a missing or
        damaged file."""
        assert self.best_step is not None
        path = self.best_file(output_dir, self.best_step)
        try:
            return load_file(str(path))
        except Exception as exc:  # missing or damaged: the run cannot end with its best model
            raise KDError(f"validation: the best weights of step {self.best_step} cannot be read ({path}: "
                          f"{type(exc).__name__}: {exc}); start afresh, or set keep_best: false") from None

    def prune(self, output_dir: Path, checkpoints: Iterable[Path]) -> None:
        """Remove the best-weight files that neither the current best nor any kept checkpoint
        refers to (a checkpoint needs its best step's file to resume)."""
        keep = {self.best_step} | {_best_step_of(c) for c in checkpoints}
        for step, path in _best_files(output_dir).items():
            if step not in keep:
                path.unlink(missing_ok=True)

    def forget_after(self, output_dir: Path, step: int) -> None:
        """On resume from step ``step``: remove the best-weight files the interrupted run wrote
        later (the resumed run writes them again when it gets there)."""
        for written, path in _best_files(output_dir).items():
            if written > step:
                path.unlink(missing_ok=True)

    def clear(self, output_dir: Path) -> None:
        """Remove every best-weight file (a fresh run, or a finished stage whose model is saved)."""
        shutil.rmtree(output_dir / BEST_DIR, ignore_errors=True)

    def state_dict(self) -> dict[str, Any]:
        """The state a checkpoint holds."""
        return {"history": [dict(h) for h in self.history], "best_value": self.best_value,
                "best_step": self.best_step, "since_best": self.since_best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` gave."""
        self.history = [dict(h) for h in state["history"]]
        self.best_value, self.best_step, self.since_best = state["best_value"], state["best_step"], state["since_best"]


def _best_files(output_dir: Path) -> dict[int, Path]:
    """The best-weight files under ``output_dir`` by step."""
    folder = output_dir / BEST_DIR
    return {int(p.name[len("step-"):-len(".safetensors")]): p
            for p in (folder.glob("step-*.safetensors") if folder.is_dir() else [])}


def _best_step_of(checkpoint: Path) -> int | None:
    """The best step a checkpoint's state refers to (None without validation)."""
    try:
        state = json.loads((checkpoint / STATE_JSON_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    validation = state.get("validation") if isinstance(state, dict) else None
    return validation.get("best_step") if isinstance(validation, dict) else None
