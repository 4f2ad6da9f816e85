"""Student presets (TextBrewer's Table 3) and the BiLSTM/BiGRU students (Tang et al. 2019)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kd_core import ConfigError, FeatureNeeds, lookup
from kd_models import BiRNNForSequenceClassification, BiRNNForTokenClassification
from tests.models.tiny import tiny_batch, tiny_model

TABLE_3 = {  # TextBrewer paper, Table 3: layers, hidden, FFN, heads
    "T6": (6, 768, 3072, 12), "T3": (3, 768, 3072, 12), "T3-small": (3, 384, 1536, 12), "T4-tiny": (4, 312, 1200, 12),
}


@pytest.mark.parametrize("preset", sorted(TABLE_3))
def test_presets_have_textbrewers_shapes_and_the_teachers_vocabulary(preset: str) -> None:
    teacher = tiny_model("bert", num_labels=3)
    student = lookup("students", preset)(teacher)
    config = student.config
    assert type(student) is type(teacher)
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size,
            config.num_attention_heads) == TABLE_3[preset]
    assert (config.vocab_size, config.num_labels) == (teacher.config.vocab_size, 3)


def test_presets_follow_the_teachers_family_and_take_overrides() -> None:
    student = lookup("students", "T4-tiny")(tiny_model("distilbert"), n_layers=2)
    assert (student.config.n_layers, student.config.dim, student.config.hidden_dim) == (2, 312, 1200)
    with pytest.raises(ConfigError, match=r"student\.config: not fields of the teacher's BertConfig: num_layerz"):
        lookup("students", "T3")(tiny_model("bert"), num_layerz=2)


@pytest.mark.parametrize(("preset", "cell"), [("bilstm", torch.nn.LSTM), ("bigru", torch.nn.GRU)])
@pytest.mark.parametrize("head", ["sequence", "token"])
def test_rnn_students_start_from_the_teachers_embeddings(preset: str, cell: type, head: str) -> None:
    teacher = tiny_model("bert", head=head)
    student = lookup("students", preset)(teacher, hidden_size=24).eval()
    expected = BiRNNForTokenClassification if head == "token" else BiRNNForSequenceClassification
    assert isinstance(student, expected) and isinstance(student.encoder.rnn, cell)
    assert torch.equal(student.encoder.embeddings.weight, teacher.get_input_embeddings().weight)
    batch = tiny_batch(labels=head)
    out = student(**batch)
    assert out.logits.shape == ((2, 7, 2) if head == "token" else (2, 2)) and out.loss.ndim == 0


@pytest.mark.parametrize("pooling", ["max", "mean", "last"])
def test_rnn_students_ignore_padding(pooling: str) -> None:
    student = lookup("students", "bilstm")(tiny_model("bert"), hidden_size=8, pooling=pooling).eval()
    batch = tiny_batch()
    short = {k: v[1:2, :4] for k, v in batch.items()}  # the padded example without its padding
    torch.testing.assert_close(student(**batch).logits[1:2], student(**short).logits)


def test_frozen_embeddings_get_no_gradient() -> None:
    student = lookup("students", "bilstm")(tiny_model("bert"), freeze_embeddings=True)
    student(**tiny_batch(labels="sequence")).loss.backward()
    assert student.encoder.embeddings.weight.grad is None
    assert student.encoder.rnn.weight_ih_l0.grad is not None


@pytest.mark.parametrize("head", ["sequence", "token"])
def test_rnn_students_save_and_load_with_the_auto_classes(tmp_path: Path, head: str) -> None:
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    student = lookup("students", "bigru")(tiny_model("bert", head=head), hidden_size=8, num_layers=2).eval()
    student.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    auto = AutoModelForTokenClassification if head == "token" else AutoModelForSequenceClassification
    loaded = auto.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(student) and loaded.config.cell == "gru" and loaded.config.num_layers == 2
    batch = tiny_batch()
    torch.testing.assert_close(loaded(**batch).logits, student(**batch).logits, rtol=0, atol=0)


def test_rnn_adaptor_gives_hidden_states_and_refuses_attention() -> None:
    student = lookup("students", "bilstm")(tiny_model("bert", head="token"), hidden_size=8)
    adaptor = lookup("tasks", "sequence_classification").adaptor(student)
    assert type(adaptor).__name__ == "RNNAdaptor"
    features = adaptor.run(student, tiny_batch(labels="token"), FeatureNeeds({"hidden": {1}}))
    assert [h.shape for h in features["hidden"]] == [(2, 7, 32), (2, 7, 16)]
    assert torch.equal(features["logits_mask"], tiny_batch()["attention_mask"])
    with pytest.raises(ConfigError, match="has no attention, so it cannot give q, attention"):
        adaptor.run(student, tiny_batch(), FeatureNeeds({"q": {0}, "attention": {0}}))


def test_rnn_students_reject_unknown_options_and_left_padding() -> None:
    teacher = tiny_model("bert")
    with pytest.raises(ConfigError, match="hiden_size cannot be set on a lstm student"):
        lookup("students", "bilstm")(teacher, hiden_size=3)
    student = lookup("students", "bilstm")(teacher, hidden_size=4)
    with pytest.raises(ValueError, match="right-padded"):
        student(input_ids=torch.ones(1, 3, dtype=torch.long), attention_mask=torch.tensor([[0, 1, 1]]))
