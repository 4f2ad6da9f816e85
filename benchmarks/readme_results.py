"""Write the result blocks of the README and the docs pages from the committed results files, so
that no number in them is typed by hand. Each block stands between ``<!-- results:NAME -->`` and
``<!-- /results:NAME -->`` in one page and is rendered from the one file :data:`BLOCKS` names::

    .venv/bin/python -m benchmarks.readme_results [--check]

``--check`` fails (exit 1) when a block differs from what its file gives, instead of writing it.
The benchmark tables of ``make bench`` have their own block and script (benchmarks/readme_tables.py).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"


def _machine(machine: Any) -> str:
    if isinstance(machine, str):
        return machine
    return f"{machine['processor']}, {machine['cores']} cores, torch {machine['torch']} ({machine['cpu_capability']})"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def _minutes(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    return f"{whole // 60} min {whole % 60} s"


def demo(results: dict[str, Any], source: str) -> list[str]:
    """The demo's table: each model's dev accuracy, retention, size and latency."""
    teacher = results["teacher"]
    rows = [[teacher["title"], f"{teacher['value']:.4f}", "", f"{teacher['params']:,}", "",
             f"{teacher['disk_mib']:.1f}", f"{teacher['latency_ms']:.1f}", "", ""]]
    for name, s in results["students"].items():
        kept = f"{s['best_step']:,} of {s['steps']:,}" if "best_step" in s else "last"
        rows.append([f"student `{name}` ({s['title']})", f"{s['value']:.4f}", f"{s['retention']:.3f}",
                     f"{s['params']:,}", f"{s['params_ratio']:.2f}", f"{s['disk_mib']:.1f}",
                     f"{s['latency_ms']:.1f}", f"{s['speedup']:.2f}", kept])
    device = teacher.get("latency_device", "cpu")
    lines = [f"Measured on {results['date']} by `kd demo --results {source}` ({_machine(results['machine'])}): "
             f"{_minutes(results['wall_time_s'])} in all"
             + (f", the teacher's fine-tuning ({_minutes(teacher['fine_tuning_seconds'])} when it ran) reused from "
                f"the output folder" if teacher.get("fine_tuning_seconds") else "")
             + f". Dev accuracy on all 872 SST-2 dev sentences; latency is the median milliseconds per batch of 32 on "
               f"{device}, the device synchronised around each batch.", "",
             *_table(["model", "dev acc", "retention", "params", "x fewer", "MiB", "ms / batch", "speedup",
                      "step kept"], rows)]
    analysis = results.get("analysis")
    if analysis:
        agreement = ", ".join(f"`{n}` {v:.1%}" for n, v in analysis["agreement_with_teacher"].items())
        ece = ", ".join(f"{n} {v:.3f}" for n, v in analysis["ece"].items())
        lines += ["", f"From `kd analyze` in the same run: agreement with the teacher on the dev sentences "
                      f"{agreement}; expected calibration error {ece}."]
    return lines


def demo_recipe(results: dict[str, Any], source: str) -> list[str]:
    """The candidates the demo's students were chosen from, scored on the validation split."""
    chosen = {c["candidate"] for c in results["chosen"].values()}
    rows = [[r["candidate"], f"{r['validation_accuracy']:.3f}", _minutes(r["seconds"]),
             "chosen" if r["candidate"] in chosen else "", "yes" if r["is_demo"] else ""]
            for r in results["candidates"]]
    teacher = results["candidates"][0]["teacher_validation_accuracy"]
    return [f"Measured on {results['date']} by `python -m benchmarks.demo_recipe` ({source}, "
            f"{_machine(results['machine'])}); the teacher scores {teacher:.3f} on this validation split "
            f"({results['validation']}) and {results['teacher_dev_accuracy']:.4f} on dev.", "",
            *_table(["candidate", "validation acc", "time", "choice", "the demo's before this run"], rows)]


