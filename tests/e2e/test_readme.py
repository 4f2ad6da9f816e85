"""Every table of results in the README is what a script renders from a committed results file:
no number in them is typed by hand, every results file is shown, and the demo runs the recipe
its validation comparison chose."""

from __future__ import annotations

import re
from pathlib import Path

from benchmarks import readme_results, readme_tables
from benchmarks.demo_recipe import CANDIDATES, _is_demo

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_benchmark_tables_match_the_committed_results() -> None:
    section = README.split(readme_tables.START, 1)[1]
    source = re.search(r"from `(benchmarks/results/[^`]+\.json)`", section)
    assert source, "the README's benchmark section names no results file"
    assert readme_tables.main([str(ROOT / source.group(1)), "--check"]) == 0


def test_result_blocks_match_the_committed_results() -> None:
    assert readme_results.main(["--check"]) == 0


def test_every_results_file_is_shown_in_the_readme() -> None:
    shown = {file for file, _ in readme_results.BLOCKS.values()}
    shown |= set(re.findall(r"benchmarks/results/([^`\s]+\.json)", README.split(readme_tables.START, 1)[1]))
    files = {p.name for p in (ROOT / "benchmarks" / "results").glob("*.json")}
    assert files <= shown, f"results files the README does not show: {sorted(files - shown)}"


def test_the_demo_runs_the_candidates_its_validation_comparison_chose() -> None:
    import json

    results = json.loads((ROOT / "benchmarks" / "results" / "demo-recipe-selection.json").read_text())
    by_title = {title: (student, plan, steps, variants) for title, student, plan, steps, variants in CANDIDATES}
    for student, chosen in results["chosen"].items():
        best = max((r for r in results["candidates"] if r["student"] == student),
                   key=lambda r: r["validation_accuracy"])
        assert chosen["candidate"] == best["candidate"]
        assert _is_demo(*by_title[chosen["candidate"]]), f"kd demo does not run the chosen {student} recipe"
