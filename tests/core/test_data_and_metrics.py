"""Reading labelled files, eval metrics against their textbook formulas, and bf16 autocast."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from kd_core import ConfigError, DistillationConfig, GeneralDistiller, TrainingConfig, lookup
from kd_core.data import default_text_column, read_examples, read_records, resolve_path
from kd_core.metrics import accuracy, macro_f1, matthews_corrcoef
from tests.core.models import TinyEncoder, TokenDataset


def test_tsv_csv_and_jsonl_read_the_same_rows(tmp_path: Path) -> None:
    rows = [{"text": 'he said "fine", then left', "label": "1"}, {"text": "no, never", "label": "0"},
            {"text": "third", "label": "1"}]
    (tmp_path / "d.tsv").write_text("text\tlabel\n" + "".join(f"{r['text']}\t{r['label']}\n" for r in rows))
    (tmp_path / "d.csv").write_text('text,label\n"he said ""fine"", then left",1\n"no, never",0\nthird,1\n')
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("d.tsv", "d.csv", "d.jsonl"):
        assert read_examples(tmp_path / name, ["text", "label"]) == rows, name
        assert read_examples(tmp_path / name, ["text", "label"], limit=2) == rows[:2], name


def test_a_plain_text_file_gives_one_example_per_line(tmp_path: Path) -> None:
    (tmp_path / "corpus.txt").write_text("the first sentence .\n\n  a second , with spaces  \r\nthird\n")
    assert read_records(tmp_path / "corpus.txt") == [
        {"text": "the first sentence ."}, {"text": "  a second , with spaces  "}, {"text": "third"}]
    assert read_records(tmp_path / "corpus.txt", columns=["sentence"], skip=1, limit=1) == \
        [{"sentence": "  a second , with spaces  "}]
    (tmp_path / "corpus.text").write_text("one\n")
    assert read_records(tmp_path / "corpus.text", format="txt") == [{"text": "one"}]
    with pytest.raises(ConfigError, match=r"cannot tell the format of corpus.text from its suffix; set format to "
                                          r"one of tsv, csv, jsonl, conll, txt"):
        read_records(tmp_path / "corpus.text")


def test_default_text_column_takes_the_only_column_or_sentence_or_text(tmp_path: Path) -> None:
    path = tmp_path / "f.tsv"
    assert default_text_column([{"text": "a"}], path, "-c") == "text"
    assert default_text_column([{"label": "1", "sentence": "a"}], path, "-c") == "sentence"
    with pytest.raises(ConfigError, match=r"-c: name the text column of f.tsv; its columns are review, stars"):
        default_text_column([{"review": "a", "stars": "5"}], path, "-c")


def test_a_malformed_json_line_is_named_with_its_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"sentence": "fine", "label": 1}\n\n{"sentence": "cut short", "label": \n'
                    '{"sentence": "never read", "label": 0}\n')
    with pytest.raises(ConfigError, match=r"data.train: .*data.jsonl line 3 is not valid JSON \(Expecting value at "
                                          r"column 36\): '\{\"sentence\": \"cut short\", \"label\":'; fix or "
                                          r"delete that line"):
        read_records(path, where="data.train")
    path.write_text('{"sentence": "fine", "label": 1}\n["a list"]\n')
    with pytest.raises(ConfigError, match=r"line 2 holds a JSON list, not an object of named columns"):
        read_records(path)
    assert read_records(path, limit=1) == [{"sentence": "fine", "label": 1}], "rows before the limit still read"


def test_a_short_tsv_row_names_its_row_and_column(tmp_path: Path) -> None:
    path = tmp_path / "d.tsv"
    path.write_text("sentence\tlabel\ngood film\t1\nno label here\n")
    with pytest.raises(ConfigError, match=r"d.tsv row 2 has no value in the column\(s\) label; its columns are "
                                          r"sentence, label \(a short row"):
        read_examples(path, ["sentence", "label"], where="data.train")


def test_paths_resolve_against_the_recipe_folder_then_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "recipes").mkdir()
    (tmp_path / "data.tsv").write_text("x\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_path("data.tsv", tmp_path / "recipes", "data.train.path") == (tmp_path / "data.tsv").resolve()
    assert resolve_path("../data.tsv", tmp_path / "recipes", "data.train.path") == (tmp_path / "data.tsv").resolve()
    with pytest.raises(ConfigError, match=r"data.train.path: file 'missing.tsv' not found \(looked at "):
        resolve_path("missing.tsv", tmp_path / "recipes", "data.train.path")


def test_a_package_path_names_a_file_inside_an_installed_package() -> None:
    import kd_core

    found = resolve_path("package:kd_core/demo_data/sst2/dev.tsv", None, "data.eval")
    assert found == (Path(kd_core.__file__).parent / "demo_data" / "sst2" / "dev.tsv").resolve()
    with pytest.raises(ConfigError, match=r"data.eval: 'package:kd_core/nothing.tsv': the package kd_core has no file"):
        resolve_path("package:kd_core/nothing.tsv", None, "data.eval")
    with pytest.raises(ConfigError, match=r"names the package 'no_such_package_kd', which is not installed"):
        resolve_path("package:no_such_package_kd/x.csv", None, "data.eval")


def test_a_data_file_is_one_path_or_several_sources() -> None:
    from kd_core.schema import DataFile

    assert DataFile(path="a.txt").text_columns == ["text"], "a plain-text file's lines are the column text"
    mixed = DataFile(sources=[{"path": "a.txt", "weight": 2}, {"path": "b.csv", "select": {"source": "imdb"}}])
    assert [s.weight for s in mixed.sources] == [2, 1.0] and mixed.sources[1].select == {"source": "imdb"}
    for bad, message in (({}, "give the path of a file, or sources"),
                         ({"path": "a.txt", "sources": [{"path": "b.txt"}]}, "not both"),
                         ({"sources": []}, "at least one file"),
                         ({"sources": [{"sources": [{"path": "a.txt"}]}]}, "a source is one file"),
                         ({"path": "a.txt", "weight": 0}, "greater than 0")):
        with pytest.raises(ConfigError, match=message):
            DataFile.from_dict(bad, where="data.train")
    with pytest.raises(ConfigError, match=r"data\.train: this step reads one file"):
        resolve_path(None, None, "data.train.path")


def test_matthews_and_f1_follow_their_formulas() -> None:
    gold = torch.tensor([1, 1, 1, 0, 0, 0, 1, 0, 1, 1])
    pred = torch.tensor([1, 0, 1, 0, 1, 0, 1, 0, 0, 1])
    tp, tn, fp, fn = 4, 3, 1, 2
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert matthews_corrcoef(pred, gold) == pytest.approx(mcc)
    f1_pos, f1_neg = 2 * tp / (2 * tp + fp + fn), 2 * tn / (2 * tn + fn + fp)
    assert macro_f1(pred, gold) == pytest.approx((f1_pos + f1_neg) / 2)
    assert accuracy(pred, gold) == pytest.approx(0.7)
    assert matthews_corrcoef(torch.ones(4, dtype=torch.long), torch.tensor([1, 0, 1, 0])) == 0.0


def test_bf16_autocast_on_cpu_trains_with_finite_losses(tmp_path: Path) -> None:
    torch.manual_seed(0)
    adaptor = lookup("adaptors", "features")()
    distiller = GeneralDistiller(
        TrainingConfig(output_dir=str(tmp_path), progress=False, mixed_precision="bf16"),
        DistillationConfig(kd_loss_type="kl", hard_label_weight=0.5,
                           intermediate_matches=[{"layer_T": 2, "layer_S": 1, "feature": "hidden",
                                                  "loss": "hidden_mse", "proj": ["linear", 8, 16]}]),
        TinyEncoder(width=16), TinyEncoder(width=8, layers=1), adaptor, adaptor)
    distiller.train(torch.optim.AdamW(distiller.model_S.parameters(), lr=1e-2),
                    DataLoader(TokenDataset(size=32), batch_size=8), num_epochs=10)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in records)
    assert sum(r["loss"] for r in records[-4:]) < sum(r["loss"] for r in records[:4])
    assert all(p.dtype == torch.float32 for p in distiller.model_S.parameters())


def test_fp16_on_cpu_is_refused_with_the_fix(tmp_path: Path) -> None:
    adaptor = lookup("adaptors", "features")()
    distiller = GeneralDistiller(TrainingConfig(output_dir=str(tmp_path), fp16=True), DistillationConfig(),
                                 TinyEncoder(), TinyEncoder(), adaptor, adaptor)
    with pytest.raises(ConfigError, match="'fp16' needs a CUDA device; use 'bf16' on CPU"):
        distiller.train(torch.optim.SGD(distiller.model_S.parameters(), lr=0.1),
                        DataLoader(TokenDataset(size=8), batch_size=4), num_steps=1)
