"""kd's adaptors say their masks before a model runs (``Adaptor.masks``), and what they say is
what the features of the forward pass hold: the engine counts a step's items from them."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import AutoModelForQuestionAnswering, BertForMaskedLM

from kd_core.features import TEACHER_LOGITS, Adaptor, FeatureNeeds
from kd_models.adaptors import HFAdaptor
from kd_models.causal_lm import CausalLMAdaptor
from kd_models.general import GeneralAdaptor
from kd_models.question_answering import QuestionAnsweringAdaptor
from tests.models.tiny import tiny_batch, tiny_config, tiny_llama, tiny_model

LOGITS = FeatureNeeds({"logits": set()})


def _same(said: Any, given: Any) -> bool:
    if said is None or given is None:
        return said is None and given is None
    return torch.equal(said, given)


def _check(adaptor: Adaptor, model: torch.nn.Module, batch: dict[str, torch.Tensor], keys: set[str]) -> None:
    said = adaptor.masks(batch)
    assert set(said) == keys
    with torch.no_grad():
        features = adaptor.run(model, batch, LOGITS)
    for key in keys:
        assert _same(said[key], features.get(key)), key


def test_sequence_and_token_classification() -> None:
    all_masks = {"inputs_mask", "labels", "logits_mask"}
    _check(HFAdaptor(), tiny_model("bert"), tiny_batch(labels="sequence"), all_masks)
    _check(HFAdaptor(), tiny_model("bert", head="token"), tiny_batch(labels="token"), all_masks)
    assert HFAdaptor().masks(tiny_batch(labels="sequence"))["logits_mask"] is None


def test_stored_teacher_logits_tell_the_level_without_labels() -> None:
    batch = tiny_batch()
    assert "logits_mask" not in HFAdaptor().masks(batch), "without labels the head's level is unknown"
    token_level = {**batch, TEACHER_LOGITS: torch.zeros(2, 7, 3)}
    assert torch.equal(HFAdaptor().masks(token_level)["logits_mask"], batch["attention_mask"])
    assert HFAdaptor().masks({**batch, TEACHER_LOGITS: torch.zeros(2, 3)})["logits_mask"] is None


def test_span_heads() -> None:
    torch.manual_seed(0)
    model = AutoModelForQuestionAnswering.from_config(tiny_config("bert")).eval()
    batch = tiny_batch()
    batch["context_mask"] = batch["attention_mask"].clone()
    batch["context_mask"][:, :2] = 0
    batch["labels"] = torch.tensor([[3, 4], [2, 2]])
    _check(QuestionAnsweringAdaptor(), model, batch, {"inputs_mask", "labels", "logits_mask"})


@pytest.mark.parametrize("labelled", [True, False])
def test_masked_lm_heads(labelled: bool) -> None:
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_config("bert")).eval()
    batch = tiny_batch()
    if labelled:
        batch["labels"] = batch["input_ids"].masked_fill(torch.rand(2, 7, generator=torch.Generator().manual_seed(1))
                                                         > 0.3, -100)
    _check(GeneralAdaptor(), model, batch, {"inputs_mask", "labels", "logits_mask"})


def test_causal_lms_learn_the_next_token_of_real_positions() -> None:
    batch = tiny_batch()
    _check(CausalLMAdaptor(), tiny_llama(100), batch, {"inputs_mask", "labels", "logits_mask"})
    said = CausalLMAdaptor().masks(batch)
    assert said["logits_mask"].sum(1).tolist() == [6, 3], "the last real token of each row has no next token"
