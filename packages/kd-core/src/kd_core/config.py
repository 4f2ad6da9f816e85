"""``TrainingConfig`` and ``DistillationConfig``: TextBrewer's fields and meanings, validated.

A TextBrewer JSON config loads unchanged; kd's own fields extend it. Invalid input raises
:class:`~kd_core.errors.ConfigError` naming the path of the bad field and how to fix it.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kd_core.errors import ConfigError
from kd_core.loggers import LOG_DIR

SchedulerSpec = str | list[Any]
"""A scheduler: a registered name (``"none"`` is constant), or ``[name, *args]`` as in
TextBrewer (``["flsw", 1, 2]``)."""


class _ConfigMeta(type(BaseModel)):
    # Constructing a config with keywords (TextBrewer style) reports ConfigError, like from_dict.
    # Done at the metaclass so nested models, which pydantic validates without calling it,
    # keep their errors in the parent's report with the full field path.
    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as exc:
            raise config_error(exc, cls) from None


class ConfigModel(BaseModel, metaclass=_ConfigMeta):
    """Base of kd's configs: strict fields, and loaders that turn errors into ConfigError."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "") -> ConfigModel:
        """Build from a plain dict (TextBrewer's ``from_dict``)."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise config_error(exc, cls, prefix=where) from None

    @classmethod
    def from_json(cls, path: str | Path) -> ConfigModel:
        """Load from a JSON file."""
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle), where=str(path))

    from_json_file = from_json  # TextBrewer's name

    @classmethod
    def from_yaml(cls, path: str | Path) -> ConfigModel:
        """Load from a YAML file."""
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(yaml.safe_load(handle) or {}, where=str(path))

    def to_dict(self) -> dict[str, Any]:
        """A plain dict that ``from_dict`` turns back into an equal config."""
        return self.model_dump(mode="json", exclude_unset=False)


class TrainingConfig(ConfigModel):
    """How to train: TextBrewer's ``TrainingConfig`` plus kd's extensions.

    TextBrewer fields: ``gradient_accumulation_steps``, ``ckpt_frequency`` (checkpoints per
    epoch), ``ckpt_epoch_frequency`` (every n-th epoch), ``ckpt_steps`` (every n optimizer steps,
    required when training by ``num_steps``), ``log_dir`` (where TensorBoard logs go: setting it
    alone turns on ``report_to: [tensorboard]``, as in TextBrewer), ``output_dir``, ``device``, ``fp16``,
    ``fp16_opt_level`` (accepted, unused: kd uses torch.autocast, not apex), ``data_parallel``,
    ``local_rank``.
    """

    gradient_accumulation_steps: int = Field(1, ge=1)
    ckpt_frequency: int = Field(1, ge=1)
    ckpt_epoch_frequency: int = Field(1, ge=1)
    ckpt_steps: int | None = Field(None, ge=1)
    log_dir: str | None = None
    """Where the trackers of ``report_to`` write (None: ``OUTPUT/logs``)."""
    output_dir: str = "./saved_models"
    device: str = "cpu"
    fp16: bool = False
    fp16_opt_level: str = "O1"
    data_parallel: bool = False
    local_rank: int = -1
    # kd extensions
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast dtype; ``fp16`` uses a GradScaler and needs a GPU. TextBrewer's ``fp16=True``
    means ``mixed_precision="fp16"``."""
    seed: int | None = None
    """Seeds Python, NumPy and torch at the start of training (not on resume)."""
    progress: bool = True
    """Show a progress bar."""
    keep_checkpoints: int | None = Field(None, ge=1)
    """Keep only the newest n checkpoints (all when unset)."""
    skip_nonfinite: bool = False
    """Skip a micro-batch whose loss is NaN or inf (counted as ``skipped_nonfinite`` in
    metrics.jsonl) instead of stopping with an error that names the term."""
    trim_padding: bool = True
    """Cut each batch's padding columns that no example uses before the forward passes
    (:func:`kd_core.features.trim_padding`): batches padded to a fixed length cost only their
    longest example. Exact for models that respect ``attention_mask``."""

    report_to: list[str] = Field(default_factory=list)
    """Experiment trackers that receive every metrics.jsonl record, by registered name
    (:mod:`kd_core.loggers`; ``tensorboard`` is built in, ``kd plugins`` lists the rest)."""
    distributed: Literal["ddp", "fsdp"] = "ddp"
    """How several processes (torchrun) train: ``ddp`` (every process holds the whole student
    and teacher; gradients averaged) or ``fsdp`` (FSDP2: every process holds a shard of the
    student's and the teachers' weights, :mod:`kd_core.sharding`). One process ignores it."""

    @model_validator(mode="after")
    def _fp16_alias(self) -> TrainingConfig:
        if self.fp16 and self.mixed_precision == "no":
            object.__setattr__(self, "mixed_precision", "fp16")
        return self

    @model_validator(mode="after")
    def _textbrewer_log_dir(self) -> TrainingConfig:
        if self.log_dir is not None and not self.report_to:
            object.__setattr__(self, "report_to", ["tensorboard"])
        return self

    @property
    def logs_path(self) -> Path:
        """The folder the trackers write to."""
        return Path(self.log_dir) if self.log_dir is not None else Path(self.output_dir) / LOG_DIR

    @property
    def autocast_dtype(self) -> Any:
        """The torch dtype autocast runs in, or None."""
        import torch

        return {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.mixed_precision]


