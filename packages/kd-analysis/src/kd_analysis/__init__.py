"""kd-analysis: what did the student learn? ``kd analyze`` compares a teacher and its students on
labelled data: per-example predictions, agreement and disagreement tables with examples,
calibration (ECE, reliability diagrams) and confidence histograms."""

from kd_analysis.analysis import analyze, compare
from kd_analysis.calibration import expected_calibration_error, reliability_bins
from kd_analysis.predictions import Predictions, predict

__version__ = "0.1.0"

__all__ = [
    "Predictions",
    "__version__",
    "analyze",
    "compare",
    "expected_calibration_error",
    "predict",
    "reliability_bins",
]
