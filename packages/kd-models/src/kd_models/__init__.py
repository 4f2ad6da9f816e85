"""kd-models: Hugging Face adaptors, tasks, students and initializers for kd.

Public names: :class:`DistillationTrainer` (kd's distillation in a transformers ``Trainer``),
:class:`HFAdaptor` and :class:`RNNAdaptor` (features from models), the BiRNN students
(:class:`BiRNNConfig`, :class:`BiRNNForSequenceClassification`, :class:`BiRNNForTokenClassification`),
:func:`extract_student` and :func:`select_layers` (ETD and layer selection).
"""

from kd_core.paths import resolve_model_path
from kd_models.adaptors import HFAdaptor, RNNAdaptor
from kd_models.extraction import extract_student, select_layers
from kd_models.rnn import BiRNNConfig, BiRNNForSequenceClassification, BiRNNForTokenClassification
from kd_models.tasks import SequenceClassificationTask

__version__ = "0.1.0"


def __getattr__(name: str):
    # transformers' Trainer (and accelerate behind it) load slowly: only for those who use it
    if name == "DistillationTrainer":
        from kd_models.trainer import DistillationTrainer

        return DistillationTrainer
    raise AttributeError(f"module 'kd_models' has no attribute {name!r}")


__all__ = [
    "BiRNNConfig",
    "BiRNNForSequenceClassification",
    "BiRNNForTokenClassification",
    "DistillationTrainer",
    "HFAdaptor",
    "RNNAdaptor",
    "SequenceClassificationTask",
    "__version__",
    "extract_student",
    "resolve_model_path",
    "select_layers",
]
