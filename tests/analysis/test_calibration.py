"""ECE and reliability bins, against the definition worked out by hand."""

from __future__ import annotations

import pytest
import torch

from kd_analysis.calibration import expected_calibration_error, reliability_bins


def test_ece_by_hand() -> None:
    confidence = torch.tensor([0.95, 0.85, 0.65, 0.62])
    correct = torch.tensor([True, False, True, False])
    # bins [0.9, 1]: |1 - .95|; [0.8, 0.9): |0 - .85|; [0.6, 0.7): |0.5 - 0.635| twice
    assert expected_calibration_error(confidence, correct, 10) == pytest.approx((0.05 + 0.85 + 2 * 0.135) / 4)


def test_bins_cover_the_edges() -> None:
    bins = reliability_bins(torch.tensor([0.0, 0.1, 0.5, 1.0]), torch.tensor([True, True, False, True]), 10)
    assert [b.count for b in bins] == [1, 1, 0, 0, 0, 1, 0, 0, 0, 1]
    assert bins[5].accuracy == 0.0 and bins[9].confidence == 1.0 and bins[2].accuracy is None
    perfectly = torch.tensor([0.75] * 4)
    assert expected_calibration_error(perfectly, torch.tensor([True, True, True, False])) == pytest.approx(0)
