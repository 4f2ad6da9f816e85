"""``kd analyze`` for tasks whose predictions are answers (question answering): each model's
answer to every question, its scores, and how often each student says what the reference
model (the teacher) says.

Everything is computed with the registered metrics the task reports (``exact_match``, ``f1``),
so a plugin's answer task is analysed the same way. Agreement of a student with the reference is
the exact match of its answer against the reference's answer (SQuAD's normalisation), and
``f1_with_reference`` their token F1; the 2 x 2 table counts who is right by exact match.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kd_analysis.analysis import ANALYSIS_FILE, PREDICTIONS_FILE
from kd_core.checkpoint import write_text_atomic
from kd_core.tasks import Evaluation, get_metric


def analyze_answers(evaluations: dict[str, Evaluation], questions: list[str], output_dir: Path) -> dict[str, Any]:
    """Write predictions.jsonl (per question: its text, the references, every model's answer and
    exact match) and analysis.json; return the analysis."""
    exact, f1 = get_metric("exact_match"), get_metric("f1")
    names = list(evaluations)
    reference = names[0]
    first = evaluations[reference]
    right = {name: [exact([p], [r]) for p, r in zip(e.predictions, e.references, strict=True)]
             for name, e in evaluations.items()}
    report: dict[str, Any] = {"examples": len(questions), "reference": reference, "models": {},
                              "comparisons": {}}
    for name, evaluation in evaluations.items():
        report["models"][name] = {**evaluation.values, "baseline": evaluation.baseline}
    for name in names[1:]:
        answers, said = evaluations[name].predictions, [[a] for a in first.predictions]
        pairs = list(zip(right[reference], right[name], strict=True))
        report["comparisons"][name] = {
            "agreement": exact(answers, said), "f1_with_reference": f1(answers, said),
            "counts": {"both_right": sum(a and b for a, b in pairs), "only_reference_right": sum(a and not b
                                                                                                for a, b in pairs),
                       "only_model_right": sum(b and not a for a, b in pairs),
                       "both_wrong": sum(not a and not b for a, b in pairs)}}
    output_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"index": i, "question": q, "references": first.references[i],
                         "answers": {n: e.predictions[i] for n, e in evaluations.items()},
                         "exact_match": {n: right[n][i] for n in names}}, ensure_ascii=False)
             for i, q in enumerate(questions)]
    write_text_atomic(output_dir / PREDICTIONS_FILE, "\n".join(lines) + "\n")
    write_text_atomic(output_dir / ANALYSIS_FILE, json.dumps(report, indent=2) + "\n")
    return report
