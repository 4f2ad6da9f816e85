"""A multi-task student: one Hugging Face encoder with a classification head per task.

``MultiHeadForSequenceClassification(config)`` holds the encoder built from ``config.encoder``
(a config dict of any ``transformers`` encoder) and, per task in ``config.tasks`` (name ->
number of labels), a dropout and a linear head over the [CLS] state. ``forward(..., task=name)``
returns that task's logits (and its loss with ``labels``). It saves and loads with
``save_pretrained`` / ``from_pretrained`` and the Auto classes, like any student.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from kd_core.errors import ConfigError


class MultiHeadConfig(PretrainedConfig):
    """``encoder``: the encoder's config as a dict (with its ``model_type``); ``tasks``: task name ->
    number of labels; ``classifier_dropout``: dropout before each head."""

    model_type = "kd_multihead"

    def __init__(self, encoder: dict[str, Any] | None = None, tasks: dict[str, int] | None = None,
                 classifier_dropout: float = 0.1, **kwargs: Any) -> None:
        self.encoder = dict(encoder or {})
        self.tasks = dict(tasks or {})
        self.classifier_dropout = classifier_dropout
        super().__init__(**kwargs)

    @property
    def encoder_config(self) -> PretrainedConfig:
        """The encoder's own config object."""
        settings = dict(self.encoder)
        return AutoConfig.for_model(settings.pop("model_type"), **settings)


class MultiHeadForSequenceClassification(PreTrainedModel):
    """A shared encoder and one sequence-classification head per task."""

    config_class = MultiHeadConfig
    base_model_prefix = "encoder"

    def __init__(self, config: MultiHeadConfig) -> None:
        super().__init__(config)
        self.encoder = AutoModel.from_config(config.encoder_config, add_pooling_layer=False)
        width = self.encoder.config.hidden_size
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(width, labels) for name, labels in config.tasks.items()})
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear) and any(module is head for head in self.heads.values()):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, task: str | None = None,
                labels: torch.Tensor | None = None, output_hidden_states: bool = False,
                output_attentions: bool = False, return_dict: bool = True, **unused: Any) -> SequenceClassifierOutput:
        if task not in self.heads:
            raise ConfigError(f"task {task!r} has no head; this student's tasks are {', '.join(self.heads)}")
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        outputs = self.encoder(**inputs, output_hidden_states=output_hidden_states,
                               output_attentions=output_attentions, return_dict=True)
        logits = self.heads[task](self.dropout(outputs.last_hidden_state[:, 0]))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                        attentions=outputs.attentions)


AutoConfig.register(MultiHeadConfig.model_type, MultiHeadConfig, exist_ok=True)
AutoModelForSequenceClassification.register(MultiHeadConfig, MultiHeadForSequenceClassification, exist_ok=True)
