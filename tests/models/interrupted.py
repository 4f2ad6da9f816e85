"""``kd distill`` run three times on one recipe: straight through into OUT/a, killed in the middle
(an exception raised as the kill_at-th batch starts) into OUT/b, and resumed there; every batch
each run reads is recorded, so a test can check that the resumed run read what the straight one
did."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from kd_core.cli import build_cli
from kd_core.distillers import BasicDistiller


class Killed(Exception):
    """Stands for the process being killed in the middle of a run."""


def straight_killed_resumed(recipe: Path, output: Path, monkeypatch: pytest.MonkeyPatch,
                            kill_at: int = 5) -> tuple[dict[str, list[torch.Tensor]], Result]:
    """The input ids of every batch of each run (``straight``, ``killed``, ``resumed``), and the
    resumed run's result; the straight run must succeed and the killed one die of :class:`Killed`."""
    seen: dict[str, list[torch.Tensor]] = {"straight": [], "killed": [], "resumed": []}
    original, run = BasicDistiller.compute_losses, ["straight"]

    def recording(self, batch, progress):
        seen[run[0]].append(batch["input_ids"].clone())
        if run[0] == "killed" and len(seen["killed"]) == kill_at:
            raise Killed
        return original(self, batch, progress)

    monkeypatch.setattr(BasicDistiller, "compute_losses", recording)
    runner = CliRunner()
    straight = runner.invoke(build_cli(), ["distill", str(recipe), "-o", str(output / "a")])
    assert straight.exit_code == 0, straight.output
    run[0] = "killed"
    assert isinstance(runner.invoke(build_cli(), ["distill", str(recipe), "-o", str(output / "b")]).exception, Killed)
    run[0] = "resumed"
    return seen, runner.invoke(build_cli(), ["distill", str(recipe), "-o", str(output / "b"), "--resume"])
