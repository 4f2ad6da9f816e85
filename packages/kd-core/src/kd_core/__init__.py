"""kd-core: the knowledge-distillation engine, plugin system and configs of kd.

Public names: :func:`lookup` (the one way to get a registered part), :data:`hookimpl` (for plugin
authors), :func:`get_task` and :func:`get_metric`, :class:`TrainingConfig`,
:class:`DistillationConfig`, :class:`BasicTrainer`, :class:`BasicDistiller`,
:class:`GeneralDistiller`, :class:`MultiTeacherDistiller`, :class:`MultiTaskDistiller`,
:class:`LossPlan`, :class:`Adaptor`, :class:`Metric`, :data:`METRICS_FILE`, :data:`RECORD_FIELDS`.

Public modules, which plugins and users may import (``make lint`` holds plugins to them):
``kd_core`` itself, ``kd_core.augmentation`` (growing a file with an augmenter),
``kd_core.checkpoint`` (checkpoint files, atomic writes), ``kd_core.config``, ``kd_core.data``
(reading data files), ``kd_core.distillers``, ``kd_core.distributed`` (a process's place in a
data-parallel run, gradient averaging), ``kd_core.errors``, ``kd_core.features`` (the
Features dict, adaptors), ``kd_core.hookspecs``, ``kd_core.inference`` (running a model over a
dataset), ``kd_core.labelling`` (teacher logits of a file), ``kd_core.loggers`` (experiment
trackers beside metrics.jsonl), ``kd_core.loss_plan``, ``kd_core.metrics``, ``kd_core.model_card``
(the README.md beside every saved model), ``kd_core.options`` (option types for commands),
``kd_core.normalization`` (what a loss averages over: a step's items across micro-batches and
processes), ``kd_core.paths`` (model paths), ``kd_core.schedulers``, ``kd_core.schema`` (a
recipe's sections), ``kd_core.size``,
``kd_core.tasks`` (the Task protocol), ``kd_core.teacher_cache`` and ``kd_core.validation``
(evaluation during training: the best weights, early stopping). The others (the engine, the
runs, the CLI, the plugin manager) are kd-core's own and may change without notice.
"""

from kd_core.config import DistillationConfig, IntermediateMatch, TrainingConfig
from kd_core.distillers import (
    BasicDistiller,
    BasicTrainer,
    GeneralDistiller,
    MultiTaskDistiller,
    MultiTeacherDistiller,
)
from kd_core.engine import METRICS_FILE, RECORD_FIELDS
from kd_core.errors import (
    ConfigError,
    DuplicateNameError,
    KDError,
    NonFiniteLossError,
    PluginError,
    ShapeError,
    UnknownNameError,
)
from kd_core.features import Adaptor, FeatureNeeds, Features
from kd_core.hookspecs import hookimpl
from kd_core.loss_plan import LossPlan
from kd_core.metrics import Metric
from kd_core.plugins import lookup, registry, reset_plugins
from kd_core.tasks import Evaluation, Task, get_metric, get_task

__version__ = "0.1.0"

__all__ = [
    "METRICS_FILE",
    "RECORD_FIELDS",
    "Adaptor",
    "BasicDistiller",
    "BasicTrainer",
    "ConfigError",
    "DistillationConfig",
    "DuplicateNameError",
    "Evaluation",
    "FeatureNeeds",
    "Features",
    "GeneralDistiller",
    "IntermediateMatch",
    "KDError",
    "LossPlan",
    "Metric",
    "MultiTaskDistiller",
    "MultiTeacherDistiller",
    "NonFiniteLossError",
    "PluginError",
    "ShapeError",
    "Task",
    "TrainingConfig",
    "UnknownNameError",
    "__version__",
    "get_metric",
    "get_task",
    "hookimpl",
    "lookup",
    "registry",
    "reset_plugins",
]
