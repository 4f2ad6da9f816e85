"""kd-models: Hugging Face adaptors, tasks, students and initializers for kd.

Public names: :class:`HFAdaptor` and :class:`RNNAdaptor` (features from models), the BiRNN students
(:class:`BiRNNConfig`, :class:`BiRNNForSequenceClassification`, :class:`BiRNNForTokenClassification`),
:func:`extract_student` and :func:`select_layers` (ETD and layer selection).
"""

from kd_core.paths import resolve_model_path
from kd_models.adaptors import HFAdaptor, RNNAdaptor
from kd_models.extraction import extract_student, select_layers
from kd_models.rnn import BiRNNConfig, BiRNNForSequenceClassification, BiRNNForTokenClassification
from kd_models.tasks import SequenceClassificationTask

__version__ = "0.1.0"

__all__ = [
    "BiRNNConfig",
    "BiRNNForSequenceClassification",
    "BiRNNForTokenClassification",
    "HFAdaptor",
    "RNNAdaptor",
    "SequenceClassificationTask",
    "__version__",
    "extract_student",
    "resolve_model_path",
    "select_layers",
]
