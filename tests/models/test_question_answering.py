"""The question_answering task: SQuAD files, windows, post-processing, metrics, recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from kd_core import ConfigError, get_task
from kd_core.cli import build_cli
from kd_core.features import MASKED_LOGIT as MASKED
from kd_core.inference import RunSettings
from kd_core.labelling import label_file
from kd_core.schema import DataFile, ModelSpec
from kd_models.question_answering import QuestionAnsweringTask, first_sentence
from kd_models.squad import Question, exact_match, f1, has_answer_f1, no_answer_f1, normalize_answer, read_questions

ROOT = Path(__file__).resolve().parents[2]
SQUAD = ROOT / "examples" / "data" / "squad11"
RECIPE = ROOT / "examples" / "recipes" / "squad.yaml"
FIELDS = {"text": ["question", "context"], "label": "answers"}


class GoldAdaptor:
    """Start and end logits that peak at each window's labelled answer tokens."""

    def run(self, model, batch, needs):
        size, length = batch["input_ids"].shape
        logits = torch.zeros(size, 2, length).scatter_(2, batch["labels"][:, :, None], 10.0)
        return {"logits": logits.masked_fill(~batch["context_mask"].bool()[:, None, :], MASKED)}


def test_answers_are_normalised_as_squad_does() -> None:
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert normalize_answer("theatre") == "theatre", "articles go only as whole words"


def test_hand_worked_scores() -> None:
    # pred tokens [cat, sat] against [cat, sat, on, mat]: precision 1, recall 1/2, F1 2/3
    assert f1(["the cat sat"], [["cat sat on the mat"]]) == pytest.approx(2 / 3)
    assert exact_match(["the cat sat"], [["cat sat on the mat"]]) == 0.0
    # the best reference counts: the second one matches exactly
    assert exact_match(["Broncos"], [["Denver Broncos", "the broncos"]]) == 1.0
    assert f1(["Denver"], [["Denver Broncos", "Carolina"]]) == pytest.approx(2 * 1 * 0.5 / 1.5)
    # mean over questions
    assert exact_match(["a", "b"], [["a"], ["c"]]) == 0.5
    # SQuAD v2.0: an unanswerable question is right only when the prediction is empty
    predictions, answers = ["", "x", "cat"], [[], [], ["cat"]]
    assert no_answer_f1(predictions, answers) == 0.5
    assert has_answer_f1(predictions, answers) == 1.0
    assert f1(predictions, answers) == pytest.approx(2 / 3)


def test_predictions_that_equal_a_reference_score_100() -> None:
    questions = read_questions(SQUAD / "part-b.json", limit=300)
    answers = [q.answers for q in questions]
    assert exact_match([a[-1] for a in answers], answers) == 1.0 == f1([a[-1] for a in answers], answers)


def test_squad_json_and_json_lines_read_the_same_questions(tmp_path: Path) -> None:
    questions = read_questions(SQUAD / "part-a.json", limit=5, skip=2)
    lines = tmp_path / "qa.jsonl"
    lines.write_text("".join(json.dumps({"question": q.question, "context": q.context, "id": q.id,
                                         "answers": {"text": q.answers, "answer_start": q.answer_starts}}) + "\n"
                             for q in questions))
    assert read_questions(lines) == questions
    assert [q.id for q in read_questions(SQUAD / "part-a.json", limit=7)][2:] == [q.id for q in questions]


def test_a_misplaced_answer_names_the_question(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q?", "context": "alpha beta", "answers": [{"text": "beta",
                                                                                         "answer_start": 0}]}) + "\n")
    with pytest.raises(ConfigError, match=r"bad.jsonl question 1: answer 'beta' is not at character 0"):
        read_questions(bad)
    with pytest.raises(ConfigError, match=r"no field 'query'"):
        read_questions(bad, question="query")


