"""Adaptors for Hugging Face models: Features from encoders (``hf``) and from BiRNN students (``rnn``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from kd_core.errors import ConfigError
from kd_core.features import TEACHER_LOGITS, Adaptor, FeatureNeeds, Features
from kd_models.attention_capture import QKV, attention_probabilities, attention_scores, capture_qkv

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds")
ATTENTION_FEATURES = ("attention", "attention_scores")
RELATIVE_POSITION_TYPES = frozenset({"mpnet", "deberta", "deberta-v2"})
"""Families whose attention adds position terms to ``Q K^T`` (MPNet's relative bias, DeBERTa's
disentangled attention): their ``attention`` comes from the model's own eager attention maps."""


def encoder_type(model: nn.Module) -> str | None:
    """The model_type of the model's encoder (of the shared encoder, for a multi-head student)."""
    config = getattr(model, "config", None)
    encoder = getattr(config, "encoder", None)
    return encoder.get("model_type") if isinstance(encoder, dict) else getattr(config, "model_type", None)


def attention_from_qk(model: nn.Module) -> bool:
    """Whether ``softmax(Q K^T / sqrt(d))`` over the real keys is the model's attention."""
    return encoder_type(model) not in RELATIVE_POSITION_TYPES


class HFAdaptor(Adaptor):
    """Runs a ``transformers`` encoder (BERT, RoBERTa, DistilBERT, ELECTRA, MPNet, DeBERTa-v2, ...)
    with a sequence- or token-classification head on a tokenized batch and returns its Features.

    Always: ``logits``, ``labels`` (from the batch), ``inputs_mask`` (the attention mask), and for
    token-level logits [B, L, C] ``logits_mask`` (the attention mask). Only when the loss plan
    reads them: ``hidden`` (embeddings, then every layer); per-layer ``q``, ``k``, ``v``
    [B, H, L, d] captured by hooks on the Q/K/V projections of the layers read, so they work under
    SDPA; ``attention_scores`` (``Q K^T / sqrt(d)``, unmasked) and ``attention`` (their softmax over
    the real keys), computed from the captured Q and K, which is the model's own attention for
    absolute-position families. For MPNet and DeBERTa, whose attention adds position terms,
    ``attention`` is the model's eager ``output_attentions`` and ``attention_scores`` is refused.
    Per-layer lists hold None at layers nobody reads. ``model_kwargs`` are passed to every call
    (``{"task": "sst2"}`` picks a multi-head student's head).
    """

    def __init__(self, model_kwargs: dict[str, Any] | None = None) -> None:
        self.model_kwargs = dict(model_kwargs or {})

    def run(self, model: nn.Module, batch: Any, needs: FeatureNeeds) -> Features:
        inputs = {**{k: v for k, v in batch.items() if k in MODEL_INPUTS}, **self.model_kwargs}
        from_qk = attention_from_qk(model)
        wanted: dict[str, set[int]] = {f: set(needs.layers[f]) for f in QKV if f in needs}
        if from_qk:
            for feature in ATTENTION_FEATURES:
                if feature in needs:
                    for qk in ("q", "k"):
                        wanted.setdefault(qk, set()).update(needs.layers[feature])
        elif "attention_scores" in needs:
            raise ConfigError(f"{encoder_type(model)} adds relative-position terms to its attention scores, so "
                              "Q K^T / sqrt(d) is not its score; distil 'attention' (its own attention maps) instead")
        options = {"output_hidden_states": "hidden" in needs, "return_dict": True}
        if "attention" in needs and not from_qk:
            options["output_attentions"] = True
        if not wanted:
            return self(batch, model(**inputs, **options))
        with capture_qkv(model, wanted) as captured:
            outputs = model(**inputs, **options)
        features = self(batch, outputs)
        features.update({f: captured[f] for f in QKV if f in needs})
        if from_qk:
            layers = len(captured["q"]) if "q" in captured else 0
            for feature in ATTENTION_FEATURES:
                if feature in needs:
                    maps: list[Any] = [None] * layers
                    for position in {i % layers for i in needs.layers[feature]}:
                        q, k = captured["q"][position], captured["k"][position]
                        maps[position] = (attention_scores(q, k) if feature == "attention_scores"
                                          else attention_probabilities(q, k, features["inputs_mask"]))
                    features[feature] = maps
        return features

    def __call__(self, batch: Any, model_outputs: Any) -> Features:
        logits, logits_mask = self.head_logits(batch, model_outputs)
        features: Features = {
            "logits": logits,
            "labels": batch.get("labels"),
            "inputs_mask": batch.get("attention_mask"),
            "logits_mask": logits_mask,
        }
        if getattr(model_outputs, "hidden_states", None) is not None:
            features["hidden"] = model_outputs.hidden_states
        if getattr(model_outputs, "attentions", None) is not None:
            features["attention"] = model_outputs.attentions
        if getattr(model_outputs, "loss", None) is not None:
            features["losses"] = [model_outputs.loss]
        return features

    def masks(self, batch: Any) -> Features:
        """``inputs_mask`` (the attention mask) and ``labels`` of the batch, and ``logits_mask`` when
        the batch tells whether the head is token-level: token labels [B, L] or stored token-level
        teacher logits [B, L, C] (the attention mask), or labels [B] (None: one row per example)."""
        if not isinstance(batch, Mapping):
            return {}
        masks: Features = {"inputs_mask": batch.get("attention_mask"), "labels": batch.get("labels")}
        labels, stored = batch.get("labels"), batch.get(TEACHER_LOGITS)
        if labels is not None or stored is not None:
            token_level = labels.dim() == 2 if labels is not None else stored.dim() == 3
            masks["logits_mask"] = batch.get("attention_mask") if token_level else None
        return masks

    def head_logits(self, batch: Any, model_outputs: Any) -> tuple[Any, Any]:
        """The task head's ``logits`` and their ``logits_mask`` (the attention mask for
        token-level logits [B, L, C]; None for one row per example)."""
        logits = getattr(model_outputs, "logits", None)
        if logits is None:
            found = ", ".join(k for k in getattr(model_outputs, "keys", lambda: [])()) or type(model_outputs).__name__
            raise ConfigError(
                f"the hf adaptor found no 'logits' in the model's outputs (it has: {found}); it expects a Hugging "
                "Face *ForSequenceClassification / *ForTokenClassification model. For another model write an adaptor "
                "(a kd_core.Adaptor, or a function adaptor(batch, outputs) -> dict with 'logits', 'hidden', ...)")
        return logits, batch.get("attention_mask") if logits.dim() == 3 else None


class RNNAdaptor(HFAdaptor):
    """Features of kd's BiLSTM/BiGRU students: ``logits``, ``labels``, ``inputs_mask``,
    ``logits_mask`` (token level) and ``hidden`` = [embeddings [B, L, E], RNN states [B, L, 2H]].

    They have no attention, so a loss plan that reads q, k, v or attention from them fails here.
    """

    def run(self, model: nn.Module, batch: Any, needs: FeatureNeeds) -> Features:
        unavailable = [f for f in (*QKV, *ATTENTION_FEATURES) if f in needs]
        if unavailable:
            raise ConfigError(f"the {type(model).__name__} student has no attention, so it cannot give "
                              f"{', '.join(unavailable)}; match its 'hidden' states or its logits instead")
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        return self(batch, model(**inputs, output_hidden_states="hidden" in needs))