class IntermediateMatch(ConfigModel):
    """One intermediate-feature term of a distillation (TextBrewer's match dict).

    ``layer_T`` / ``layer_S`` index the feature on each side (a pair ``[i, j]`` for losses that
    take two layers, such as ``nst`` and ``fsp``). ``feature`` names one feature, or a list of
    features read at the same layer and passed to the loss together (``[q, k]`` for the
    attention losses computed from queries and keys). ``proj`` is ``[name, dim_in, dim_out]`` or
    ``[name, dim_in, dim_out, {"learning_rate": lr}]``: a trainable projection of the student's
    feature (dim_in) into the teacher's space (dim_out).
    """

    layer_T: int | list[int]
    layer_S: int | list[int]
    feature: str | list[str]
    loss: str
    weight: float = 1.0
    proj: list[Any] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    """kd extension: keyword arguments passed to the loss."""
    teacher: str | int | None = None
    """kd extension, for several teachers: which teacher's features the match reads (its name, or
    its index in the list of teachers); the first teacher when not set."""

    @field_validator("layer_T", "layer_S")
    @classmethod
    def _layers(cls, value: int | list[int]) -> int | list[int]:
        if isinstance(value, list) and len(value) != 2:
            raise ValueError(
                f"a layer pair must have exactly two entries [X0, X1], got {value}; "
                "use a single integer for losses that read one layer"
            )
        return value

    @field_validator("feature")
    @classmethod
    def _feature(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) < 2:
            raise ValueError(f"a list of features needs at least two names, got {value}; "
                             "write a single feature as a string")
        return value

    @model_validator(mode="after")
    def _pairs_or_features(self) -> IntermediateMatch:
        if isinstance(self.feature, list) and (isinstance(self.layer_T, list) or isinstance(self.layer_S, list)):
            raise ValueError(f"feature {self.feature} reads several features at one layer; "
                             "it cannot be combined with layer pairs")
        return self

    @field_validator("proj")
    @classmethod
    def _proj(cls, value: list[Any] | None) -> list[Any] | None:
        if value is None:
            return None
        hint = 'write it as [name, dim_in, dim_out] or [name, dim_in, dim_out, {"learning_rate": lr}]'
        if len(value) not in (3, 4) or not isinstance(value[0], str):
            raise ValueError(f"proj {value!r} is malformed; {hint}")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value[1:3]):
            raise ValueError(f"proj dimensions must be positive integers, got {value[1:3]}; {hint}")
        if len(value) == 4 and not isinstance(value[3], dict):
            raise ValueError(f"the fourth entry of proj must be a dict of options; {hint}")
        return value

    @property
    def proj_options(self) -> dict[str, Any]:
        """The projection's optimizer options (``learning_rate``, ...), empty if none."""
        return dict(self.proj[3]) if self.proj is not None and len(self.proj) == 4 else {}