def test_gold_spans_through_the_post_processing_score_100_on_part_b(minilm_path: Path) -> None:
    task = QuestionAnsweringTask(max_answer_length=384)  # the gold answers include long ones
    spec = ModelSpec(model=str(minilm_path))
    dataset = task.read(DataFile(path=str(SQUAD / "part-b.json"), **FIELDS), spec, 384, None, "data.eval")
    assert len(dataset.questions) == 5609 and len(dataset.windows) > 5609, "long contexts give several windows"
    answers = task.predict(torch.nn.Linear(1, 1), GoldAdaptor(), dataset, task.collator(spec), RunSettings(64))
    golds = [q.answers for q in dataset.questions]
    # a span of tokens cannot give an answer that ends inside a word ("four" of "fourth"): such
    # questions are set apart by the offsets alone, and only they miss
    tokenizer = task.collator(spec).tokenizer
    unreachable = [i for i, q in enumerate(dataset.questions) if not any(
        _token_aligned(tokenizer, q.context, a, s) for a, s in zip(q.answers, q.answer_starts, strict=True))]
    kept = [i for i in range(len(golds)) if i not in unreachable]
    assert exact_match([answers[i] for i in kept], [golds[i] for i in kept]) == 1.0
    assert f1([answers[i] for i in kept], [golds[i] for i in kept]) == 1.0
    assert len(unreachable) == 1 and exact_match(answers, golds) == pytest.approx(5608 / 5609)


def _token_aligned(tokenizer, context: str, answer: str, start: int) -> bool:
    offsets = tokenizer(context, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]
    return start in {a for a, _ in offsets} and start + len(answer) in {b for _, b in offsets}


def test_windows_with_doc_stride_find_answers_a_single_window_cuts_off(minilm_path: Path) -> None:
    filler = " ".join(f"Sentence number {i} says nothing much." for i in range(40))
    context = f"{filler} The treasure lies under the old oak tree."
    question = Question("long", "Where does the treasure lie?", context, ["under the old oak tree"],
                        [context.index("under the old oak tree")])
    task = QuestionAnsweringTask(doc_stride=32)
    spec = ModelSpec(model=str(minilm_path))
    tokenizer = task.collator(spec).tokenizer
    windows = task.windows([question], tokenizer, 128)
    assert len(windows) >= 3
    first_end = max(o[1] for o in windows[0].offsets if o is not None)
    assert first_end < question.answer_starts[0], "one window of 128 tokens does not reach the answer"
    assert windows[0].start == windows[0].cls_index and windows[-1].start != windows[-1].cls_index
    from kd_models.question_answering import QuestionAnsweringDataset

    dataset = QuestionAnsweringDataset([question], windows)
    assert task.predict(torch.nn.Linear(1, 1), GoldAdaptor(), dataset, task.collator(spec),
                        RunSettings(4)) == ["under the old oak tree"]


def test_features_mask_everything_but_the_context(tiny_qa_teacher: Path) -> None:
    task = get_task("question_answering")
    spec = ModelSpec(model=str(tiny_qa_teacher))
    dataset = task.read(DataFile(path=str(SQUAD / "part-a.json"), limit=3, **FIELDS), spec, 128, None, "data.train")
    batch = task.collator(spec)([dataset[i] for i in range(3)])
    model = task.load_teacher(spec)
    features = task.adaptor(model).run(model, batch, __import__("kd_core").FeatureNeeds({"logits": set()}))
    logits, context = features["logits"], batch["context_mask"].bool()
    assert logits.shape == (3, 2, batch["input_ids"].shape[1]) and features["labels"].shape == (3, 2)
    assert (logits[:, 0][~context] == MASKED).all() and (logits[:, 0][context] != MASKED).all()
    assert context[:, 0].all(), "[CLS], the null answer, stays"
    with torch.no_grad():
        hf = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
        from kd_core.loss_plan import hard_label_loss

        loss = hard_label_loss({**features, "logits": features["logits"].detach()})
    outside = ~context
    start = torch.nn.functional.cross_entropy(hf.start_logits.masked_fill(outside, MASKED), batch["start_positions"])
    end = torch.nn.functional.cross_entropy(hf.end_logits.masked_fill(outside, MASKED), batch["end_positions"])
    assert float(loss) == pytest.approx(float(start + end) / 2, rel=1e-5), \
        "the hard-label loss is the mean of the start and end cross-entropies over the context"


