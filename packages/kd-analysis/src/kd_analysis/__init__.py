"""kd-analysis: what did the student learn? ``kd probe`` trains a probe on every layer of a teacher
and its students for SentEval-style tasks built from any corpus; ``kd analyze`` compares them on
labelled data: per-example predictions, agreement and disagreement tables with examples,
calibration (ECE, reliability diagrams), confidence histograms and learning curves."""

from kd_analysis.analysis import analyze, compare
from kd_analysis.calibration import expected_calibration_error, reliability_bins
from kd_analysis.predictions import Predictions, predict
from kd_analysis.probing import probe
from kd_analysis.probing_tasks import ProbingTask, build_tasks

__version__ = "0.1.0"

__all__ = [
    "Predictions",
    "ProbingTask",
    "__version__",
    "analyze",
    "build_tasks",
    "compare",
    "expected_calibration_error",
    "predict",
    "probe",
    "reliability_bins",
]
