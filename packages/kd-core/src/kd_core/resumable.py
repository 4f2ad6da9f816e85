"""A JSON-lines file written in units that survives being killed: rerun the same command and it
continues where it stopped, with nothing written twice and nothing lost.

Records are appended one *unit* at a time (an input row, a batch). After each unit the file is
flushed and a progress file beside it (``OUT.progress.json``) records how many units are done,
the byte length of the file after them and a fingerprint of the settings that produced them.
Reopening with the same settings cuts off whatever a killed run wrote after its last finished
unit and continues from there; reopening with other settings fails unless told to overwrite.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kd_core.checkpoint import write_text_atomic
from kd_core.errors import KDError

PROGRESS_SUFFIX = ".progress.json"


def settings_fingerprint(settings: dict[str, Any]) -> str:
    """A hash of JSON-serialisable settings (key order does not matter)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


class ResumableJsonl:
    """Appends JSON records to ``path`` unit by unit; see the module docstring.

    ``units_done``, ``written`` (records) and ``complete`` say where an earlier run stopped.
    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | Path, settings: dict[str, Any], overwrite: bool = False) -> None:
        self.path = Path(path)
        self.progress_path = self.path.with_name(self.path.name + PROGRESS_SUFFIX)
        self.fingerprint = settings_fingerprint(settings)
        self.settings = settings
        state = self._previous_state(overwrite)
        self.units_done: int = state["units_done"]
        self.written: int = state["written"]
        self.complete: bool = state["complete"]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "ab" if self.path.exists() else "wb")  # noqa: SIM115
        self._handle.truncate(state["bytes"])
        self._handle.seek(state["bytes"])

    def _previous_state(self, overwrite: bool) -> dict[str, Any]:
        fresh = {"units_done": 0, "written": 0, "bytes": 0, "complete": False}
        if overwrite or not self.path.exists():
            self.progress_path.unlink(missing_ok=True)
            return fresh
        if not self.progress_path.is_file():
            raise KDError(f"{self.path} exists but was not written by kd (no {self.progress_path.name} beside it); "
                          "choose another output, or overwrite it")
        state = json.loads(self.progress_path.read_text(encoding="utf-8"))
        if state.get("fingerprint") != self.fingerprint:
            raise KDError(f"{self.path} was written with other settings ({state.get('settings')}); "
                          "rerun with the same ones to continue it, or overwrite it")
        if self.path.stat().st_size < state["bytes"]:
            raise KDError(f"{self.path} is shorter than its progress file says ({state['bytes']} bytes); "
                          "it was changed by hand; overwrite it")
        return state

    def records(self) -> Iterator[dict[str, Any]]:
        """The records written so far (by this run or the interrupted one it continues)."""
        self._handle.flush()
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    yield json.loads(line)

    def write_unit(self, records: list[dict[str, Any]]) -> None:
        """Append one unit's records (possibly none) and record the unit as done."""
        for record in records:
            self._handle.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        self._handle.flush()
        self.units_done += 1
        self.written += len(records)
        self._save_progress()

    def finish(self) -> None:
        """Mark the file complete: a later run with the same settings has nothing left to do."""
        self.complete = True
        self._save_progress()

    def _save_progress(self) -> None:
        write_text_atomic(self.progress_path, json.dumps({
            "fingerprint": self.fingerprint, "settings": self.settings, "units_done": self.units_done,
            "written": self.written, "bytes": self._handle.tell(), "complete": self.complete}, default=str) + "\n")

    def close(self) -> None:
        """Close the file (what is written stays; progress is saved after every unit)."""
        self._handle.close()

    def __enter__(self) -> ResumableJsonl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