def augmentation(results: dict[str, Any], source: str) -> list[str]:
    """Students with and without a grown transfer set."""
    rows = []
    for name, data in results["results"].items():
        s = data["students"]
        cells = [f"{s[k][w]['value']:.3f}" for k in ("bilstm", "small_bert")
                 for w in ("without_augmentation", "with_augmentation")]
        rows.append([f"{name} ({data['metric']})", f"{data['teacher']:.3f}", *cells,
                     f"{s['bilstm']['with_augmentation']['transfer_rows']:,} rows"])
    return [f"Measured by `python -m benchmarks.augmentation` ({source}, {_machine(results['machine'])}):", "",
            *_table(["data", "teacher", "BiLSTM without", "BiLSTM with", "small BERT without", "small BERT with",
                     "transfer set"], rows)]


def probing(results: dict[str, Any], source: str) -> list[str]:
    """Each probing task's chance level and each model's best layer."""
    report = results["probing"]
    names = list(report["models"])
    rows, unbuilt = [], []
    for task, entry in report["tasks"].items():
        if not entry["built"]:
            unbuilt.append(f"{task} ({entry['reason']})")
            continue
        cells = []
        for name in names:
            scores = report["models"][name]["tasks"][task]
            best = max(range(len(scores)), key=scores.__getitem__)
            cells.append(f"{scores[best]:.3f} (layer {best})")
        rows.append([task, f"{entry['chance']:.3f}", *cells])
    lines = [f"Measured on {results['date']} by `python -m benchmarks.probing` ({source}, "
             f"{_machine(results['machine'])}, {_minutes(results['seconds'])}): the demo's models on "
             f"{results['corpus']}; test accuracy of the best layer's probe (layer 0 = embeddings).", "",
             *_table(["task", "chance", *names], rows)]
    if unbuilt:
        lines += ["", "Not built from this corpus: " + "; ".join(unbuilt) + "."]
    return lines


def etd_convergence(results: dict[str, Any], source: str) -> list[str]:
    """Steps each initialisation needs to reach random init's final distillation loss."""
    summary = results["summary"]
    rows = [[name, f"{s['params']:,}", f"{s['first_loss']:.3f}", f"{s['final_smoothed_loss']:.3f}",
             f"{s['steps_to_rand_init_final_loss']} ({s['fraction_of_rand_init_steps']:.3f})",
             f"{s['dev_accuracy']:.3f}"] for name, s in summary.items()]
    settings = results["settings"]
    return [f"Measured by `python -m benchmarks.etd_convergence` ({source}, {_machine(results['machine'])}): "
            f"{settings['steps']} steps on {settings['train_rows']:,} SST-2 sentences, teacher dev accuracy "
            f"{results['teacher_dev_accuracy']:.3f}; losses are {settings['window']}-step moving averages.", "",
            *_table(["init", "params", "first loss", "final loss", "steps to rand init's final loss (fraction)",
                     "dev acc"], rows)]


def teacher_cache_topk(results: dict[str, Any], source: str) -> list[str]:
    """The error a top-k teacher cache puts into the loss."""
    mass = ", ".join(f"top {k}: {v:.0%}" for k, v in results["top_k_probability_mass_t1"].items())
    rows = [[r["loss"], f"{r['temperature']:g}", r["k"], f"{r['exact']:.3f}", f"{r['top_k']:.3f}",
             f"{r['relative_error']:.1%}", f"{r['gradient_relative_error']:.1%}"] for r in results["rows"]]
    return [f"Measured by `python -m benchmarks.teacher_cache_topk` ({source}, {_machine(results['machine'])}): "
            f"{results['tokens']} tokens, vocabulary {results['vocabulary']:,}; probability mass at T=1: {mass}. "
            "Relative errors of the loss and of its gradient with respect to the student's logits (L2).", "",
            *_table(["loss", "T", "k", "full logits", "top-k cache", "relative error", "gradient error"], rows)]


