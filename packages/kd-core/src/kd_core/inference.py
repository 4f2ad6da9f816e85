"""Running a model over a dataset: the one loop that evaluation, teacher labelling and kd-analysis
share.

:func:`run_model` batches a dataset in order, moves each batch to the device, runs the model in
eval mode without gradients and yields what it gave, timing every forward with the device
synchronised (so GPU times are real) when asked to.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from kd_core.features import Adaptor, FeatureNeeds, to_device

T = TypeVar("T")


@dataclass(frozen=True)
class RunSettings:
    """How a model runs over a dataset (:func:`kd_core.inference.run_model`): the batch size,
    the device, and the name of a progress bar (None: no bar)."""

    batch_size: int = 32
    device: str = "cpu"
    progress: str | None = None


def run_model(model: nn.Module, adaptor: Adaptor, dataset: Dataset, collate: Callable[[list[Any]], Any],
              needs: FeatureNeeds, settings: RunSettings, *, clock: list[float] | None = None,
              forward: Callable[[Any], T] | None = None) -> Iterator[tuple[Any, T]]:
    """Each batch of ``dataset`` (in order, on ``settings.device``) with the features ``model``
    gives for ``needs``, or what ``forward(batch)`` returns when given (a teacher cache's lookup,
    say). ``clock`` collects the milliseconds of each forward. The model is in eval mode while the
    iterator runs and goes back to its mode afterwards."""
    device = torch.device(settings.device)
    was_training = model.training
    model.to(device).eval()
    run = forward or (lambda batch: adaptor.run(model, batch, needs))
    loader = DataLoader(dataset, batch_size=settings.batch_size, shuffle=False, collate_fn=collate)
    try:
        for batch in tqdm(loader, desc=settings.progress, unit="batch", disable=settings.progress is None):
            batch = to_device(batch, device)
            with torch.no_grad():
                synchronize(device)
                start = time.perf_counter()
                output = run(batch)
                synchronize(device)
            if clock is not None:
                clock.append((time.perf_counter() - start) * 1000)
            yield batch, output
    finally:
        model.train(was_training)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
