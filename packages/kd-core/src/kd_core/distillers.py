"""Trainers and distillers with TextBrewer's names and call shapes.

All share :class:`~kd_core.engine.Engine`; they differ in how a batch becomes loss terms:

- :class:`BasicTrainer`: the model's own supervised loss (fine-tuning a teacher);
- :class:`BasicDistiller`: logit distillation plus hard labels from one teacher;
- :class:`GeneralDistiller`: that plus intermediate matches with projections;
- :class:`MultiTeacherDistiller`: the average of several teachers' soft targets, and
  intermediate matches against a named teacher;
- :class:`MultiTaskDistiller`: one teacher per task into a student with a head per task.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from kd_core.config import DistillationConfig, IntermediateMatch, TrainingConfig
from kd_core.engine import Engine
from kd_core.errors import ConfigError
from kd_core.features import TEACHER_LOGITS, Adaptor, FeatureNeeds, Features, as_adaptor, batch_rows
from kd_core.loss_plan import LossPlan, hard_label_items, hard_label_loss
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

    def item_counts(self, batch: Any) -> dict[str, float]:
        labelled = hard_label_items(self.adaptor_S.masks(batch))
        return {} if labelled is None else {"hard_label": labelled}


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
        if distill_config.fused_linear and train_config.mixed_precision == "fp16":
            raise ConfigError("distillation.fused_linear computes its gradients inside the loss, where fp16's loss "
                              "scaling does not reach them; use mixed_precision 'bf16' or none with it")
        self.d_config = distill_config
        self.model_T = model_T
        self.adaptor_T = as_adaptor(adaptor_T)
        self.loss_plan = self._build_plan(distill_config)
        self.teacher_caches: dict[str, TeacherCache] = {}
        self.teacher_forwards = 0

    def _build_plan(self, config: DistillationConfig) -> LossPlan:
        if config.intermediate_matches:
            warnings.warn("BasicDistiller ignores intermediate_matches; use GeneralDistiller",
                          UserWarning, stacklevel=3)
            config = config.model_copy(update={"intermediate_matches": None})
        return LossPlan(config)

    def teacher_models(self) -> dict[str, nn.Module]:
        """The teachers by name (one, called ``teacher``, for the single-teacher distillers)."""
        return {"teacher": self.model_T}

    def teacher_adaptors(self) -> dict[str, Adaptor]:
        """Each teacher's adaptor, by the names of :meth:`teacher_models`."""
        return {"teacher": self.adaptor_T}

    def use_teachers(self, teachers: dict[str, nn.Module]) -> None:
        """Run ``teachers`` (by the names of :meth:`teacher_models`) from now on."""
        self.model_T = teachers["teacher"]

    def sharded_models(self) -> dict[str, nn.Module]:
        return {**super().sharded_models(), **{f"teacher:{name}": m for name, m in self.teacher_models().items()}}

    def use_models(self, models: dict[str, nn.Module]) -> None:
        super().use_models(models)
        self.use_teachers({name: models[f"teacher:{name}"] for name in self.teacher_models()})

    def prepare(self) -> None:
        super().prepare()
        config = self.d_config
        adaptors = self.teacher_adaptors()
        for name, teacher in self.teacher_models().items():
            teacher.to(self.device).eval()
            if name not in self.teacher_caches and (config.is_caching_logits or config.teacher_cache_dir):
                self.teacher_caches[name] = TeacherCache(teacher, config.teacher_cache_dir, config.teacher_cache_top_k,
                                                         adaptors[name].logits_over_tokens)

    @property
    def teacher_cache(self) -> TeacherCache | None:
        """The (first) teacher's cache, or None when caching is off."""
        return next(iter(self.teacher_caches.values()), None)

    def run_teacher(self, name: str, model: nn.Module, adaptor: Adaptor, batch: Any, needs: FeatureNeeds) -> Features:
        """One teacher's features for a batch, from its cache when caching is on; counts forwards."""
        def forward() -> Features:
            self.teacher_forwards += 1
            return adaptor.run(model, batch, needs)

        with torch.no_grad():
            cache = self.teacher_caches.get(name)
            return forward() if cache is None else cache.features(batch, needs, forward)

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"loss_plan": self.loss_plan} if any(True for _ in self.loss_plan.parameters()) else {}

    def extra_param_groups(self) -> list[dict[str, Any]]:
        return self.loss_plan.projection_param_groups()

    def teacher_features(self, batch: Any) -> Features:
        """The teacher's features for a batch, without gradients, from the teacher cache when
        one is configured (``teacher_forwards`` counts the forward passes actually run).

        Logits stored with the data (the batch's ``teacher_logits``, from a labelled transfer
        set) are used as the teacher's logits; the teacher then runs only if other features of it
        are read. A plan that reads nothing of the teacher (hard labels only) runs no teacher."""
        needs = self.loss_plan.needs_T
        if not needs.layers:
            return {}
        stored = batch.get(TEACHER_LOGITS) if isinstance(batch, Mapping) else None
        if stored is None:
            return self.run_teacher("teacher", self.model_T, self.adaptor_T, batch, needs)
        if self.d_config.fused_linear:
            raise ConfigError("distillation.fused_linear reads the teacher's hidden states and LM head, and the "
                              "data holds stored teacher logits (teacher_logits); leave out one or the other")
        others = FeatureNeeds({f: layers for f, layers in needs.layers.items() if f != "logits"})
        features = self.run_teacher("teacher", self.model_T, self.adaptor_T, batch, others) if others.layers else {}
        return {**features, "logits": stored}

    def compute_losses(self, batch: Any, progress: float) -> dict[str, torch.Tensor]:
        features_T = self.teacher_features(batch)
        features_S = self.adaptor_S.run(self.model_S, batch, self.loss_plan.needs_S)
        return self.loss_plan(features_S, features_T, progress)

    def item_counts(self, batch: Any) -> dict[str, float]:
        return self.loss_plan.item_counts(self.adaptor_S.masks(batch), batch_rows(batch))


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


