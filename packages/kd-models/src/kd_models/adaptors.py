"""The Hugging Face adaptor: Features from ``transformers`` encoders."""

from __future__ import annotations

from typing import Any

from torch import nn

from kd_core.features import Adaptor, FeatureNeeds, Features
from kd_models.attention_capture import QKV, attention_probabilities, attention_scores, capture_qkv

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds")
ATTENTION_FEATURES = ("attention", "attention_scores")


class HFAdaptor(Adaptor):
    """Runs a ``transformers`` model on a tokenized batch and returns its Features.

    Always: ``logits``, ``labels`` (from the batch), ``inputs_mask`` (the attention mask), and
    for token classification ``logits_mask``. Only when the loss plan reads them: ``hidden``
    (embeddings, then every layer), per-layer ``q``, ``k``, ``v`` [B, H, L, d] captured by hooks
    on the layers read, ``attention_scores`` (``Q K^T / sqrt(d)``, unmasked) and ``attention``
    (their softmax over the real keys), the last two computed from the captured Q and K, which
    reproduces the model's attention for BERT-style absolute-position self-attention.
    Per-layer lists hold None at layers nobody reads.
    """

    def __init__(self, token_level: bool = False) -> None:
        self.token_level = token_level

    def run(self, model: nn.Module, batch: Any, needs: FeatureNeeds) -> Features:
        inputs = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
        wanted: dict[str, set[int]] = {f: set(needs.layers[f]) for f in QKV if f in needs}
        for feature in ATTENTION_FEATURES:
            if feature in needs:
                for qk in ("q", "k"):
                    wanted.setdefault(qk, set()).update(needs.layers[feature])
        if not wanted:
            return self(batch, model(**inputs, output_hidden_states="hidden" in needs, return_dict=True))
        with capture_qkv(model, wanted) as captured:
            outputs = model(**inputs, output_hidden_states="hidden" in needs, return_dict=True)
        features = self(batch, outputs)
        features.update({f: captured[f] for f in QKV if f in needs})
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
        mask = batch.get("attention_mask")
        features: Features = {
            "logits": model_outputs.logits,
            "labels": batch.get("labels"),
            "inputs_mask": mask,
            "logits_mask": mask if self.token_level else None,
        }
        if getattr(model_outputs, "hidden_states", None) is not None:
            features["hidden"] = model_outputs.hidden_states
        if getattr(model_outputs, "attentions", None) is not None:
            features["attention"] = model_outputs.attentions
        if getattr(model_outputs, "loss", None) is not None:
            features["losses"] = [model_outputs.loss]
        return features
