"""Calibration: how far a model's confidence is from its accuracy (Guo et al. 2017)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Bin:
    """One confidence bin of a reliability diagram: [low, high), its examples' count, mean
    confidence and accuracy (None when empty)."""

    low: float
    high: float
    count: int
    confidence: float | None
    accuracy: float | None


def reliability_bins(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 10) -> list[Bin]:
    """Equal-width bins over [0, 1] of the predicted class's probability (the last bin holds 1.0)."""
    edges = torch.linspace(0, 1, bins + 1)
    index = torch.clamp(torch.bucketize(confidence, edges, right=True) - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        out.append(Bin(float(edges[b]), float(edges[b + 1]), count,
                       float(confidence[members].mean()) if count else None,
                       float(correct[members].float().mean()) if count else None))
    return out


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 10) -> float:
    """ECE: the count-weighted mean over bins of |accuracy - mean confidence|."""
    total = len(confidence)
    return sum(b.count / total * abs(b.accuracy - b.confidence) for b in reliability_bins(confidence, correct, bins)
               if b.count)


def bins_as_dicts(bins: list[Bin]) -> list[dict]:
    """Bins as JSON-ready dicts."""
    return [asdict(b) for b in bins]