class MultiTeacherDistiller(GeneralDistiller):
    """Several teachers of one task (TextBrewer's ``MultiTeacherDistiller``, extended).

    ``model_T`` is a list of teachers or a dict name -> teacher; ``adaptor_T`` one adaptor for all
    or one per teacher. The logit loss reads the weighted average (``teacher_weights``, equal by
    default) of the teachers' logits (``teacher_ensemble: logits``, TextBrewer's behaviour) or of
    their probabilities at the configured temperature (``teacher_ensemble: probabilities``, given to
    the loss as ``T * log p``). Intermediate matches read the teacher named by their ``teacher``
    field (a name or an index), the first teacher by default. Each teacher runs only for what is
    read from it.
    """

    def __init__(self, train_config: TrainingConfig, distill_config: DistillationConfig,
                 model_T: Sequence[nn.Module] | Mapping[str, nn.Module], model_S: nn.Module,
                 adaptor_T: AdaptorLike | Sequence[AdaptorLike], adaptor_S: AdaptorLike,
                 custom_matches: Sequence[IntermediateMatch | dict[str, Any]] | None = None) -> None:
        teachers = dict(model_T) if isinstance(model_T, Mapping) else {str(i): m for i, m in enumerate(model_T)}
        if not teachers:
            raise ConfigError("MultiTeacherDistiller needs at least one teacher")
        if distill_config.fused_linear:
            raise ConfigError("distillation.fused_linear reads one teacher's hidden states and LM head; the "
                              "multi-teacher distiller averages whole logits: leave fused_linear out")
        names = list(teachers)
        adaptors = list(adaptor_T) if isinstance(adaptor_T, (list, tuple)) else [adaptor_T] * len(names)
        if len(adaptors) != len(names):
            raise ConfigError(f"{len(adaptors)} teacher adaptors for {len(names)} teachers; give one, or one each")
        weights = distill_config.teacher_weights or [1.0] * len(names)
        if len(weights) != len(names) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"distillation.teacher_weights {weights} must be {len(names)} non-negative numbers "
                              "with a positive sum, one per teacher")
        self.teacher_names = names
        self.models_T = teachers
        self.adaptors_T = {n: as_adaptor(a) for n, a in zip(names, adaptors, strict=True)}
        self.ensemble_weights = [w / sum(weights) for w in weights]
        config = distill_config.model_copy(update={"intermediate_matches": [
            _resolve_teacher(m, names, f"distillation.intermediate_matches[{i}]")
            for i, m in enumerate(distill_config.intermediate_matches or [])] or None})
        super().__init__(train_config, config, teachers[names[0]], model_S, adaptors[0], adaptor_S,
                         [_resolve_teacher(m if isinstance(m, IntermediateMatch) else IntermediateMatch.from_dict(m),
                                           names, f"custom_matches[{i}]")
                          for i, m in enumerate(custom_matches or [])])
        self.needs_per_teacher = {n: self.loss_plan.teacher_needs(n, first=(n == names[0])) for n in names}

    def teacher_models(self) -> dict[str, nn.Module]:
        return self.models_T

    def teacher_adaptors(self) -> dict[str, Adaptor]:
        return self.adaptors_T

    def use_teachers(self, teachers: dict[str, nn.Module]) -> None:
        self.models_T = dict(teachers)
        self.model_T = self.models_T[self.teacher_names[0]]

    def teacher_features(self, batch: Any) -> Features:
        """Each teacher's features for what is read from it, and the ensemble's logits."""
        if isinstance(batch, Mapping) and TEACHER_LOGITS in batch:
            raise ConfigError("the batch carries stored teacher logits (a labelled transfer set), but a "
                              "MultiTeacherDistiller ensembles its teachers' own logits; "
                              "drop teacher_logits from the data")
        per_teacher = {name: self.run_teacher(name, self.models_T[name], self.adaptors_T[name], batch,
                                              self.needs_per_teacher[name])
                       for name in self.teacher_names if self.needs_per_teacher[name].layers}
        features: Features = {"teachers": per_teacher, "first_teacher": self.teacher_names[0]}
        if per_teacher and "logits" in self.loss_plan.needs_T:
            features["logits"] = self._ensemble([per_teacher[n]["logits"] for n in self.teacher_names])
        return features

    def _ensemble(self, logits: list[Any]) -> Any:
        if isinstance(logits[0], (list, tuple)):
            return [self._ensemble(list(group)) for group in zip(*logits, strict=True)]
        weights = self.ensemble_weights
        if self.d_config.teacher_ensemble == "logits":
            return sum(w * z.float() for w, z in zip(weights, logits, strict=True))
        temperature = self.d_config.temperature
        log_mixture = torch.logsumexp(torch.stack(
            [math.log(w) + torch.log_softmax(z.float() / temperature, -1) for w, z in zip(weights, logits, strict=True)
             if w > 0]), 0)
        return temperature * log_mixture


