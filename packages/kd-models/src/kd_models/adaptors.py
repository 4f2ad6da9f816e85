"""The Hugging Face adaptor: Features from any ``transformers`` model's outputs."""

from __future__ import annotations

from typing import Any

from torch import nn

from kd_core.features import Adaptor, FeatureNeeds, Features

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds")


class HFAdaptor(Adaptor):
    """Runs a ``transformers`` model on a tokenized batch and returns its Features.

    Gives ``logits``, ``labels`` (from the batch), ``inputs_mask`` (the attention mask) and,
    only when the loss plan reads them, ``hidden`` (embeddings then every layer) and
    ``attention``. For token classification the logits mask is the attention mask.
    """

    def __init__(self, token_level: bool = False) -> None:
        self.token_level = token_level

    def run(self, model: nn.Module, batch: Any, needs: FeatureNeeds) -> Features:
        inputs = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
        outputs = model(**inputs, output_hidden_states="hidden" in needs,
                        output_attentions="attention" in needs, return_dict=True)
        return self(batch, outputs)

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