def step_normalization(results: dict[str, Any], source: str) -> list[str]:
    """How far a step split across micro-batches or processes ends from the unsplit step."""
    rows = [[name, "1 x 16", f"{split['l2_difference']:.3g}", f"{split['relative_to_other_seed']:.2g}"]
            for name, split in results["splits"].items()]
    return [f"Measured on {results['date']} by `{results['command']}` ({source}, {_machine(results['machine'])}): "
            f"`{results['recipe']}`, {results['steps']} AdamW steps of a global batch of 16, dropout off; the L2 "
            "norm of the student's weight difference, and that norm relative to the one another seed's 1 x 16 run "
            f"ends at ({results['other_seed_l2']:.3g}).", "",
            *_table(["split", "against", "L2 difference", "relative to another seed's"], rows)]


def multi_teacher(results: dict[str, Any], source: str) -> list[str]:
    """A student from one teacher and from the ensemble of three."""
    teachers = ", ".join(f"{v:.3f}" for v in results["teachers_dev_accuracy"])
    settings = results["settings"]
    rows = [["teachers (three seeds)", teachers], ["their ensemble (mean of logits)",
                                                   f"{results['teacher_ensemble_dev_accuracy']:.3f}"],
            ["student from the first teacher", f"{results['student_dev_accuracy']['single']:.3f}"],
            ["student from the ensemble", f"{results['student_dev_accuracy']['ensemble']:.3f}"]]
    return [f"Measured by `python -m benchmarks.multi_teacher` ({source}, {_machine(results['machine'])}): "
            f"{settings['train_rows']:,} SST-2 sentences, {settings['student_steps']} student steps at "
            f"T={settings['temperature']}.", "", *_table(["model", "dev accuracy"], rows)]


def squad(results: dict[str, Any], source: str) -> list[str]:
    """Question answering: the teacher, its distilled student, the same student without
    distillation and the first-sentence baseline, on SQuAD part-b."""
    def cells(title: str, r: dict[str, Any]) -> list[Any]:
        return [title, f"{100 * r['exact_match']:.1f}", f"{100 * r['f1']:.1f}",
                f"{r['f1_retention']:.3f}" if "f1_retention" in r else "", f"{r['params']:,}",
                f"{r['latency_ms_per_question']:.1f}", _minutes(r["train_seconds"])]

    base, teacher, student = results["baseline_first_sentence"], results["teacher_training"], \
        results["student_training"]
    rows = [cells(f"teacher: MiniLM-L6 fine-tuned on part-a, {teacher['epochs']} epochs", results["teacher"]),
            cells("student 3 x 144, distilled", results["student_distilled"]),
            cells("student 3 x 144, fine-tuned alone", results["student_finetuned_alone"]),
            ["baseline: the context's first sentence", f"{100 * base['exact_match']:.1f}", f"{100 * base['f1']:.1f}",
             "", "", "", ""]]
    reused = " (the teacher's fine-tuning reused from an earlier run, its time as then measured)" \
        if results["teacher_reused"] else ""
    return [f"Measured on {results['date']} by `python -m benchmarks.squad` ({source}, "
            f"{_machine(results['machine'])}, {_minutes(results['wall_seconds'])} in all{reused}): trained on part-a "
            f"({results['train']['questions']:,} questions, {results['train']['windows']:,} windows), scored on "
            f"part-b ({results['eval']['questions']:,} questions, {results['eval']['windows']:,} windows of at most "
            f"{results['max_length']} tokens). Both students train {student['epochs']} epochs at learning rate "
            f"{student['learning_rate']:g} from the same ETD extraction of the fine-tuned teacher"
            + (", the distilled one with the teacher cache (the teacher runs in its first epoch only)"
               if student["teacher_cache"] else "")
            + f"; {results['params_ratio']:.2f}x fewer parameters; model time per question on "
              f"{results['latency_device']}; a training time includes that model's evaluation on part-b (a student's "
              f"also the recipe's check and its extraction).",
            "", *_table(["model", "EM", "F1", "F1 retention", "params", "ms / question", "training"], rows)]


