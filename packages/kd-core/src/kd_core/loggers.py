"""Experiment trackers beside metrics.jsonl: ``training.report_to: [tensorboard, ...]``.

Every record the engine writes to metrics.jsonl (one per optimizer step: each loss term, the
learning rate, validation scores, the elapsed time) also goes to each tracker that
``TrainingConfig.report_to`` names, in the main process only. A tracker is registered by name
through the ``kd_register_loggers`` hook as a factory ``factory(log_dir, start_step) -> Logger``:
``log_dir`` is where it may write (``TrainingConfig.log_dir``, by default ``OUTPUT/logs``) and
``start_step`` the step training resumes from (0 for a fresh run), after which a tracker that
keeps history should drop what an interrupted run wrote, as metrics.jsonl does.

kd-core registers ``tensorboard`` (torch.utils.tensorboard; needs the ``tensorboard`` package,
``pip install kd-core[tensorboard]``). A plugin adds MLflow, Weights & Biases or anything else
without kd-core knowing it (examples/kd-plugin-template registers one).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from kd_core.errors import ConfigError

LOG_DIR = "logs"
"""The trackers' folder under the output directory when ``TrainingConfig.log_dir`` is not set."""


class Logger(Protocol):
    """A tracker: receives each metrics.jsonl record of the run, then is closed once."""

    def log(self, record: Mapping[str, float], step: int) -> None:
        """One optimizer step's record (metrics.jsonl's keys, ``step`` among them)."""

    def close(self) -> None:
        """Flush and release what the tracker holds; called once, also when training fails."""


class LoggerFactory(Protocol):
    """What ``kd_register_loggers`` registers: opens a tracker for one training run."""

    def __call__(self, log_dir: Path, start_step: int) -> Logger: ...


def numeric(record: Mapping[str, object]) -> dict[str, float]:
    """The scalars of a record a tracker plots: every number but ``step`` itself."""
    return {key: float(value) for key, value in record.items()
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool)}


class TensorBoardLogger:
    """Writes each record's scalars under their metrics.jsonl names to a TensorBoard event file
    in ``log_dir``; a resumed run purges the events after ``start_step`` first."""

    def __init__(self, log_dir: Path, start_step: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ConfigError("training.report_to: tensorboard needs the tensorboard package "
                              "(pip install tensorboard, or kd-core[tensorboard])") from error
        self._writer = SummaryWriter(log_dir=str(log_dir), purge_step=start_step + 1 if start_step else None)

    def log(self, record: Mapping[str, float], step: int) -> None:
        for key, value in numeric(record).items():
            self._writer.add_scalar(key, value, global_step=step)

    def close(self) -> None:
        self._writer.close()
