"""What each layer of the demo's models encodes: ``kd probe`` on the teacher and both students
that ``kd demo`` leaves in its output folder, over the first sentences of the demo's SST-2
training subset (a corpus that ships in the repository).

    .venv/bin/kd demo                       # makes kd-demo-output/
    .venv/bin/python -m benchmarks.probing [--demo-output kd-demo-output] [--limit 2000]

Writes benchmarks/results/probing-demo.json (kd probe's probing.json with the run's settings and
machine) and probing-demo.png, from which the probing table of docs/packages/kd-analysis.md is
generated.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import time
from pathlib import Path

from kd_core.cli import build_cli
from kd_core.demo import DEMO_DATA, STUDENTS
from kd_core.machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "probing-demo.json"


def main(argv: list[str] | None = None) -> int:
    """Probe the demo's models and write the results file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-output", type=Path, default=ROOT / "kd-demo-output")
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "probing-demo")
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    models = {"teacher": args.demo_output / "teacher" / "model",
              **{name: args.demo_output / name / "student" for name in STUDENTS}}
    missing = [str(path) for path in models.values() if not path.is_dir()]
    if missing:
        raise SystemExit(f"run `kd demo` first: {', '.join(missing)} missing")
    corpus = DEMO_DATA / "train.tsv"
    started = time.perf_counter()
    build_cli().commands["probe"].main(
        args=["--models", *map(str, models.values()), "--names", ",".join(models), "--corpus", str(corpus),
              "--limit", str(args.limit), "--max-length", "64", "--output", str(args.output)],
        standalone_mode=False)
    report = json.loads((args.output / "probing.json").read_text(encoding="utf-8"))
    results = {"benchmark": "probing", "date": datetime.date.today().isoformat(), "machine": describe_machine(),
               "corpus": f"the first {args.limit:,} sentences of {corpus.relative_to(ROOT)}",
               "models": {name: str(path.relative_to(args.demo_output)) for name, path in models.items()},
               "seconds": round(time.perf_counter() - started, 1), "probing": report}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    shutil.copyfile(args.output / "probing.png", args.results.with_suffix(".png"))
    print(f"written: {args.results}, {args.results.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
