"""BiLSTM / BiGRU students (Tang et al. 2019, "Distilling Task-Specific Knowledge from BERT into
Simple Neural Networks").

Word embeddings (initialised from the teacher's, optionally frozen), a bidirectional recurrent
encoder over the real tokens, then for sequence classification a pooling over time and an MLP
head, for token classification a linear layer per token. They are Hugging Face ``PreTrainedModel``
classes registered with the Auto classes, so they save and load with ``save_pretrained`` /
``from_pretrained`` (safetensors) like any other student.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput

from kd_core.errors import ConfigError

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
POOLINGS = ("max", "mean", "last")


class BiRNNConfig(PretrainedConfig):
    """Configuration of a BiLSTM/BiGRU student.

    ``hidden_size`` is per direction (the encoder's output is twice as wide); ``classifier_size``
    is the width of the sequence head's hidden layer (Tang et al.: 400, ReLU).
    """

    model_type = "kd_birnn"

    def __init__(self, vocab_size: int = 30522, embedding_size: int = 300, hidden_size: int = 300,
                 num_layers: int = 1, cell: Literal["lstm", "gru"] = "lstm",
                 pooling: Literal["max", "mean", "last"] = "max", classifier_size: int = 400,
                 dropout: float = 0.1, freeze_embeddings: bool = False, pad_token_id: int = 0,
                 **kwargs: Any) -> None:
        if cell not in CELLS:
            raise ConfigError(f"BiRNN cell must be one of {', '.join(CELLS)}, got {cell!r}")
        if pooling not in POOLINGS:
            raise ConfigError(f"BiRNN pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.cell = cell
        self.pooling = pooling
        self.classifier_size = classifier_size
        self.dropout = dropout
        self.freeze_embeddings = freeze_embeddings
        super().__init__(pad_token_id=pad_token_id, **kwargs)


class BiRNNPreTrainedModel(PreTrainedModel):
    """Shared base: the config class and weight initialisation of the BiRNN students."""

    config_class = BiRNNConfig
    base_model_prefix = "encoder"

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)


class BiRNNEncoder(nn.Module):
    """Embeddings and the bidirectional RNN; returns ``(embeddings, states)`` [B, L, E], [B, L, 2H]."""

    def __init__(self, config: BiRNNConfig) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx=config.pad_token_id)
        self.embeddings.weight.requires_grad_(not config.freeze_embeddings)
        self.rnn = CELLS[config.cell](config.embedding_size, config.hidden_size, num_layers=config.num_layers,
                                      batch_first=True, bidirectional=True,
                                      dropout=config.dropout if config.num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedded = self.dropout(self.embeddings(input_ids))
        lengths = attention_mask.sum(-1).clamp(min=1).cpu()
        packed = pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False)
        states, _ = self.rnn(packed)
        states, _ = pad_packed_sequence(states, batch_first=True, total_length=input_ids.shape[1])
        return embedded, states


def _mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if attention_mask is None:
        return torch.ones_like(input_ids)
    if (attention_mask[:, 1:] > attention_mask[:, :-1]).any():
        raise ValueError("BiRNN students need right-padded batches (real tokens first, then padding)")
    return attention_mask


def _pool(states: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    real = mask.bool().unsqueeze(-1)
    if how == "max":
        return states.masked_fill(~real, torch.finfo(states.dtype).min).amax(1)
    if how == "mean":
        return (states * real).sum(1) / real.sum(1).clamp(min=1)
    half = states.shape[-1] // 2
    last = (mask.sum(-1) - 1).clamp(min=0)
    forward_last = states[torch.arange(states.shape[0]), last, :half]
    return torch.cat([forward_last, states[:, 0, half:]], -1)


class BiRNNForSequenceClassification(BiRNNPreTrainedModel):
    """BiLSTM/BiGRU sentence classifier: pooled states -> Linear -> ReLU -> Linear."""

    def __init__(self, config: BiRNNConfig) -> None:
        super().__init__(config)
        self.encoder = BiRNNEncoder(config)
        self.classifier = nn.Sequential(
            nn.Linear(2 * config.hidden_size, config.classifier_size), nn.ReLU(), nn.Dropout(config.dropout),
            nn.Linear(config.classifier_size, config.num_labels))
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, output_hidden_states: bool = False,
                return_dict: bool = True, **unused: Any) -> SequenceClassifierOutput:
        mask = _mask(input_ids, attention_mask)
        embedded, states = self.encoder(input_ids, mask)
        logits = self.classifier(_pool(states, mask, self.config.pooling))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits,
                                        hidden_states=(embedded, states) if output_hidden_states else None)


class BiRNNForTokenClassification(BiRNNPreTrainedModel):
    """BiLSTM/BiGRU tagger: one Linear over each token's state (labels -100 are ignored)."""

    def __init__(self, config: BiRNNConfig) -> None:
        super().__init__(config)
        self.encoder = BiRNNEncoder(config)
        self.classifier = nn.Linear(2 * config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, output_hidden_states: bool = False,
                return_dict: bool = True, **unused: Any) -> TokenClassifierOutput:
        mask = _mask(input_ids, attention_mask)
        embedded, states = self.encoder(input_ids, mask)
        logits = self.classifier(self.encoder.dropout(states))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        return TokenClassifierOutput(loss=loss, logits=logits,
                                     hidden_states=(embedded, states) if output_hidden_states else None)


AutoConfig.register(BiRNNConfig.model_type, BiRNNConfig, exist_ok=True)
AutoModelForSequenceClassification.register(BiRNNConfig, BiRNNForSequenceClassification, exist_ok=True)
AutoModelForTokenClassification.register(BiRNNConfig, BiRNNForTokenClassification, exist_ok=True)
