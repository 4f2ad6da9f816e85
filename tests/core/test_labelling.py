"""Teacher labelling: every row comes back with the logits the teacher gives that text on its own,
top-k storage rebuilds them, a teacher cache directory serves a later labelling without a forward,
an interrupted labelling resumes to the uninterrupted file, and a distiller fed stored logits never
runs the teacher for them and learns as from the teacher itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from kd_core import DistillationConfig, GeneralDistiller, TrainingConfig, lookup
from kd_core.features import TEACHER_LOGITS
from kd_core.labelling import label_file, logits_from_json
from kd_core.schema import DataFile, DataSpec, ModelSpec
from kd_core.tasks import get_task, prepare_data
from kd_models.adaptors import HFAdaptor

TEXTS = ["a gorgeous , witty , seductive movie .", "it 's a mess", "the plot is nothing but boilerplate clichés",
         "one of the year 's best", "", "a b c d e f g h i j k l m n o p"]


@pytest.fixture
def input_file(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"sentence": t, "id": i}) + "\n" for i, t in enumerate(TEXTS)))
    return path


def _label(teacher: Path, source: Path, output: Path, **options) -> list[dict]:
    label_file(get_task("sequence_classification"), ModelSpec(model=str(teacher)),
               DataFile(path=str(source), text="sentence"), output, batch_size=4, progress=False, **options)
    return [json.loads(line) for line in output.read_text().splitlines()]


def test_rows_come_back_with_the_teachers_own_logits(tiny_teacher_dir: Path, input_file: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = _label(tiny_teacher_dir, input_file, tmp_path / "out.jsonl")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    assert [(r["sentence"], r["id"]) for r in rows] == [(t, i) for i, t in enumerate(TEXTS)]
    for row in rows:
        with torch.no_grad():
            alone = model(**tokenizer(row["sentence"], return_tensors="pt")).logits[0]
        torch.testing.assert_close(logits_from_json(row[TEACHER_LOGITS]), alone, rtol=1e-5, atol=1e-5)


def test_top_k_storage_rebuilds_the_logits(tiny_teacher_dir: Path, input_file: Path, tmp_path: Path) -> None:
    full = _label(tiny_teacher_dir, input_file, tmp_path / "full.jsonl")
    top = _label(tiny_teacher_dir, input_file, tmp_path / "top.jsonl", top_k=1)
    for a, b in zip(full, top, strict=True):
        assert set(b[TEACHER_LOGITS]) == {"topk_values", "topk_indices", "rest_logsumexp", "vocab"}
        # with two classes the one left out is exactly its log-mass
        torch.testing.assert_close(logits_from_json(b[TEACHER_LOGITS]), logits_from_json(a[TEACHER_LOGITS]),
                                   rtol=1e-5, atol=1e-5)


def test_cache_dir_serves_a_later_labelling_and_resume_completes_the_file(
        tiny_teacher_dir: Path, input_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clean = _label(tiny_teacher_dir, input_file, tmp_path / "clean.jsonl")
    calls = []
    original_run = HFAdaptor.run

    def counting(self, model, batch, needs):
        calls.append(len(batch["input_ids"]))
        if len(calls) == 2 and fail_second[0]:
            raise KeyboardInterrupt
        return original_run(self, model, batch, needs)

    fail_second = [True]
    monkeypatch.setattr(HFAdaptor, "run", counting)
    output = tmp_path / "resumed.jsonl"
    with pytest.raises(KeyboardInterrupt):
        _label(tiny_teacher_dir, input_file, output, cache_dir=tmp_path / "cache")
    assert len(output.read_text().splitlines()) == 4, "the first batch of 4 was kept"
    fail_second[0] = False
    assert _label(tiny_teacher_dir, input_file, output, cache_dir=tmp_path / "cache") == clean
    assert calls == [4, 2, 2], "the resumed run labelled only the last 2 rows"
    calls.clear()
    again = _label(tiny_teacher_dir, input_file, tmp_path / "again.jsonl", cache_dir=tmp_path / "cache")
    assert calls == [] and again == clean, "every row came from the teacher cache"


def test_distiller_uses_stored_logits_instead_of_the_teacher(tiny_teacher_dir: Path, input_file: Path,
                                                            tmp_path: Path) -> None:
    labelled = tmp_path / "labelled.jsonl"
    _label(tiny_teacher_dir, input_file, labelled)
    task = get_task("sequence_classification")
    spec = ModelSpec(model=str(tiny_teacher_dir))
    stored = prepare_data(task, DataSpec(train=DataFile(path=str(labelled), text="sentence",
                                                       teacher_logits=TEACHER_LOGITS)), spec, None)
    plain = prepare_data(task, DataSpec(train=DataFile(path=str(labelled), text="sentence")), spec, None)
    students = {}
    for name, data in (("stored", stored), ("plain", plain)):
        teacher = task.load_teacher(spec)
        torch.manual_seed(0)
        student = lookup("students", "T4-tiny")(teacher)
        distiller = GeneralDistiller(TrainingConfig(output_dir=str(tmp_path / name), progress=False),
                                     DistillationConfig(temperature=2, kd_loss_type="kl"), teacher, student,
                                     HFAdaptor(), HFAdaptor())
        loader = DataLoader(data.train, batch_size=3, collate_fn=data.collate)
        distiller.train(torch.optim.AdamW(student.parameters(), lr=1e-3), loader, num_epochs=2)
        students[name] = (distiller.teacher_forwards, student.state_dict())
    assert students["stored"][0] == 0 and students["plain"][0] == 4
    for key, value in students["plain"][1].items():
        torch.testing.assert_close(students["stored"][1][key], value, rtol=1e-4, atol=1e-5, msg=key)
