"""kd-models: Hugging Face adaptors, tasks and students for kd."""

from kd_models.adaptors import HFAdaptor
from kd_models.paths import resolve_model_path
from kd_models.tasks import SequenceClassificationTask

__version__ = "0.1.0"

__all__ = ["HFAdaptor", "SequenceClassificationTask", "__version__", "resolve_model_path"]
