"""The plugin's hooks: kd calls each with ``register`` and the plugin registers by name."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kd_core import Metric, ShapeError, hookimpl
from kd_core.hookspecs import Register
from kd_core.loggers import numeric


def smooth_l1_hidden(state_S: torch.Tensor, state_T: torch.Tensor,
                     mask: torch.Tensor | None = None, beta: float = 1.0) -> torch.Tensor:
    """Smooth-L1 (Huber) distance between [B, L, D] hidden states, averaged over the entries of
    real tokens (mask [B, L], 1 = real); 0 with zero gradient when no token is real."""
    if state_S.shape != state_T.shape or state_S.dim() != 3:
        raise ShapeError(f"smooth_l1_hidden: student {tuple(state_S.shape)} and teacher "
                         f"{tuple(state_T.shape)} must both be [B, L, D]")
    per_token = F.smooth_l1_loss(state_S.float(), state_T.float(), reduction="none", beta=beta).mean(-1)
    if mask is None:
        return per_token.mean()
    weights = mask.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp(min=1)


def gelu_projection(dim_in: int, dim_out: int) -> nn.Module:
    """``gelu(W x + b)``."""
    return nn.Sequential(nn.Linear(dim_in, dim_out), nn.GELU())


def balanced_accuracy(pred: torch.Tensor, gold: torch.Tensor) -> float:
    """Mean over the gold classes of the fraction of each class predicted right (recall), so that
    a majority class counts no more than a rare one."""
    recalls = [float((pred[gold == label] == label).float().mean()) for label in torch.unique(gold)]
    return sum(recalls) / len(recalls)


class CsvLogger:
    """A tracker (``training.report_to: [csv]``): every scalar of each metrics.jsonl record as a
    ``step,name,value`` row of ``LOG_DIR/scalars.csv`` (long rows, as records differ in their
    keys); a resumed run first drops the rows after the step it resumes from."""

    FILE = "scalars.csv"

    def __init__(self, log_dir: Path, start_step: int) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / self.FILE
        kept: list[list[str]] = []
        if start_step and path.exists():
            with path.open(newline="", encoding="utf-8") as f:
                kept = [row for row in list(csv.reader(f))[1:] if int(row[0]) <= start_step]
        self._file = path.open("w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        self._writer.writerows([["step", "name", "value"], *kept])

    def log(self, record: Mapping[str, float], step: int) -> None:
        self._writer.writerows([step, name, value] for name, value in numeric(record).items())
        self._file.flush()

    def close(self) -> None:
        self._file.close()


@hookimpl
def kd_register_loggers(register: Register) -> None:
    register("csv", CsvLogger)


@hookimpl
def kd_register_metrics(register: Register) -> None:
    register("balanced_accuracy", Metric(balanced_accuracy, reads="labels"))


@hookimpl
def kd_register_losses(register: Register) -> None:
    register("smooth_l1_hidden", smooth_l1_hidden)


@hookimpl
def kd_register_projections(register: Register) -> None:
    register("gelu", gelu_projection)