def _resolve_teacher(match: IntermediateMatch, names: list[str], where: str) -> IntermediateMatch:
    """The match with its ``teacher`` field as a teacher name."""
    teacher = match.teacher
    if teacher is None:
        return match
    if isinstance(teacher, int) and not isinstance(teacher, bool) and 0 <= teacher < len(names):
        return match.model_copy(update={"teacher": names[teacher]})
    if str(teacher) in names:
        return match.model_copy(update={"teacher": str(teacher)})
    raise ConfigError(f"{where}.teacher: {teacher!r} is not one of the teachers ({', '.join(names)}) "
                      f"nor an index below {len(names)}")


class MultiTaskLoader:
    """Batches from several tasks' dataloaders as ``(task, batch)`` pairs (TextBrewer's task
    sampling): each step picks a task with probability proportional to ``len(loader) ** tau`` and
    takes that loader's next batch, restarting a loader that runs out. One pass yields as many
    batches as all loaders hold together.

    The task order is drawn from one seed taken from torch's RNG when the pass starts, and each
    loader is iterated under its own RNG stream derived from it, so a pass replays exactly from
    the RNG state at its start (kd's exact resume) whatever the training does in between.
    """

    def __init__(self, dataloaders: Mapping[str, Any], tau: float = 1.0) -> None:
        if not dataloaders:
            raise ConfigError("MultiTaskDistiller needs at least one task's dataloader")
        lengths = {}
        for task, loader in dataloaders.items():
            try:
                lengths[task] = len(loader)
            except TypeError:
                raise ConfigError(f"the dataloader of task {task!r} has no length; multi-task sampling "
                                  "weighs tasks by their number of batches") from None
            if lengths[task] == 0:
                raise ConfigError(f"the dataloader of task {task!r} is empty")
        self.dataloaders = dict(dataloaders)
        self.weights = torch.tensor([lengths[t] ** tau for t in self.dataloaders], dtype=torch.float64)
        self.total = sum(lengths.values())

    def __len__(self) -> int:
        return self.total

    def __iter__(self):
        seed = int(torch.empty((), dtype=torch.int64).random_().item())
        order = torch.multinomial(self.weights, self.total, replacement=True,
                                  generator=torch.Generator().manual_seed(seed)).tolist()
        tasks = list(self.dataloaders)
        iterators: dict[str, Any] = {}
        restarts = dict.fromkeys(tasks, 0)
        def stream(index: int, task: str) -> None:  # this task's RNG stream, for its current pass
            torch.manual_seed((seed + 7919 * (index + 1) + 104729 * restarts[task]) % 2**63)

        for index in order:
            task = tasks[index]
            with torch.random.fork_rng(devices=[]):
                stream(index, task)
                if task not in iterators:
                    iterators[task] = iter(self.dataloaders[task])
                try:
                    batch = next(iterators[task])
                except StopIteration:
                    restarts[task] += 1
                    stream(index, task)
                    iterators[task] = iter(self.dataloaders[task])
                    batch = next(iterators[task])
            yield task, batch


