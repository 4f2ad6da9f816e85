"""Whole distillation steps of standard recipes, measured side by side in one run
(benchmarks/step_cases.py has the models, batches and recipes).

Per recipe (TextBrewer-style, MiniLM last-layer relations, an ETD-initialised student, a BiLSTM
student, DistilBERT's objective on a masked LM of MiniLM's shape: kl over the 30,522-word
vocabulary at the masked tokens, the workload the fused softmax_kl was built for), kd's
GeneralDistiller with the fused kernels (``kd``), with every loss in eager PyTorch
(``kd_reference``: ``KD_KERNELS=reference``) and with the student under torch.compile
(``kd_compiled``); for the TextBrewer-style recipe also the ``textbrewer`` package's
GeneralDistiller on the same models, batches and losses, and where each framework's time goes.
``test_teacher_cache_epochs`` times the epochs of a cached run. Run with ``make bench``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch

from benchmarks.step_cases import (
    CASES,
    DISTILBERT_BATCH_SIZE,
    DISTILBERT_LENGTH,
    Sections,
    build_student,
    eager_copy,
    kernels_backend,
    load_masked_lm_setup,
    load_setup,
    run_kd,
    run_textbrewer,
    timed_sections,
)

STEPS = 8
ROUNDS = 3
IMPLS = {
    "textbrewer_style": ["kd", "kd_reference", "kd_compiled", "textbrewer"],
    "minilm": ["kd", "kd_reference", "kd_compiled"],
    "etd": ["kd"],
    "bilstm": ["kd", "kd_compiled"],
    "distilbert": ["kd", "kd_reference", "kd_compiled"],
}
WORKLOADS = {"distilbert": f"masked LM 6x384 teacher (V = 30,522), batches of {DISTILBERT_BATCH_SIZE} x "
                           f"{DISTILBERT_LENGTH} tokens"}
"""What a case's teacher and batches are, where they are not the SST-2 classification setup's."""


@pytest.fixture(scope="module")
def classification_setup(minilm_path: Path, sst2_dir: Path):
    return load_setup(minilm_path, sst2_dir, STEPS)


@pytest.fixture(scope="module")
def masked_lm_setup(minilm_path: Path):
    return load_masked_lm_setup(minilm_path, STEPS)


@pytest.fixture
def setup(request, classification_setup):
    """The setup of the case a test runs (the masked-LM one only for DistilBERT's step)."""
    case = request.node.callspec.params.get("case") if hasattr(request.node, "callspec") else None
    return request.getfixturevalue("masked_lm_setup") if case == "distilbert" else classification_setup


@pytest.fixture(scope="module")
def eager_teacher(classification_setup):
    return eager_copy(classification_setup.teacher)


@pytest.mark.parametrize(("case", "impl"), [(c, i) for c, impls in IMPLS.items() for i in impls])
def test_distillation_steps(benchmark, setup, eager_teacher, case: str, impl: str) -> None:
    workload = WORKLOADS.get(case, "MiniLM 6x384 teacher, batches of 32 x 64 tokens")
    benchmark.group = f"step {case}: {workload}, {STEPS} steps a round"
    recipe = CASES[case]
    student = build_student(setup, recipe)
    teacher = setup.teacher
    if impl == "textbrewer":
        student, teacher = eager_copy(student), eager_teacher
    # one student (and one compiled graph) for every round, reset to the same weights before each
    initial = {k: v.clone() for k, v in student.state_dict().items()}
    compiled = torch.compile(student) if impl == "kd_compiled" else None
    sections = Sections()
    calls = []

    def run() -> None:
        calls.append(True)
        student.load_state_dict(initial)
        with tempfile.TemporaryDirectory() as out, timed_sections(teacher, student) as timed:
            if impl == "textbrewer":
                run_textbrewer(recipe, STEPS, Path(out), setup.loader(), teacher, student)
            else:
                with kernels_backend("reference" if impl == "kd_reference" else "auto"):
                    run_kd(setup, recipe, STEPS, Path(out), student=student, compiled=compiled)
        if len(calls) == 1:
            return  # the warm-up round (compilation, first allocations) is not profiled
        for name, seconds in timed.seconds.items():
            sections.seconds[name] += seconds
        sections.total += timed.total

    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
    benchmark.extra_info["steps_per_round"] = STEPS
    benchmark.extra_info["ms_per_step"] = sections.per_step(STEPS * ROUNDS)


def test_teacher_cache_epochs(benchmark, setup) -> None:
    """Two epochs over the batches with the in-memory teacher cache: the second serves every
    teacher feature from the cache."""
    benchmark.group = "teacher cache: epoch 2 against epoch 1 (TextBrewer-style recipe)"
    recipe = CASES["textbrewer_style"]
    epochs: list[dict[str, float]] = []

    def run() -> None:
        with tempfile.TemporaryDirectory() as out:
            distiller = run_kd(setup, recipe, STEPS, Path(out), cache=True, epochs=2)
            records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
        assert distiller.teacher_forwards == STEPS, "the second epoch must not run the teacher"
        first = records[STEPS - 1]["elapsed_s"]
        epochs.append({"epoch_1_s": first, "epoch_2_s": records[-1]["elapsed_s"] - first})

    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
    first, second = (sum(e[k] for e in epochs[1:]) / ROUNDS for k in ("epoch_1_s", "epoch_2_s"))
    benchmark.extra_info.update({"epoch_1_s": round(first, 3), "epoch_2_s": round(second, 3),
                                 "epoch_2_over_epoch_1": round(second / first, 3),
                                 "cached_ms_per_step": round(1000 * second / STEPS, 2)})
