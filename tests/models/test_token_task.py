"""The token_classification task: CoNLL files read as sentences, one tag per word on its first
piece, entity-level F1 as conlleval counts it, and a teacher fine-tuned and distilled on WNUT-16."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from kd_core.cli import build_cli
from kd_core.data import read_records
from kd_core.errors import ConfigError
from kd_core.metrics import entity_f1, entity_spans
from kd_core.schema import DataFile, DataSpec, ModelSpec
from kd_core.tasks import get_task, prepare_data

WNUT = Path(__file__).resolve().parents[2] / "examples" / "data" / "wnut16" / "train.txt"
TYPES = ("company", "facility", "geo-loc", "movie", "musicartist", "other", "person", "product", "sportsteam",
         "tvshow")
WNUT_TAGS = ["O", *(f"{p}-{t}" for t in TYPES for p in ("B", "I"))]


def test_entity_spans_follow_conlleval() -> None:
    assert entity_spans(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 1), ("LOC", 3, 3)}
    assert entity_spans(["I-PER", "I-PER", "I-LOC", "B-LOC", "I-LOC"]) == {("PER", 0, 1), ("LOC", 2, 2),
                                                                              ("LOC", 3, 4)}
    assert entity_spans(["O", "O"]) == set()
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["O"]]  # 1 right of 2 predicted and 3 expected
    assert entity_f1(pred, gold) == pytest.approx(2 * 1 / (2 + 3))
    assert entity_f1([["B-PER", "O"]], [["B-PER", "I-PER"]]) == 0.0, "a wrong end is a miss"
    assert entity_spans(["B-PER", "B-PER", "O", "I-LOC", "I-PER"]) == {("PER", 0, 0), ("PER", 1, 1), ("LOC", 3, 3),
                                                                      ("PER", 4, 4)}


def test_measure_scores_each_words_tag_only(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    from kd_core.measure import measure
    from kd_core.schema import Recipe
    from kd_core.tasks import PreparedData

    class Fixed(torch.nn.Module):
        """Predicts tag 1 (B-company) everywhere; the config names the tags."""

        def __init__(self) -> None:
            super().__init__()
            self.config = type("Config", (), {"id2label": dict(enumerate(WNUT_TAGS))})()
            self.weight = torch.nn.Parameter(torch.zeros(1))

    class Adaptor:
        def run(self, model, batch, needs):
            logits = torch.zeros(*batch["labels"].shape, len(WNUT_TAGS))
            logits[..., 1] = 1
            return {"logits": logits, "labels": batch["labels"], "logits_mask": batch["attention_mask"]}

    # word tags: [B-company, O] and [B-company]; -100 marks special tokens and second pieces
    batch = {"labels": torch.tensor([[-100, 1, -100, 0, -100], [-100, 1, -100, -100, -100]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])}
    data = PreparedData(train=[0], eval=[0], collate=lambda _: batch)
    recipe = Recipe.from_dict({"task": "token_classification", "data": {"train": {"path": "x", "text": "t"}},
                               "teacher": {"model": "x"}, "training": {"num_steps": 1},
                               "eval": {"metric": "entity_f1"}})
    task = get_task("token_classification")
    # predicted entities: (company, 0, 0), (company, 1, 1) in sentence 1 and (company, 0, 0) in 2; gold: 2 of them
    assert measure(task, Fixed(), Adaptor(), data, recipe)["value"] == pytest.approx(2 * 2 / (3 + 2))
    accuracy = recipe.model_copy(update={"eval": recipe.eval.model_copy(update={"metric": "accuracy"})})
    assert measure(task, Fixed(), Adaptor(), data, accuracy)["value"] == pytest.approx(2 / 3)


def test_words_cut_off_by_max_length_are_reported(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"tokens": ["word"] * 30, "tags": ["O"] * 30}) + "\n")
    task = get_task("token_classification")
    with pytest.warns(UserWarning, match="cuts off 22 words of 30"):
        prepare_data(task, DataSpec(train=DataFile(path=str(path), text="tokens", label="tags"), max_length=10),
                          ModelSpec(model=str(tiny_teacher_dir), labels=WNUT_TAGS), None)


def test_a_trained_head_must_match_the_recipes_classes(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    with pytest.raises(ConfigError, match="was trained with the classes"):
        get_task("sequence_classification").load_teacher(ModelSpec(model=str(tiny_teacher_dir), num_labels=3))


def test_conll_file_reads_as_sentences(tmp_path: Path) -> None:
    path = tmp_path / "tiny.txt"
    path.write_text("New\tB-loc\nYork\tI-loc\n\t\nhi\tO\n\n\nthere\tO\n")
    assert read_records(path, format="conll") == [
        {"tokens": ["New", "York"], "tags": ["B-loc", "I-loc"]}, {"tokens": ["hi"], "tags": ["O"]},
        {"tokens": ["there"], "tags": ["O"]}]
    rows = read_records(WNUT, format="conll")
    assert len(rows) == 2394 and sum(len(r["tokens"]) for r in rows) == 46469
    assert {t for r in rows for t in r["tags"]} == set(WNUT_TAGS)
    assert read_records(WNUT, format="conll", skip=2390) == rows[2390:], "skip holds out the last rows"


def test_a_words_first_piece_carries_its_tag(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    path = tmp_path / "ner.jsonl"
    path.write_text(json.dumps({"tokens": ["Empire", "State", "Buildingz", "!"],
                                "tags": ["B-facility", "I-facility", "I-facility", "O"]}) + "\n")
    task = get_task("token_classification")
    teacher = ModelSpec(model=str(tiny_teacher_dir), labels=WNUT_TAGS)
    data = prepare_data(task, DataSpec(train=DataFile(path=str(path), text="tokens", label="tags")), teacher, None)
    batch = data.collate([data.train[0]])
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    pieces = tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    labels = batch["labels"][0].tolist()
    tagged = [(piece, WNUT_TAGS[label]) for piece, label in zip(pieces, labels, strict=True) if label != -100]
    assert tagged == [("empire", "B-facility"), ("state", "I-facility"), ("building", "I-facility"), ("!", "O")]
    assert [label for piece, label in zip(pieces, labels, strict=True) if piece.startswith("##")] == [-100]
    assert labels[0] == labels[-1] == -100, "special tokens carry no tag"
    with pytest.raises(ConfigError, match=r"tags \['B-facility'.*teacher.labels"):
        prepare_data(task, DataSpec(train=DataFile(path=str(path), text="tokens", label="tags")),
                          ModelSpec(model=str(tiny_teacher_dir), labels=["O"]), None)


@pytest.mark.slow
def test_wnut_teacher_trains_and_distills_into_a_bilstm(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    data = {"train": {"path": str(WNUT), "format": "conll", "text": "tokens", "label": "tags", "limit": 64},
            "eval": {"path": str(WNUT), "format": "conll", "text": "tokens", "label": "tags", "limit": 32},
            "max_length": 48}
    recipe = {"task": "token_classification", "data": data,
              "teacher": {"model": str(tiny_teacher_dir), "labels": WNUT_TAGS},
              "training": {"batch_size": 16, "num_steps": 6, "learning_rate": 1e-3, "seed": 0, "progress": False},
              "eval": {"metric": "entity_f1"}}
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump(recipe))
    runner = CliRunner()
    result = runner.invoke(build_cli(), ["train", str(tmp_path / "teacher.yaml"), "-o", str(tmp_path / "teacher")])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "teacher" / "model" / "config.json").read_text())
    assert config["id2label"]["1"] == "B-company" and config["architectures"] == ["BertForTokenClassification"]
    student = {**recipe, "teacher": {"model": str(tmp_path / "teacher" / "model")},
               "student": {"preset": "bilstm", "config": {"hidden_size": 16}},
               "distillation": {"temperature": 2, "kd_loss_type": "kl", "hard_label_weight": 0.5}}
    (tmp_path / "student.yaml").write_text(yaml.safe_dump(student))
    result = runner.invoke(build_cli(), ["distill", str(tmp_path / "student.yaml"), "-o", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["metric"] == "entity_f1" and 0 <= report["student"]["value"] <= 1
    saved = json.loads((tmp_path / "s" / "student" / "config.json").read_text())
    assert saved["id2label"]["1"] == "B-company"


def test_the_wnut_example_recipe_runs_at_small_scale(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    recipe = Path(__file__).resolve().parents[2] / "examples" / "recipes" / "wnut16_ner.yaml"
    small = ["--set", f"teacher.model={tiny_teacher_dir}", "--set", "data.train.limit=32", "--set",
             "data.eval.limit=16", "--set", "training.num_epochs=1", "--set", "student.config.hidden_size=16",
             "--set", "teacher.finetune.num_epochs=1"]
    result = CliRunner().invoke(build_cli(), ["distill", str(recipe), "-o", str(tmp_path / "student"), *small])
    assert result.exit_code == 0, result.output
    tagger = json.loads((tmp_path / "student" / "teacher" / "model" / "config.json").read_text())
    assert tagger["architectures"] == ["BertForTokenClassification"] and len(tagger["id2label"]) == 21
    report = json.loads((tmp_path / "student" / "report.json").read_text())
    assert report["metric"] == "entity_f1" and report["student"]["params"] < report["teacher"]["params"]
