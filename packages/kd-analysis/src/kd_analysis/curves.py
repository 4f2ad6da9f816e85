"""Learning curves: the loss terms a kd run logged per optimizer step (``metrics.jsonl``),
smoothed with a moving average."""

from __future__ import annotations

import json
from pathlib import Path

from kd_core import METRICS_FILE, RECORD_FIELDS
from kd_core.errors import ConfigError
from kd_core.validation import PREFIX as VALIDATION_PREFIX


def is_loss_term(field: str) -> bool:
    """Whether a metrics.jsonl field is a loss term (not the step, time, rate or a validation score)."""
    return field not in RECORD_FIELDS and not field.startswith(VALIDATION_PREFIX)


def moving_average(values: list[float], window: int) -> list[float]:
    """The mean of each value and the ``window - 1`` before it (fewer at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def read_curves(run_dir: Path, window: int = 20) -> dict[str, list[tuple[int, float]]]:
    """Each loss term of the run in ``run_dir`` (``loss`` is their weighted sum) as
    (step, moving average over ``window`` steps) pairs."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise ConfigError(f"--runs: {run_dir} has no {METRICS_FILE}; give the output folder of a kd train or "
                          "kd distill run")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not records:
        raise ConfigError(f"--runs: {path} is empty; the run logged no step")
    terms = [name for name in records[-1] if is_loss_term(name)]
    curves = {}
    for term in terms:
        points = [(r["step"], r[term]) for r in records if term in r]
        smoothed = moving_average([value for _, value in points], window)
        curves[term] = [(step, value) for (step, _), value in zip(points, smoothed, strict=True)]
    return curves
