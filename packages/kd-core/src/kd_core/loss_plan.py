"""The LossPlan: a DistillationConfig compiled once into named, weighted loss terms.

Each term is a registered loss, the feature and layers it reads on each side, an optional
trainable projection (the plan is an ``nn.Module`` so projections join the optimizer and the
checkpoint), a weight with its scheduler and, for the logit loss, a temperature with its
scheduler. ``plan(features_S, features_T, progress)`` returns ``{term: weighted loss}``.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kd_core.config import DistillationConfig, IntermediateMatch
from kd_core.errors import ConfigError, ShapeError
from kd_core.features import FEATURE_KEYS, LINEAR_LOGITS, FeatureNeeds, Features, LinearLogits, accepts_linear_logits
from kd_core.normalization import count_items, items_of
from kd_core.plugins import lookup


@dataclass
class MatchTerm:
    """One compiled intermediate match."""

    name: str
    index: int
    match: IntermediateMatch
    loss: Any


class LossPlan(nn.Module):
    """Loss terms compiled from a :class:`DistillationConfig`.

    Terms: ``kd`` (the logit loss ``kd_loss_type`` at the scheduled temperature), ``hard_label``
    (the student's own loss, or cross-entropy with the labels) and one per intermediate match,
    named ``match{i}.{loss}``. Terms whose weight is zero throughout are left out.
    """

    def __init__(self, config: DistillationConfig, *, with_logits: bool = True,
                 extra_matches: Sequence[IntermediateMatch | dict] = ()) -> None:
        super().__init__()
        self.config = config
        self.needs_T = FeatureNeeds()
        self.needs_S = FeatureNeeds()
        self.kd_loss = None
        if with_logits and (config.kd_loss_weight != 0 or config.kd_loss_weight_scheduler != "none"):
            self.kd_loss = lookup("losses", config.kd_loss_type)
            _check_params(self.kd_loss, config.kd_loss_params, "distillation.kd_loss_params",
                          fixed=("mask", "temperature"))
            self.temperature_scheduler = build_scheduler(
                config.temperature_scheduler, "temperature", "distillation.temperature_scheduler")
            self.kd_weight_scheduler = build_scheduler(
                config.kd_loss_weight_scheduler, "weight", "distillation.kd_loss_weight_scheduler")
            self.needs_T.add("logits")
            self.needs_S.add("logits")
            if config.fused_linear and not accepts_linear_logits(self.kd_loss):
                raise ConfigError(f"distillation.fused_linear: kd_loss_type {config.kd_loss_type!r} reads whole "
                                  "logits; use kl, ce, reverse_kl or jsd, or leave fused_linear out")
        self.uses_hard_labels = config.hard_label_weight != 0 or config.hard_label_weight_scheduler != "none"
        if self.uses_hard_labels:
            self.hard_weight_scheduler = build_scheduler(
                config.hard_label_weight_scheduler, "weight", "distillation.hard_label_weight_scheduler")
            self.needs_S.add("logits")
        if config.fused_linear:
            for needs in (self.needs_S, self.needs_T):
                if "logits" in needs:
                    needs.add(LINEAR_LOGITS)
        matches = list(config.intermediate_matches or [])
        matches += [m if isinstance(m, IntermediateMatch) else IntermediateMatch.from_dict(m)
                    for m in extra_matches]
        self.matches: list[MatchTerm] = []
        self.projections = nn.ModuleDict()
        for index, match in enumerate(matches):
            where = f"distillation.intermediate_matches[{index}]"
            try:
                loss = lookup("losses", match.loss)
            except LookupError as exc:
                raise ConfigError(f"{where}.loss: {exc}") from None
            if isinstance(match.layer_T, list) != isinstance(match.layer_S, list):
                raise ConfigError(f"{where}: layer_T and layer_S must both be single layers or "
                                  f"both pairs, got {match.layer_T} and {match.layer_S}")
            _check_params(loss, match.params, f"{where}.params", fixed=("mask",))
            name = f"match{index}.{match.loss}"
            self.matches.append(MatchTerm(name, index, match, loss))
            for feature in _as_list(match.feature):
                self.needs_T.add(feature, match.layer_T)
                self.needs_S.add(feature, match.layer_S)
            if match.proj is not None:
                try:
                    factory = lookup("projections", match.proj[0])
                except LookupError as exc:
                    raise ConfigError(f"{where}.proj: {exc}") from None
                self.projections[str(index)] = factory(match.proj[1], match.proj[2])

    def projection_param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups of the projections (with their own learning rate if set)."""
        groups = []
        for term in self.matches:
            key = str(term.index)
            if key in self.projections:
                group: dict[str, Any] = {"params": list(self.projections[key].parameters())}
                options = term.match.proj_options
                if "learning_rate" in options:
                    group["lr"] = options["learning_rate"]
                group.update({k: v for k, v in options.items() if k != "learning_rate"})
                groups.append(group)
        return groups

    def forward(self, features_S: Features, features_T: Features | None,
                progress: float = 0.0) -> dict[str, torch.Tensor]:
        """Weighted loss terms for one batch; ``progress`` is step / total steps in [0, 1]."""
        terms: dict[str, torch.Tensor] = {}
        if self.kd_loss is not None:
            terms["kd"] = self._kd_term(features_S, _require(features_T, "teacher"), progress)
        if self.uses_hard_labels:
            weight = self.hard_weight_scheduler.weight(self.config.hard_label_weight, progress)
            terms["hard_label"] = weight * hard_label_loss(features_S)
        for term in self.matches:
            terms[term.name] = self._match_term(term, features_S, _require(features_T, "teacher"))
        return terms

    def item_counts(self, masks: Features, rows: int) -> dict[str, float]:
        """Each term's items in a batch (:mod:`kd_core.normalization`), from the student adaptor's
        :meth:`~kd_core.features.Adaptor.masks` of the batch and its ``rows``; a term whose mask is
        not known in advance is left out (the engine then weighs it by rows)."""
        counts: dict[str, float] = {}
        if self.kd_loss is not None and "logits_mask" in masks:
            mask = _as_list(masks["logits_mask"])[0]
            counts["kd"] = count_items(items_of(self.kd_loss), mask, rows)
        if self.uses_hard_labels:
            labelled = hard_label_items(masks)
            if labelled is not None:
                counts["hard_label"] = labelled
        if "inputs_mask" in masks:
            for term in self.matches:
                counts[term.name] = count_items(items_of(term.loss), masks["inputs_mask"], rows)
        return counts

    def _kd_term(self, features_S: Features, features_T: Features, progress: float) -> torch.Tensor:
        logits_S = _as_list(_feature(features_S, "logits", "student"))
        logits_T = _as_list(_feature(features_T, "logits", "teacher"))
        if len(logits_S) != len(logits_T):
            raise ShapeError(f"student gives {len(logits_S)} logits tensors, teacher {len(logits_T)}")
        masks = _as_list(_either(features_S, features_T, "logits_mask"), len(logits_S))
        labels = _as_list(_either(features_S, features_T, "labels"), len(logits_S))
        total = 0.0
        for l_S, l_T, mask, label in zip(logits_S, logits_T, masks, labels, strict=True):
            if self.config.fused_linear:
                _require_linear(l_S, "student")
                _require_linear(l_T, "teacher")
            l_T = l_T.detach()
            if self.config.probability_shift:
                if label is None:
                    raise ConfigError("distillation.probability_shift needs labels in the features")
                l_T = probability_shift(l_T, label)
            temperature = self.temperature_scheduler.temperature(
                l_S.detach(), l_T, self.config.temperature, mask=mask)
            total = total + self.kd_loss(l_S, l_T, mask=mask, temperature=temperature,
                                         **self.config.kd_loss_params)
        weight = self.kd_weight_scheduler.weight(self.config.kd_loss_weight, progress)
        return weight * total

    def teacher_needs(self, teacher: str, first: bool) -> FeatureNeeds:
        """What one of several teachers must give: logits for the ensemble, and the features of
        the matches that name it (``first``: the teacher unnamed matches read)."""
        needs = FeatureNeeds({"logits": set()} if "logits" in self.needs_T else {})
        for term in self.matches:
            named = term.match.teacher
            if (str(named) == teacher) or (named is None and first):
                for feature in _as_list(term.match.feature):
                    needs.add(feature, term.match.layer_T)
        return needs

    def _match_term(self, term: MatchTerm, features_S: Features, features_T: Features) -> torch.Tensor:
        match = term.match
        teachers = features_T.get("teachers")
        if teachers is not None:  # several teachers: read the one the match names
            features_T = teachers[features_T["first_teacher"] if match.teacher is None else str(match.teacher)]
        if isinstance(match.feature, list):
            inter_S = tuple(_layers(features_S, f, match.layer_S, "student", term.index) for f in match.feature)
            inter_T = tuple(_layers(features_T, f, match.layer_T, "teacher", term.index) for f in match.feature)
        else:
            inter_S = _layers(features_S, match.feature, match.layer_S, "student", term.index)
            inter_T = _layers(features_T, match.feature, match.layer_T, "teacher", term.index)
        projection = self.projections[str(term.index)] if str(term.index) in self.projections else None  # noqa: SIM401 (ModuleDict has no get)
        if projection is not None:
            inter_S = _each(projection, inter_S)
        inter_T = _each(torch.Tensor.detach, inter_T)
        mask = features_S.get("inputs_mask")
        try:
            loss = term.loss(inter_S, inter_T, mask=mask, **match.params)
        except ShapeError as exc:
            raise ShapeError(f"distillation.intermediate_matches[{term.index}] ({match.loss}, layer_S {match.layer_S}, "
                             f"layer_T {match.layer_T}): {exc}") from None
        return match.weight * loss


def hard_label_loss(features: Features) -> torch.Tensor:
    """The student's own loss: the sum of ``losses`` if the adaptor gives them (TextBrewer),
    else cross-entropy of ``logits`` against ``labels`` over real rows (-100 is ignored)."""
    if features.get("losses") is not None:
        return sum(_as_list(features["losses"]))
    logits = _feature(features, "logits", "student")
    labels = features.get("labels")
    if labels is None:
        raise ConfigError(
            "distillation.hard_label_weight is set but the student's features have neither "
            "'losses' nor 'labels'; make the adaptor return labels, or set hard_label_weight: 0")
    total = 0.0
    masks = _as_list(features.get("logits_mask"), len(_as_list(logits)))
    for l_S, label, mask in zip(_as_list(logits), _as_list(labels), masks, strict=True):
        flat_labels = label.reshape(-1).long()
        if mask is not None:
            flat_labels = flat_labels.masked_fill(mask.reshape(-1) == 0, -100)
        if isinstance(l_S, LinearLogits):
            total = total + l_S.cross_entropy(flat_labels.reshape(label.shape))
            continue
        flat_logits = l_S.reshape(-1, l_S.shape[-1])
        flat_logits = flat_logits.to(torch.promote_types(flat_logits.dtype, torch.float32))
        if (flat_labels != -100).any():
            total = total + F.cross_entropy(flat_logits, flat_labels, ignore_index=-100)
        else:
            total = total + flat_logits.sum() * 0.0
    return total


def hard_label_items(masks: Features) -> float | None:
    """The labelled rows :func:`hard_label_loss` averages over (labels not -100 in real rows of
    ``logits_mask``), from an adaptor's :meth:`~kd_core.features.Adaptor.masks`; None when its
    labels or row mask are not known in advance."""
    if masks.get("labels") is None or "logits_mask" not in masks:
        return None
    total = 0.0
    labels = _as_list(masks["labels"])
    for label, mask in zip(labels, _as_list(masks["logits_mask"], len(labels)), strict=True):
        real = label.reshape(-1) != -100
        if mask is not None:
            real &= mask.reshape(-1) != 0
        total += float(real.sum())
    return total


def probability_shift(logits_T: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Wen et al. 2019: where the teacher's top class is wrong, swap its logit with the gold
    class's logit, so the teacher's distribution peaks at the gold label and keeps its shape."""
    logits = logits_T.clone()
    flat = logits.reshape(-1, logits.shape[-1])
    gold = labels.reshape(-1).long()
    valid = gold >= 0
    rows = torch.arange(flat.shape[0], device=flat.device)[valid]
    gold = gold[valid]
    top = flat[rows].argmax(dim=-1)
    top_values = flat[rows, top].clone()
    flat[rows, top] = flat[rows, gold]
    flat[rows, gold] = top_values
    return logits


def _require_linear(logits: Any, side: str) -> None:
    if not isinstance(logits, LinearLogits):
        raise ConfigError(f"distillation.fused_linear: the {side}'s adaptor gave whole logits, not its last hidden "
                          "states and LM head (task causal_lm's adaptor gives them); leave fused_linear out")


def _check_params(loss: Any, params: dict[str, Any], where: str, fixed: tuple[str, ...]) -> None:
    """Fail at plan time, not at the first step, when a loss does not take ``params``."""
    try:
        signature = inspect.signature(loss)
    except (TypeError, ValueError):
        return
    taken = [name for name in params if name in fixed]
    if taken:
        raise ConfigError(f"{where}: {', '.join(taken)} is set by kd, not by params")
    try:
        signature.bind_partial(None, None, **params)
    except TypeError as exc:
        accepted = [p.name for p in list(signature.parameters.values())[2:] if p.name not in fixed]
        raise ConfigError(f"{where}: {exc}; the loss accepts: {', '.join(accepted) or 'no parameters'}") from None


def _each(function: Any, value: Any) -> Any:
    """Apply ``function`` to a tensor, or to every tensor of a layer pair or feature tuple."""
    if isinstance(value, (list, tuple)):
        return type(value)(function(x) for x in value)
    return function(value)


def _require(features: Features | None, side: str) -> Features:
    if features is None:
        raise ConfigError(f"this loss plan needs {side} features but none were produced")
    return features


def _feature(features: Features, key: str, side: str, where: str = "") -> Any:
    if features.get(key) is None:
        given = sorted(k for k, v in features.items() if v is not None)
        close = difflib.get_close_matches(key, sorted({*given, *FEATURE_KEYS}), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"{where}the {side}'s adaptor returned no {key!r} (it gives {', '.join(given)}); {hint}"
            f"the loss plan reads it, so the adaptor must provide it")
    return features[key]


def _layers(features: Features, feature: str, layer: int | list[int], side: str, index: int) -> Any:
    values = _feature(features, feature, side, f"distillation.intermediate_matches[{index}].feature: ")
    picks = layer if isinstance(layer, list) else [layer]
    for i in picks:
        if not -len(values) <= i < len(values):
            raise ConfigError(
                f"distillation.intermediate_matches[{index}].layer_{side[0].upper()}: layer {i} "
                f"does not exist; the {side} gives {len(values)} {feature!r} layers (0..{len(values) - 1})")
        if values[i] is None:
            raise ConfigError(
                f"distillation.intermediate_matches[{index}]: the {side}'s adaptor did not capture "
                f"layer {i} of {feature!r}; an adaptor must fill every layer named in FeatureNeeds")
    return [values[i] for i in picks] if isinstance(layer, list) else values[layer]


def _either(features_S: Features, features_T: Features, key: str) -> Any:
    """The student's ``key`` where it has one (not None), else the teacher's."""
    value = features_S.get(key)
    return features_T.get(key) if value is None else value


def _as_list(value: Any, length: int | None = None) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    if length is not None and value is None:
        return [None] * length
    return [value] if length is None or length == 1 else [value] * length


def build_scheduler(spec: str | list[Any], role: str, where: str) -> Any:
    """Resolve a config's scheduler spec into an object with the method ``role``."""
    name, args = (spec, []) if isinstance(spec, str) else (spec[0], list(spec[1:]))
    if name == "none":
        name = "constant"
    try:
        scheduler = lookup("schedulers", name)(*args)
    except TypeError as exc:
        raise ConfigError(f"{where}: scheduler {name!r} does not take arguments {args}: {exc}") from exc
    if not callable(getattr(scheduler, role, None)):
        raise ConfigError(f"{where}: scheduler {name!r} is not a {role} scheduler")
    return scheduler