def test_baseline_answers_with_the_first_sentence() -> None:
    assert first_sentence("Alpha beta. Gamma delta! Eps") == "Alpha beta."


def test_a_classification_metric_is_refused_for_question_answering() -> None:
    from kd_core import get_metric

    with pytest.raises(ConfigError, match="'accuracy' reads labels, but task question_answering gives metrics "
                                          "answers"):
        get_metric("accuracy", get_task("question_answering"), "question_answering")


def test_the_squad_recipe_trains_distills_and_scores_em_and_f1(tmp_path: Path, tiny_qa_teacher: Path) -> None:
    small = ["--set", f"teacher.model={tiny_qa_teacher}", "--set", "data.train.limit=24", "--set",
             "data.eval.limit=12", "--set", "data.max_length=96", "--set", "training.num_epochs=null", "--set",
             "training.num_steps=3", "--set", "teacher.finetune={num_steps: 2}", "--set", "training.batch_size=8",
             "--set", "student.config={num_hidden_layers: 2, hidden_size: 32, intermediate_size: 64}",
             "--set", "student.init.num_batches=2"]
    result = CliRunner().invoke(build_cli(), ["distill", str(RECIPE), "-o", str(tmp_path / "run"), *small])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["metric"] == "f1"
    for side in ("teacher", "student"):
        assert set(report[side]["metrics"]) == {"f1", "exact_match"}
        assert 0 <= report[side]["value"] <= 1 and report[side]["chance"] > 0, "the first sentence scores some F1"
    assert "retention" in report["student"]
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"kd", "hard_label", "match0.attention_kl", "match1.value_relation_kl"} <= set(steps[-1])
    from transformers import AutoModelForQuestionAnswering

    student = AutoModelForQuestionAnswering.from_pretrained(tmp_path / "run" / "student")
    assert student.config.num_hidden_layers == 2 and student.qa_outputs.in_features == 32
    size = CliRunner().invoke(build_cli(), ["size", str(tmp_path / "run" / "student"), "--task", "question_answering",
                                            "--json"])
    assert size.exit_code == 0 and "qa_outputs" in size.output


def test_squad_v2_unanswerable_questions_learn_cls_and_get_the_empty_answer(tmp_path: Path, minilm_path: Path) -> None:
    context = "The river flows north to the sea."
    document = {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": "a", "question": "Where does the river flow?", "is_impossible": False,
         "answers": [{"text": "north", "answer_start": context.index("north")}]},
        {"id": "b", "question": "Who built the river?", "is_impossible": True, "answers": [],
         "plausible_answers": [{"text": "sea", "answer_start": context.index("sea")}]}]}]}]}
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(document))
    task = QuestionAnsweringTask(version_2_with_negative=True)
    spec = ModelSpec(model=str(minilm_path))
    dataset = task.read(DataFile(path=str(path), **FIELDS), spec, 64, None, "data.eval")
    assert [q.answers for q in dataset.questions] == [["north"], []]
    unanswerable = dataset.windows[1]
    assert unanswerable.start == unanswerable.end == unanswerable.cls_index
    answers = task.predict(torch.nn.Linear(1, 1), GoldAdaptor(), dataset, task.collator(spec), RunSettings(2))
    assert answers == ["north", ""], "the null score wins where [CLS] was learned"
    golds = [q.answers for q in dataset.questions]
    assert exact_match(answers, golds) == 1.0 == no_answer_f1(answers, golds) == has_answer_f1(answers, golds)
    v1 = QuestionAnsweringTask().predict(torch.nn.Linear(1, 1), GoldAdaptor(), dataset, task.collator(spec),
                                         RunSettings(2))
    assert v1[1] != "", "SQuAD v1.1 always answers with a span"


