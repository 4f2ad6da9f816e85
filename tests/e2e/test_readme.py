"""The README's benchmark tables are what benchmarks/readme_tables.py renders from the committed
results file it names: no number in them is typed by hand."""

from __future__ import annotations

import re
from pathlib import Path

from benchmarks import readme_tables

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_tables_match_the_committed_results() -> None:
    section = (ROOT / "README.md").read_text(encoding="utf-8").split(readme_tables.START, 1)[1]
    source = re.search(r"from `(benchmarks/results/[^`]+\.json)`", section)
    assert source, "the README's benchmark section names no results file"
    assert readme_tables.main([str(ROOT / source.group(1)), "--check"]) == 0