def general(results: dict[str, Any], source: str) -> list[str]:
    """Task-agnostic distillation: the suite table of the general student beside the models it must
    beat, and ETD's convergence in the general setting."""
    table, gd, etd = results["suite_table"], results["general_distillation"], results["etd_convergence"]
    tasks = table["tasks"]
    shape = f"{results['student_shape']['num_hidden_layers']} x {results['student_shape']['hidden_size']}"
    titles = {"teacher": "teacher: all-MiniLM-L6-v2 (6 x 384)",
              "general_etd_impt": f"{shape}, ETD-Impt + general distillation (MiniLM)",
              "etd_impt_no_gd": f"{shape}, ETD-Impt, no general distillation",
              "random_no_gd": f"{shape}, random init, no general distillation"}
    first = next(iter(table["models"].values()))
    header = ["model", *(f"{t} ({'/'.join(first['tasks'][t]['metrics'])})" for t in tasks), "average",
              "retention", "params", "speed-up"]
    rows = []
    for name, row in table["models"].items():
        cells = ["/".join(f"{100 * v:.1f}" for v in row["tasks"][t]["metrics"].values()) for t in tasks]
        per_task = "/".join(f"{row['retention'][t]:.2f}" for t in tasks)
        rows.append([titles.get(name, name), *cells, f"{100 * row['average']:.1f}",
                     f"{row['average_retention']:.3f} ({per_task})",
                     f"{row['params']:,}", f"{row['speedup']:.2f}x"])
    runs = etd["runs"]
    curve = [[name, f"{r['first_loss']:.4f}", f"{r['final_smoothed_loss']:.4f}",
              str(r["steps_to_rand_init_final_loss"] or "not reached"),
              "" if r["fraction_of_rand_init_steps"] is None else f"{r['fraction_of_rand_init_steps']:.2f}"]
             for name, r in runs.items()]
    return [f"Measured on {results['date']} by `python -m benchmarks.general` ({source}, "
            f"{_machine(results['machine'])}, {_minutes(results['wall_seconds'])} in all). General distillation: "
            f"{gd['steps']:,} steps of {gd['batch_size']} sequences of at most {gd['max_length']} tokens "
            f"({_minutes(gd['seconds'])}, "
            f"{gd['seconds'] / gd['steps']:.2f} s a step) with examples/recipes/general_minilm.yaml's objective, from "
            f"an ETD-Impt extraction; then `kd suite {results['suite']}` on each model (the same settings and seed "
            f"for all; {_minutes(results['suite_seconds'])}); retention is the average's against the teacher's "
            f"(in brackets each task's: {'/'.join(tasks)}), "
            f"speed-up the teacher's ms per SST-2 eval batch over the model's.", "", *_table(header, rows), "",
            f"ETD in the general setting: {etd['steps']} steps of MiniLM's objective from each initialisation on "
            f"the same batches (losses smoothed over {etd['window']} steps); the step at which each reaches random "
            f"init's final loss, and its fraction of random init's steps.", "",
            *_table(["initialisation", "first loss", "final loss", "reaches Rand-Init's final loss at step",
                     "fraction"], curve)]


