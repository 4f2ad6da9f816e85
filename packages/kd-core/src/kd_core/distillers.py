"""Trainers and distillers with TextBrewer's names and call shapes.

All share :class:`~kd_core.engine.Engine`; they differ in how a batch becomes loss terms:

- :class:`BasicTrainer`: the model's own supervised loss (fine-tuning a teacher);
- :class:`BasicDistiller`: logit distillation plus hard labels from one teacher;
- :class:`GeneralDistiller`: that plus intermediate matches with projections.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from kd_core.config import DistillationConfig, IntermediateMatch, TrainingConfig
from kd_core.engine import Engine
from kd_core.features import Adaptor, FeatureNeeds, Features, as_adaptor
from kd_core.loss_plan import LossPlan, hard_label_loss
from kd_core.teacher_cache import TeacherCache

AdaptorLike = Adaptor | Callable[[Any, Any], Any]


class BasicTrainer(Engine):
    """Trains one model on its labels (TextBrewer's ``BasicTrainer``), e.g. to fine-tune a teacher.

    The loss is the adaptor's ``losses`` if it returns them, else cross-entropy of ``logits``
    against ``labels``.
    """

    def __init__(self, train_config: TrainingConfig, model: nn.Module, adaptor: AdaptorLike) -> None:
        super().__init__(train_config, model, adaptor)
        self.model = model
        self._needs = FeatureNeeds({"logits": set()})

    def compute_losses(self, batch: Any, progress: float) -> dict[str, torch.Tensor]:
        return {"hard_label": hard_label_loss(self.adaptor_S.run(self.model_S, batch, self._needs))}


class BasicDistiller(Engine):
    """One teacher, logit distillation and hard labels (TextBrewer's ``BasicDistiller``).

    ``intermediate_matches`` in the config are ignored with a warning; use
    :class:`GeneralDistiller` for them.
    """

    def __init__(self, train_config: TrainingConfig, distill_config: DistillationConfig,
                 model_T: nn.Module, model_S: nn.Module, adaptor_T: AdaptorLike,
                 adaptor_S: AdaptorLike) -> None:
        super().__init__(train_config, model_S, adaptor_S)
        if not isinstance(distill_config, DistillationConfig):
            raise TypeError("distill_config must be a kd_core.DistillationConfig, "
                            f"got {type(distill_config).__name__}")
        self.d_config = distill_config
        self.model_T = model_T
        self.adaptor_T = as_adaptor(adaptor_T)
        self.loss_plan = self._build_plan(distill_config)
        self.teacher_cache: TeacherCache | None = None
        self.teacher_forwards = 0

    def _build_plan(self, config: DistillationConfig) -> LossPlan:
        if config.intermediate_matches:
            warnings.warn("BasicDistiller ignores intermediate_matches; use GeneralDistiller",
                          UserWarning, stacklevel=3)
            config = config.model_copy(update={"intermediate_matches": None})
        return LossPlan(config)

    def prepare(self) -> None:
        super().prepare()
        self.model_T.to(self.device).eval()
        config = self.d_config
        if self.teacher_cache is None and (config.is_caching_logits or config.teacher_cache_dir):
            self.teacher_cache = TeacherCache(self.model_T, config.teacher_cache_dir, config.teacher_cache_top_k)

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"loss_plan": self.loss_plan} if any(True for _ in self.loss_plan.parameters()) else {}

    def extra_param_groups(self) -> list[dict[str, Any]]:
        return self.loss_plan.projection_param_groups()

    def teacher_features(self, batch: Any) -> Features:
        """The teacher's features for a batch, without gradients, from the teacher cache when
        one is configured (``teacher_forwards`` counts the forward passes actually run)."""
        def forward() -> Features:
            self.teacher_forwards += 1
            return self.adaptor_T.run(self.model_T, batch, self.loss_plan.needs_T)

        with torch.no_grad():
            if self.teacher_cache is None:
                return forward()
            return self.teacher_cache.features(batch, self.loss_plan.needs_T, forward)

    def compute_losses(self, batch: Any, progress: float) -> dict[str, torch.Tensor]:
        features_T = self.teacher_features(batch)
        features_S = self.adaptor_S.run(self.model_S, batch, self.loss_plan.needs_S)
        return self.loss_plan(features_S, features_T, progress)


class GeneralDistiller(BasicDistiller):
    """One teacher with logit, hard-label and intermediate-feature terms (TextBrewer's
    ``GeneralDistiller``). ``custom_matches`` adds matches beyond the config's."""

    def __init__(self, train_config: TrainingConfig, distill_config: DistillationConfig,
                 model_T: nn.Module, model_S: nn.Module, adaptor_T: AdaptorLike,
                 adaptor_S: AdaptorLike,
                 custom_matches: Sequence[IntermediateMatch | dict[str, Any]] | None = None) -> None:
        self._custom_matches = list(custom_matches or [])
        super().__init__(train_config, distill_config, model_T, model_S, adaptor_T, adaptor_S)

    def _build_plan(self, config: DistillationConfig) -> LossPlan:
        return LossPlan(config, extra_matches=self._custom_matches)