def _qa_data(teacher: Path, max_length: int = 64, **file) -> tuple:
    task = get_task("question_answering")
    spec = ModelSpec(model=str(teacher))
    fields = {"path": str(SQUAD / "part-a.json"), "limit": 5, **FIELDS, **file}
    return task, spec, task.read(DataFile(**fields), spec, max_length, None, "data.train")


def test_the_teacher_cache_gives_every_window_the_teachers_own_logits(tiny_qa_teacher: Path, tmp_path: Path) -> None:
    from kd_core import FeatureNeeds
    from kd_core.teacher_cache import TeacherCache

    task, spec, dataset = _qa_data(tiny_qa_teacher)
    lengths = [len(w.inputs["input_ids"]) for w in dataset.windows]
    assert len(dataset) > 5 and len(set(lengths)) > 1, "several windows per question, of several lengths"
    model = task.load_teacher(spec).eval()
    adaptor = task.adaptor(model)
    needs = FeatureNeeds({"logits": set()})
    collate = task.collator(spec)
    cache = TeacherCache(model, tmp_path / "cache", logits_over_tokens=adaptor.logits_over_tokens)
    with torch.no_grad():
        for start in range(0, len(dataset), 4):
            batch = collate([dataset[i] for i in range(start, min(start + 4, len(dataset)))])
            cache.features(batch, needs, lambda batch=batch: adaptor.run(model, batch, needs))
        # served to batches of another make-up: the shortest windows beside the longest, so other padding
        order = sorted(range(len(dataset)), key=lambda i: lengths[i])
        mixed = collate([dataset[i] for i in (order[0], order[-1], order[1])])
        served = cache.features(mixed, needs, lambda: pytest.fail("the teacher ran for a cached window"))
        online = adaptor.run(model, mixed, needs)["logits"]
    torch.testing.assert_close(served["logits"], online, rtol=1e-5, atol=1e-5)
    padding = ~mixed["attention_mask"].bool()
    assert padding.any() and (served["logits"].transpose(1, 2)[padding] == MASKED).all(), \
        "padded positions get no probability"


def _label_squad(teacher: Path, output: Path, max_length: int = 64) -> list[dict]:
    result = CliRunner().invoke(build_cli(), [
        "augment", "label", str(SQUAD / "part-a.json"), "--task", "question_answering", "-c", "question", "-c",
        "context", "-l", "answers", "--limit", "5", "--max-length", str(max_length), "--batch-size", "3",
        "-t", str(teacher), "-o", str(output), "-q"])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in output.read_text().splitlines()]