def small_tasks(results: dict[str, Any], source: str) -> list[str]:
    """Small labelled tasks: the teacher and three 3 x 144 students (the demo's recipe with today's
    fixed budget, with kd's validated defaults, and the general student with those defaults); each
    student's test metric, retention and the step of the weights it kept."""
    settings, shape = results["settings"], results["general_student"]["shape"]
    rows = []
    for name, task in results["tasks"].items():
        teacher = task["teacher"]
        cells = []
        for s in task["students"].values():
            stop = ", stopped early" if s["stopped_early"] else ""
            cells.append(f"{s['value']:.3f} ({s['retention']:.3f}; {s['kept_step']:,} of {s['steps']:,}{stop})")
        ratio = {s["params_ratio"] for s in task["students"].values()}
        rows.append([f"{name} ({task['classes']} classes, {task['train_rows']:,} rows)", task["metric"],
                     f"{teacher['value']:.3f}", *cells, " / ".join(f"{r:.2f}x" for r in sorted(ratio))])
    return [f"Measured on {results['date']} by `python -m benchmarks.small_tasks` ({source}, "
            f"{_machine(results['machine'])}, {_minutes(results['wall_seconds'])} in all). Per task one teacher, "
            f"the packaged MiniLM fine-tuned with validation ({settings['validation_split']:.0%} of the training rows "
            f"held out, up to {settings['teacher_epochs']} epochs, patience {settings['teacher_patience']}); three "
            f"{shape['num_hidden_layers']} x {shape['hidden_size']} students with the demo's objective "
            f"({results['student_recipe']}): extracted from that teacher and trained with today's fixed budget "
            f"({settings['fixed_steps']:,} steps at {settings['fixed_learning_rate']:g}, the last weights kept); "
            f"extracted and trained with kd's validated defaults (scored on the held-out rows every epoch, up to "
            f"{settings['student_epochs']} epochs, patience {settings['student_patience']}, the default learning "
            "rate for the size, the best weights kept); and the general student of docs/tasks/general.md with the "
            "same defaults. Each cell: the metric on the task's test rows, which no choice read, then its retention "
            "against the teacher and the step of the weights kept, of the steps trained.", "",
            *_table(["task", "metric", "teacher", "extracted, fixed budget", "extracted, validated",
                     "general student, validated", "x fewer params"], rows)]


def causal_lm(results: dict[str, Any], source: str) -> list[str]:
    """Decoder distillation: held-out perplexity and next-token accuracy of the teacher before and
    after its fine-tuning, of the untrained layer copy and of the student trained for the same steps
    distilled and on the plain LM loss; then one training step's time and peak memory with kd's
    loss and with TRL's."""
    teacher, pretrained = results["teacher"]["metrics"], results["teacher_pretrained"]["metrics"]
    finetune = results["teacher_finetune"]
    sizes = f"{results['student_params']:,} ({results['student_non_embedding_params']:,})"
    teacher_sizes = f"{results['teacher_params']:,} ({results['teacher_non_embedding_params']:,})"
    rows = [["teacher: SmolLM2-135M, 30 layers, pre-trained", _perplexity(pretrained["perplexity"]),
             f"{pretrained['accuracy']:.3f}", "", teacher_sizes, ""],
            [f"teacher fine-tuned on the training text (LM loss, learning rate {finetune['learning_rate']:g})",
             _perplexity(teacher["perplexity"]), f"{teacher['accuracy']:.3f}", "", teacher_sizes,
             f"{finetune['num_steps']:,} ({_minutes(finetune['seconds'])})"]]
    titles = {"layer_copy": "student: 10 layers copied (uniform) from the fine-tuned teacher, untrained",
              "distilled": "student distilled: forward KL at T = 1 + 0.5 x LM loss",
              "lm_loss": "student on the plain LM loss",
              "gkd": f"student distilled on-policy (GKD, lambda = {results['gkd_lambda']}): forward KL, no LM loss"}
    for name, student in results["students"].items():
        metrics = student["metrics"]
        kept = round(teacher["perplexity"] / metrics["perplexity"], 3)
        trained = f"{student['steps']:,} ({_minutes(student['seconds'])})" if student["steps"] else "0"
        rows.append([titles[name], _perplexity(metrics["perplexity"]), f"{metrics['accuracy']:.3f}", f"{kept:.3f}",
                     sizes, trained])
    step = results["step"]
    batch, length = results["batch"]
    steps = [[name, f"{s['seconds']:.2f}", f"{s['peak_extra_mib']:,.0f}"]
             for name, s in (("kd (`kl`: fused `softmax_kl`)", step["kd"]),
                             ("TRL `generalized_jsd_loss`, beta = 0, x T^2", step["trl"]))]
    ratio = step["trl"]["seconds"] / step["kd"]["seconds"]
    return [f"Measured on {results['date']} by `python -m benchmarks.causal_lm --minutes {results['minutes']:g}` "
            f"({source}, "
            f"{_machine(results['machine'])}, {_minutes(results['wall_seconds'])} besides the teacher's "
            f"fine-tuning; {results['recipe']}). "
            f"Trained on WikiText-2's validation split in batches of {batch} x {length} tokens, every student for "
            f"the same {results['steps']:,} steps; perplexity and next-token accuracy on the first 300 lines of its "
            "test split; retention is the fine-tuned teacher's perplexity over the model's; parameters with the "
            "non-embedding ones in brackets.", "",
            *_table(["model", "perplexity", "next-token accuracy", "retention", "params", "steps (time)"], rows), "",
            f"One training step of the distilled student (forward, loss against stored teacher logits over "
            f"{batch} x {length} x 49,152, backward, AdamW) with each loss, on the same batch: median seconds of "
            f"3 after a warm-up and the peak resident memory the first step adds (a fresh process each); TRL's "
            f"step takes {ratio:.2f}x kd's.", "",
            *_table(["loss", "seconds", "peak extra MiB"], steps), "",
            "The first greedy generation of each model (32 new tokens after the first 16 tokens of the first "
            "held-out sequence):", "",
            *_table(["model", "continuation"], [[name, _text(g["continuation"])]
                                                 for name, g in results["generations"].items()]),
            "", f"Prompt: {_text(results['generations']['teacher']['prompt'])}"]


