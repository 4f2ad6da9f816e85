"""The augmentation driver: what it writes (originals, up to n new rows each, no duplicates, pairs
edited pairwise), one seed one file, and resume after a kill with nothing lost or written twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kd_core.augmentation import AUGMENTED, SOURCE_ROW, augment_rows
from kd_core.errors import ConfigError, KDError
from kd_core.resumable import PROGRESS_SUFFIX
from tests.core.augment_worker import ROWS, ShuffleWords
from tests.core.augment_worker import run as run_worker

ROOT = Path(__file__).resolve().parents[2]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_writes_originals_and_up_to_n_new_distinct_rows_each(tmp_path: Path) -> None:
    rows = [{"text": "b a", "label": 1}, {"text": "a b", "label": 0}, {"text": "one two three four", "label": 1},
            {"text": "a b", "label": 1}]  # a repeated text is still an input row: it is copied too
    result = augment_rows(rows, ["text"], ShuffleWords, tmp_path / "out.jsonl", n=5, seed=0, progress=False)
    records = _lines(tmp_path / "out.jsonl")
    assert [r for r in records if not r[AUGMENTED]] == [{**row, AUGMENTED: False} for row in rows]
    new = [r for r in records if r[AUGMENTED]]
    texts = [r["text"] for r in new]
    assert len(texts) == len(set(texts)), "no new row is written twice"
    assert not set(texts) & {row["text"] for row in rows}, "nor repeats an input row"
    assert all(set(r) == {"text", AUGMENTED, SOURCE_ROW} for r in new), "new rows carry no label"
    for r in new:
        source = rows[r[SOURCE_ROW]]["text"].split()
        assert sorted(r["text"].split()[:-1]) == sorted(source)
    per_row = [sum(r[SOURCE_ROW] == i for r in new) for i in range(4)]
    assert per_row[2] == 5 and all(count <= 5 for count in per_row)
    assert (result.rows, result.new) == (len(records), len(new))


def test_pairs_are_edited_pairwise_and_a_seed_fixes_the_file(tmp_path: Path) -> None:
    rows = [{"premise": f"p{i} x y", "hypothesis": f"h{i} u v w", "label": 0} for i in range(6)]
    for name in ("a", "b"):
        augment_rows(rows, ["premise", "hypothesis"], ShuffleWords, tmp_path / f"{name}.jsonl", n=4, seed=3,
                     keep_original=False, progress=False)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    for record in _lines(tmp_path / "a.jsonl"):
        source = rows[record[SOURCE_ROW]]
        assert sorted(record["premise"].split()[:-1]) == sorted(source["premise"].split())
        assert sorted(record["hypothesis"].split()[:-1]) == sorted(source["hypothesis"].split())
    augment_rows(rows, ["premise", "hypothesis"], ShuffleWords, tmp_path / "c.jsonl", n=4, seed=4,
                 keep_original=False, progress=False)
    assert (tmp_path / "c.jsonl").read_bytes() != (tmp_path / "a.jsonl").read_bytes()


@pytest.mark.slow
def test_resume_after_a_kill_gives_the_uninterrupted_file(tmp_path: Path) -> None:
    clean = tmp_path / "clean.jsonl"
    run_worker(str(clean), 0.0)
    killed = tmp_path / "killed.jsonl"
    progress = killed.with_name(killed.name + PROGRESS_SUFFIX)
    process = subprocess.Popen([sys.executable, "-m", "tests.core.augment_worker", str(killed), "0.01"], cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if progress.is_file() and json.loads(progress.read_text() or "{}").get("units_done", 0) >= 2:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    state = json.loads(progress.read_text())
    assert not state["complete"] and 2 <= state["units_done"] < 8
    run_worker(str(killed), 0.0)
    assert killed.read_bytes() == clean.read_bytes()


def test_a_half_written_unit_is_cut_off_on_resume(tmp_path: Path) -> None:
    clean, broken = tmp_path / "clean.jsonl", tmp_path / "broken.jsonl"
    run_worker(str(clean), 0.0)

    class Interrupted(ShuffleWords):
        calls = 0

        def variants(self, text, rng):
            for variant in super().variants(text, rng):
                Interrupted.calls += 1
                if Interrupted.calls > 100:
                    raise KeyboardInterrupt
                yield variant

    with pytest.raises(KeyboardInterrupt):
        augment_rows(ROWS, ["text"], Interrupted, broken, n=3, seed=7, settings={"worker": "shuffle"},
                     progress=False)
    with open(broken, "a") as handle:
        handle.write('{"text": "half a line')  # what a kill during a write leaves
    run_worker(str(broken), 0.0)
    assert broken.read_bytes() == clean.read_bytes()


def test_other_settings_or_foreign_files_are_refused_not_overwritten(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    run_worker(str(output), 0.0)
    before = output.read_bytes()
    with pytest.raises(KDError, match="written with other settings"):
        augment_rows(ROWS, ["text"], ShuffleWords, output, n=2, seed=7, settings={"worker": "shuffle"},
                     progress=False)
    assert output.read_bytes() == before
    augment_rows(ROWS, ["text"], ShuffleWords, output, n=2, seed=7, settings={"worker": "shuffle"},
                 progress=False, overwrite=True)
    assert output.read_bytes() != before
    foreign = tmp_path / "mine.jsonl"
    foreign.write_text("precious\n")
    with pytest.raises(KDError, match="not written by kd"):
        augment_rows(ROWS, ["text"], ShuffleWords, foreign, n=2, progress=False)
    assert foreign.read_text() == "precious\n"
    with pytest.raises(ConfigError, match="row 1 has no column"):
        augment_rows(ROWS, ["sentence"], ShuffleWords, tmp_path / "x.jsonl", n=2, progress=False)
