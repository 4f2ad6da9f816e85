"""``kd analyze`` for language models (task ``causal_lm``): each model's perplexity and next-token
accuracy, and token by token how often each student's most likely next token is the reference
model's (the teacher's): per-token agreement, the top-1 match rate. The 2 x 2 table counts the
target tokens by who predicts them right, both wrong split into the same and different wrong
tokens. The models must share the reference's tokenizer (a student distilled from it does), so
that their target tokens are the same."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from kd_analysis.analysis import ANALYSIS_FILE, PREDICTIONS_FILE
from kd_core.checkpoint import write_text_atomic
from kd_core.errors import ConfigError
from kd_core.tasks import Evaluation


def analyze_tokens(evaluations: dict[str, Evaluation], output_dir: Path) -> dict[str, Any]:
    """Write analysis.json and predictions.jsonl (per sequence: its target tokens, and each
    model's accuracy on them and agreement with the reference); return the analysis."""
    names = list(evaluations)
    reference = evaluations[names[0]]
    gold = torch.cat(reference.references)
    for name in names[1:]:
        theirs = evaluations[name].references
        if len(theirs) != len(reference.references) or not torch.equal(torch.cat(theirs), gold):
            raise ConfigError(f"{name} reads the data into other tokens than {names[0]}: per-token agreement needs "
                              "models that share a tokenizer")
    predicted = {name: torch.cat(e.predictions) for name, e in evaluations.items()}
    report: dict[str, Any] = {"sequences": len(reference.references), "tokens": len(gold), "reference": names[0],
                              "models": {name: {**e.values, "baseline": e.baseline} for name, e in evaluations.items()},
                              "comparisons": {}}
    right_r = predicted[names[0]] == gold
    for name in names[1:]:
        right_m = predicted[name] == gold
        same = predicted[name] == predicted[names[0]]
        report["comparisons"][name] = {
            "agreement": float(same.float().mean()),
            "counts": {"both_right": int((right_r & right_m).sum()),
                       "only_reference_right": int((right_r & ~right_m).sum()),
                       "only_model_right": int((~right_r & right_m).sum()),
                       "both_wrong_same": int((~right_r & ~right_m & same).sum()),
                       "both_wrong_different": int((~right_r & ~right_m & ~same).sum())}}
    lines = []
    for index, targets in enumerate(reference.references):
        row: dict[str, Any] = {"index": index, "targets": targets.tolist(), "accuracy": {}, "agreement": {}}
        for name, evaluation in evaluations.items():
            guess = evaluation.predictions[index]
            row["accuracy"][name] = round(float((guess == targets).float().mean()), 4)
            row["agreement"][name] = round(float((guess == reference.predictions[index]).float().mean()), 4)
        lines.append(json.dumps(row))
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output_dir / PREDICTIONS_FILE, "\n".join(lines) + "\n")
    write_text_atomic(output_dir / ANALYSIS_FILE, json.dumps(report, indent=2) + "\n")
    return report
