"""TrainingConfig and DistillationConfig: TextBrewer's configs load unchanged; errors name paths."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from kd_core import ConfigError, DistillationConfig, TrainingConfig

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "textbrewer"


@pytest.fixture
def textbrewer_configurations(textbrewer_losses):
    return importlib.import_module("textbrewer.configurations")


def test_textbrewer_t4_tiny_config_loads_unchanged_and_agrees_with_textbrewer(textbrewer_configurations) -> None:
    path = EXAMPLES / "t4_tiny_distill_config.json"
    ours = DistillationConfig.from_json(path)
    theirs = textbrewer_configurations.DistillationConfig.from_json_file(str(path))
    for field in ("temperature", "hard_label_weight", "kd_loss_type", "kd_loss_weight",
                  "probability_shift", "is_caching_logits"):
        assert getattr(ours, field) == getattr(theirs, field), field
    assert len(ours.intermediate_matches) == len(theirs.intermediate_matches) == 10
    for mine, reference in zip(ours.intermediate_matches, theirs.intermediate_matches, strict=True):
        assert (mine.layer_T, mine.layer_S, mine.feature, mine.loss, mine.weight) == (
            reference.layer_T, reference.layer_S, reference.feature, reference.loss, reference.weight)
        # TextBrewer normalises proj to [name, dim_in, dim_out, options]
        if reference.proj is None:
            assert mine.proj is None
        else:
            assert mine.proj[:3] == reference.proj[:3] and mine.proj_options == reference.proj[3]
    assert ours.intermediate_matches[0].proj == ["linear", 312, 768]
    assert ours.intermediate_matches[5].layer_T == [0, 0]


def test_textbrewer_training_config_loads_unchanged(textbrewer_configurations, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # TextBrewer's TrainingConfig creates its output_dir on construction
    path = EXAMPLES / "training_config.json"
    ours = TrainingConfig.from_json(path)
    theirs = textbrewer_configurations.TrainingConfig.from_json_file(str(path))
    for field in json.loads(path.read_text()):
        assert getattr(ours, field) == getattr(theirs, field), field


def test_configs_round_trip_through_dict_json_and_yaml(tmp_path: Path) -> None:
    config = DistillationConfig.from_json(EXAMPLES / "t4_tiny_distill_config.json")
    assert DistillationConfig.from_dict(config.to_dict()) == config
    (tmp_path / "c.json").write_text(json.dumps(config.to_dict()))
    assert DistillationConfig.from_json(tmp_path / "c.json") == config
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config.to_dict()))
    assert DistillationConfig.from_yaml(tmp_path / "c.yaml") == config


def test_textbrewer_keyword_construction() -> None:
    config = DistillationConfig(temperature=8, intermediate_matches=[
        {"layer_T": 0, "layer_S": 0, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
         "proj": ["linear", 312, 768, {"learning_rate": 1e-3}]}])
    assert config.intermediate_matches[0].proj_options == {"learning_rate": 1e-3}
    assert TrainingConfig(fp16=True).mixed_precision == "fp16"


def test_errors_give_the_path_of_each_bad_field_and_a_fix() -> None:
    with pytest.raises(ConfigError) as error:
        DistillationConfig.from_dict({
            "temprature": 3,
            "intermediate_matches": [
                {"layer_T": 1, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse"},
                {"layer_T": [1, 2, 3], "layer_S": [0, 0], "feature": "hidden", "loss": "nst",
                 "proj": ["linear", 3]},
            ],
        }, where="recipe.yaml: distillation")
    message = str(error.value)
    assert "(3 errors)" in message
    assert "temprature: unknown field 'temprature'; did you mean 'temperature'?" in message
    assert "intermediate_matches[1].layer_T: a layer pair must have exactly two entries" in message
    assert ("intermediate_matches[1].proj: proj ['linear', 3] is malformed; "
            "write it as [name, dim_in, dim_out]") in message
    assert message.count("recipe.yaml: distillation") == 3


def test_keyword_errors_are_config_errors_too() -> None:
    with pytest.raises(ConfigError, match=r"gradient_accumulation_steps: Input should be greater than or equal to 1"):
        TrainingConfig(gradient_accumulation_steps=0)
    with pytest.raises(ConfigError, match=r"temperature: Input should be greater than 0"):
        DistillationConfig(temperature=0)


def test_a_recipe_reads_a_textbrewer_config_file_as_its_distillation(tmp_path: Path) -> None:
    from kd_core.schema import load_recipe

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "distill.json").write_text(json.dumps({"temperature": 8, "hard_label_weight": 0.5}))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("task: sequence_classification\ndata: {train: {path: t.tsv, text: s, label: l}}\n"
                      "teacher: {model: m}\ntraining: {num_steps: 1}\ndistillation: configs/distill.json\n")
    parsed, _ = load_recipe(recipe, ["distillation.temperature=2"])
    assert (parsed.distillation.temperature, parsed.distillation.hard_label_weight) == (2, 0.5)
    recipe.write_text(recipe.read_text().replace("configs/distill.json", "configs/missing.json"))
    with pytest.raises(ConfigError, match=r"distillation: file 'configs/missing.json' not found \(looked at"):
        load_recipe(recipe)
    (tmp_path / "configs" / "list.json").write_text("[1, 2]")
    recipe.write_text(recipe.read_text().replace("configs/missing.json", "configs/list.json"))
    with pytest.raises(ConfigError, match="must hold a mapping of fields, not a list"):
        load_recipe(recipe)