def test_kd_augment_label_writes_each_question_with_its_windows_logits(tiny_qa_teacher: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from kd_core import FeatureNeeds
    from kd_core.features import TEACHER_LOGITS
    from kd_models.adaptors import HFAdaptor

    rows = _label_squad(tiny_qa_teacher, tmp_path / "clean.jsonl")
    task, spec, dataset = _qa_data(tiny_qa_teacher)
    assert [r["question"] for r in rows] == [q.question for q in dataset.questions]
    assert [len(r[TEACHER_LOGITS]) for r in rows] == [dataset.example_rows.count(q) for q in range(5)]
    assert read_questions(tmp_path / "clean.jsonl") == read_questions(SQUAD / "part-a.json", limit=5), \
        "the labelled rows read back as the same questions with the same answers"

    _, _, labelled = _qa_data(tiny_qa_teacher, path=str(tmp_path / "clean.jsonl"), teacher_logits=TEACHER_LOGITS)
    model = task.load_teacher(spec).eval()
    batch = task.collator(spec)([labelled[i] for i in range(len(labelled))])
    with torch.no_grad():
        online = task.adaptor(model).run(model, batch, FeatureNeeds({"logits": set()}))["logits"]
    torch.testing.assert_close(batch[TEACHER_LOGITS], online, rtol=1e-5, atol=1e-5)

    calls = []
    original_run = HFAdaptor.run

    def interrupted(self, model, batch, needs):
        calls.append(len(batch["input_ids"]))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original_run(self, model, batch, needs)

    monkeypatch.setattr(HFAdaptor, "run", interrupted)
    output = tmp_path / "resumed.jsonl"
    with pytest.raises(KeyboardInterrupt):
        label_file(task, spec, DataFile(path=str(SQUAD / "part-a.json"), limit=5, **FIELDS), output, max_length=64,
                   batch_size=3, progress=False)
    kept = output.read_text().splitlines()
    assert len(kept) < 5 and all(len(json.loads(r)[TEACHER_LOGITS]) == dataset.example_rows.count(i)
                                 for i, r in enumerate(kept)), "only whole questions were written"
    monkeypatch.setattr(HFAdaptor, "run", original_run)
    assert _label_squad(tiny_qa_teacher, output) == rows


def test_stored_logits_from_another_max_length_are_refused(tiny_qa_teacher: Path, tmp_path: Path) -> None:
    _label_squad(tiny_qa_teacher, tmp_path / "labelled.jsonl", max_length=64)
    with pytest.raises(ConfigError, match=r"at max_length 96 it reads .* label the file with the recipe's "
                                          r"data.max_length"):
        _qa_data(tiny_qa_teacher, 96, path=str(tmp_path / "labelled.jsonl"), teacher_logits="teacher_logits")


def test_stored_and_cached_teacher_logits_distil_as_the_teacher_does(tiny_qa_teacher: Path, tmp_path: Path) -> None:
    from torch.utils.data import DataLoader
    from transformers import BertConfig, BertForQuestionAnswering

    from kd_core import DistillationConfig, GeneralDistiller, TrainingConfig
    from kd_core.features import TEACHER_LOGITS

    _label_squad(tiny_qa_teacher, tmp_path / "labelled.jsonl")
    task, spec, plain = _qa_data(tiny_qa_teacher)
    _, _, stored = _qa_data(tiny_qa_teacher, path=str(tmp_path / "labelled.jsonl"), teacher_logits=TEACHER_LOGITS)
    batches = -(-len(plain) // 4)
    runs = {}
    for name, dataset, caching in (("online", plain, False), ("stored", stored, False), ("cached", plain, True)):
        teacher = task.load_teacher(spec)
        torch.manual_seed(0)
        student = BertForQuestionAnswering(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                                      num_attention_heads=2, intermediate_size=64,
                                                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
        distiller = GeneralDistiller(TrainingConfig(output_dir=str(tmp_path / name), progress=False),
                                     DistillationConfig(temperature=4, kd_loss_type="ce", hard_label_weight=0.5,
                                                        is_caching_logits=caching),
                                     teacher, student, task.adaptor(teacher), task.adaptor(student))
        loader = DataLoader(dataset, batch_size=4, collate_fn=task.collator(spec))
        distiller.train(torch.optim.AdamW(student.parameters(), lr=1e-3), loader, num_epochs=2)
        runs[name] = (distiller.teacher_forwards, student.state_dict())
    assert [runs[n][0] for n in ("online", "stored", "cached")] == [2 * batches, 0, batches]
    for name in ("stored", "cached"):
        for key, value in runs["online"][1].items():
            torch.testing.assert_close(runs[name][1][key], value, rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")


def test_task_options_in_a_recipe_are_the_tasks_keyword_arguments() -> None:
    from kd_core.assembly import task_for
    from kd_core.schema import load_recipe

    recipe, _ = load_recipe(RECIPE, ["task_options={doc_stride: 64, max_answer_length: 12}"])
    task = task_for(recipe)
    assert isinstance(task, QuestionAnsweringTask) and (task.doc_stride, task.max_answer_length) == (64, 12)
    assert get_task("question_answering").doc_stride == 128, "the registered task is left as it is"
    recipe, _ = load_recipe(RECIPE, ["task_options={stride: 64}"])
    with pytest.raises(ConfigError, match="task question_answering has no option stride; its options are "
                                          "doc_stride, n_best"):
        task_for(recipe)
