"""kd-core: the knowledge-distillation engine, plugin system and configs of kd.

Public names: :func:`lookup` (the one way to get a registered part), :data:`hookimpl` (for plugin
authors), :class:`TrainingConfig`, :class:`DistillationConfig`, :class:`BasicTrainer`,
:class:`BasicDistiller`, :class:`GeneralDistiller`, :class:`MultiTeacherDistiller`,
:class:`MultiTaskDistiller`, :class:`LossPlan`, :class:`Adaptor`.
"""

from kd_core.config import DistillationConfig, IntermediateMatch, TrainingConfig
from kd_core.distillers import (
    BasicDistiller,
    BasicTrainer,
    GeneralDistiller,
    MultiTaskDistiller,
    MultiTeacherDistiller,
)
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
from kd_core.plugins import lookup, registry, reset_plugins

__version__ = "0.1.0"

__all__ = [
    "Adaptor",
    "BasicDistiller",
    "BasicTrainer",
    "ConfigError",
    "DistillationConfig",
    "DuplicateNameError",
    "FeatureNeeds",
    "Features",
    "GeneralDistiller",
    "IntermediateMatch",
    "KDError",
    "LossPlan",
    "MultiTaskDistiller",
    "MultiTeacherDistiller",
    "NonFiniteLossError",
    "PluginError",
    "ShapeError",
    "TrainingConfig",
    "UnknownNameError",
    "__version__",
    "hookimpl",
    "lookup",
    "registry",
    "reset_plugins",
]