def _perplexity(value: float) -> str:
    return f"{value:.2f}" if value < 1e5 else f"{value:.2e}"


def _text(text: str) -> str:
    """Generated text on one line of Markdown: tokens such as <unk> shown, not read as HTML."""
    return " ".join(text.split()).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def token_losses(results: dict[str, Any], source: str, selection: str = "token") -> list[str]:
    """Token-level divergences over a 49,152 vocabulary (a pytest-benchmark file of the kernel
    suite's cases ``-k selection``): time and peak extra memory of kd's loss and its peers, each
    case's ratios within that one run."""
    machine = results["machine_info"]
    lines = [f"Measured on {results['datetime'][:10]} by "
             f"`pytest benchmarks/test_kernels.py -k {selection} "
             f"--benchmark-enable --benchmark-json={source}` ({machine['cpu']['brand_raw']}, "
             f"{machine['cpu']['count']} cores): forward+backward of one loss, mean of 3 timed rounds after one "
             "warm-up; peak extra memory beyond the inputs and the gradients autograd returns, in a fresh process "
             "(benchmarks/memory_probe.py).", ""]
    groups: dict[str, dict[str, dict[str, Any]]] = {}
    for bench in results["benchmarks"]:
        if selection in bench["name"]:
            groups.setdefault(bench["group"], {})[bench["params"]["impl"]] = bench
    rows = []
    for group, impls in groups.items():
        base = impls["kd"]
        for impl, bench in impls.items():
            ratio = "" if impl == "kd" else f" ({bench['stats']['mean'] / base['stats']['mean']:.2f}x)"
            memory = bench["extra_info"]["peak_extra_mib"]
            share = "" if impl == "kd" else f" ({base['extra_info']['peak_extra_mib'] / max(memory, 0.1):.3f} of it)"
            rows.append([f"`{group}`", impl, f"{bench['stats']['mean']:.2f} s{ratio}", f"{memory:,.1f} MiB{share}"])
    return lines + _table(["case", "implementation", "time (x kd)", "peak extra memory (kd's share)"], rows)