class MultiTaskDistiller(BasicDistiller):
    """One teacher per task into one student with a head per task (TextBrewer's
    ``MultiTaskDistiller``).

    ``model_T``, ``adaptor_T`` and ``adaptor_S`` are dicts keyed by task name; each task's student
    adaptor picks that task's head from the student's outputs. ``train(optimizer, dataloaders,
    num_steps=..., tau=1.0, ...)`` takes a dict of dataloaders and samples tasks as
    :class:`MultiTaskLoader` does; every loss term is logged per task (``sst2.kd``,
    ``cola.hard_label``, ...). All tasks share the distillation config and its projections.
    """

    def __init__(self, train_config: TrainingConfig, distill_config: DistillationConfig,
                 model_T: Mapping[str, nn.Module], model_S: nn.Module, adaptor_T: Mapping[str, AdaptorLike],
                 adaptor_S: Mapping[str, AdaptorLike]) -> None:
        tasks = list(model_T)
        for name, adaptors in (("adaptor_T", adaptor_T), ("adaptor_S", adaptor_S)):
            if not isinstance(adaptors, Mapping) or set(adaptors) != set(tasks):
                given = sorted(adaptors) if isinstance(adaptors, Mapping) else type(adaptors).__name__
                raise ConfigError(f"MultiTaskDistiller: {name} must be a dict with one adaptor per task "
                                  f"({', '.join(tasks)}), got {given}")
        self.tasks = tasks
        self.models_T = dict(model_T)
        self.adaptors_T = {t: as_adaptor(a) for t, a in adaptor_T.items()}
        self.adaptors_S = {t: as_adaptor(a) for t, a in adaptor_S.items()}
        super().__init__(train_config, distill_config, self.models_T[tasks[0]], model_S,
                         self.adaptors_T[tasks[0]], self.adaptors_S[tasks[0]])

    def _build_plan(self, config: DistillationConfig) -> LossPlan:
        return LossPlan(config)

    def teacher_models(self) -> dict[str, nn.Module]:
        return self.models_T

    def teacher_adaptors(self) -> dict[str, Adaptor]:
        return self.adaptors_T

    def use_teachers(self, teachers: dict[str, nn.Module]) -> None:
        self.models_T = dict(teachers)
        self.model_T = self.models_T[self.tasks[0]]

    def train(self, optimizer: torch.optim.Optimizer, dataloaders: Mapping[str, Any], num_epochs: int | None = None,
              num_steps: int | None = None, tau: float = 1.0, **kwargs: Any):
        """Train for ``num_steps`` optimizer steps (or ``num_epochs`` passes of
        :class:`MultiTaskLoader`) on batches sampled from the tasks' ``dataloaders``; the other
        arguments are :meth:`Engine.train`'s."""
        unknown = set(dataloaders) - set(self.tasks)
        if unknown:
            raise ConfigError(f"dataloaders for unknown tasks {sorted(unknown)}; the teachers are for "
                              f"{', '.join(self.tasks)}")
        return super().train(optimizer, MultiTaskLoader(dataloaders, tau), num_epochs=num_epochs,
                             num_steps=num_steps, **kwargs)

    def compute_losses(self, batch: Any, progress: float) -> dict[str, torch.Tensor]:
        task, inputs = batch
        features_T = self.run_teacher(task, self.models_T[task], self.adaptors_T[task], inputs,
                                      self.loss_plan.needs_T)
        features_S = self.adaptors_S[task].run(self.model_S, inputs, self.loss_plan.needs_S)
        return {f"{task}.{name}": value for name, value in self.loss_plan(features_S, features_T, progress).items()}

    def item_counts(self, batch: Any) -> dict[str, float]:
        task, inputs = batch
        counts = self.loss_plan.item_counts(self.adaptors_S[task].masks(inputs), batch_rows(inputs))
        return {f"{task}.{name}": value for name, value in counts.items()}