class DistillationConfig(ConfigModel):
    """What to distill: TextBrewer's ``DistillationConfig`` plus kd's extensions.

    The total loss is ``kd_loss_weight * kd_loss(logits_S, logits_T, temperature)
    + hard_label_weight * hard_label_loss + sum(match.weight * match_loss)``, each weight
    optionally scheduled over training.
    """

    temperature: float = Field(4.0, gt=0)
    temperature_scheduler: SchedulerSpec = "none"
    hard_label_weight: float = 0.0
    hard_label_weight_scheduler: SchedulerSpec = "none"
    kd_loss_type: str = "ce"
    kd_loss_weight: float = 1.0
    kd_loss_weight_scheduler: SchedulerSpec = "none"
    kd_loss_params: dict[str, Any] = Field(default_factory=dict)
    """kd extension: keyword arguments of the logit loss (``{beta: 0.3}`` for ``jsd``)."""
    probability_shift: bool = False
    fused_linear: bool = False
    """kd extension: the logit loss and the hard-label loss take the student's and the teacher's
    last hidden states and LM heads instead of their logits (:class:`~kd_core.features.LinearLogits`,
    ``kd_kernels.fused_linear``), so no [N, V] logits exist in training: decoder LMs over large
    vocabularies (task ``causal_lm``), with ``kl``, ``ce``, ``reverse_kl`` or ``jsd``. The teacher
    runs in every step (no teacher cache), the temperature is constant, no probability shift."""
    intermediate_matches: list[IntermediateMatch] | None = None
    is_caching_logits: bool = False
    """TextBrewer's switch: keep the teacher's outputs in memory after the first epoch."""
    teacher_cache_dir: str | None = None
    """kd extension: keep the teacher's outputs in this directory, reused across epochs and runs."""
    teacher_ensemble: Literal["logits", "probabilities"] = "logits"
    """kd extension, for several teachers: average their logits (TextBrewer) or their
    temperature-softened probabilities (exact at a constant temperature)."""
    teacher_weights: list[float] | None = None
    """kd extension, for several teachers: weights of the average (normalised to sum to 1)."""
    teacher_cache_top_k: int | None = Field(None, ge=1)
    """kd extension: store only the top k logits per row (plus the remaining mass) in the cache."""

    @model_validator(mode="after")
    def _cache(self) -> DistillationConfig:
        if self.teacher_cache_top_k is not None and not (self.is_caching_logits or self.teacher_cache_dir):
            raise ValueError("teacher_cache_top_k compresses cached logits; also set is_caching_logits: true "
                             "or teacher_cache_dir")
        if self.fused_linear:
            refused = [what for what, present in (
                ("a teacher cache (is_caching_logits, teacher_cache_dir), which stores logits",
                 self.is_caching_logits or self.teacher_cache_dir is not None),
                ("probability_shift, which moves logits", self.probability_shift),
                ("a temperature_scheduler, which reads logits", self.temperature_scheduler != "none")) if present]
            if refused:
                raise ValueError(f"fused_linear never makes the logits, so it cannot be combined with "
                                 f"{'; '.join(refused)}")
        return self


def config_error(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> ConfigError:
    """Turn a pydantic ValidationError into a ConfigError with field paths and fixes."""
    lines = []
    for error in exc.errors():
        path = _path(error["loc"])
        where = f"{prefix}: {path}" if prefix and path else (prefix or path or model.__name__)
        if error["type"] == "extra_forbidden":
            field = str(error["loc"][-1])
            owner = _owner_model(model, error["loc"][:-1])
            allowed = sorted(owner.model_fields) if owner else []
            close = difflib.get_close_matches(field, allowed, n=1)
            fix = f"did you mean {close[0]!r}?" if close else f"allowed fields: {', '.join(allowed)}"
            lines.append(f"{where}: unknown field {field!r}; {fix}")
        elif error["type"] == "missing":
            lines.append(f"{where}: required field is missing")
        else:
            message = error["msg"].removeprefix("Value error, ")
            shown = repr(error.get("input"))
            got = f" (got {shown})" if len(shown) <= 80 and shown not in message else ""
            lines.append(f"{where}: {message}{got}")
    noun = "error" if len(lines) == 1 else "errors"
    return ConfigError(f"invalid {model.__name__} ({len(lines)} {noun}):\n  " + "\n  ".join(lines))


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part) in ("int", "list[int]", "str", "list[str]", "list[any]",
                           "function-after[_layers(), int]"):
            continue  # pydantic's union-member labels are noise in a field path
        else:
            out += f".{part}" if out else str(part)
    return out


def _owner_model(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return None
        current = _model_in(field.annotation)
        if current is None:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None