def fused_linear_losses(results: dict[str, Any], source: str) -> list[str]:
    """:func:`token_losses` of the kernel suite's fused-linear cases (hidden states and LM heads)."""
    return token_losses(results, source, "fused_linear")


BLOCKS: dict[str, tuple[str, Callable[[dict[str, Any], str], list[str]]]] = {
    "demo": ("demo-cpu-x86_64-2cores.json", demo),
    "demo_recipe": ("demo-recipe-selection.json", demo_recipe),
    "augmentation": ("augmentation-cpu-x86_64-2threads.json", augmentation),
    "probing": ("probing-demo.json", probing),
    "etd_convergence": ("etd-convergence-cpu-x86_64-2threads.json", etd_convergence),
    "teacher_cache_topk": ("teacher-cache-topk.json", teacher_cache_topk),
    "step_normalization": ("step-normalization.json", step_normalization),
    "multi_teacher": ("multi-teacher-sst2.json", multi_teacher),
    "squad": ("squad-cpu-x86_64-2cores.json", squad),
    "general": ("general-cpu-x86_64-2threads.json", general),
    "small_tasks": ("small-tasks-cpu-x86_64-2cores.json", small_tasks),
    "causal_lm": ("causal-lm-cpu-x86_64-2cores.json", causal_lm),
    "token_losses": ("token-losses-cpu-x86_64-2cores.json", token_losses),
    "fused_linear_losses": ("fused-linear-losses-cpu-x86_64-2cores.json", fused_linear_losses),
}
"""Each README block: the results file it is rendered from, and how."""


def render(name: str) -> str:
    """The block ``name`` with its markers, rendered from its file."""
    file, renderer = BLOCKS[name]
    source = f"benchmarks/results/{file}"
    body = renderer(json.loads((RESULTS / file).read_text(encoding="utf-8")), source)
    return "\n".join([f"<!-- results:{name} -->", *body, f"<!-- /results:{name} -->"])


BLOCK = re.compile(r"<!-- results:(\w+) -->.*?<!-- /results:\1 -->", re.S)


def update(text: str) -> str:
    """``text`` with every result block rendered anew; an unknown block name fails."""
    unknown = [m.group(1) for m in BLOCK.finditer(text) if m.group(1) not in BLOCKS]
    if unknown:
        raise SystemExit(f"README.md has result blocks no results file renders: {', '.join(unknown)}")
    return BLOCK.sub(lambda m: render(m.group(1)), text)


def pages() -> list[Path]:
    """The pages that may hold result blocks: the README and every page of the docs site."""
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or with ``--check``, compare) the result blocks of the README and the docs pages;
    every block of :data:`BLOCKS` must stand in exactly one page."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="Only check that the pages are up to date.")
    args = parser.parse_args(argv)
    texts = {page: page.read_text(encoding="utf-8") for page in pages()}
    where: dict[str, list[str]] = {}
    for page, text in texts.items():
        for match in BLOCK.finditer(text):
            where.setdefault(match.group(1), []).append(str(page.relative_to(ROOT)))
    missing = [name for name in BLOCKS if name not in where]
    twice = {name: found for name, found in where.items() if len(found) > 1}
    if missing or twice:
        print(f"result blocks in no page: {', '.join(missing) or 'none'}; in several: {twice or 'none'}")
        return 1
    stale = []
    for page, text in texts.items():
        updated = update(text)
        if updated != text:
            stale.append(str(page.relative_to(ROOT)))
            if not args.check:
                page.write_text(updated, encoding="utf-8")
    if args.check and stale:
        print(f"{', '.join(stale)}: result blocks differ from benchmarks/results; run python -m "
              "benchmarks.readme_results")
        return 1
    rewritten = ", ".join(stale) or "none"
    print(f"result blocks rendered from benchmarks/results ({len(where)} blocks; rewritten: {rewritten})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
