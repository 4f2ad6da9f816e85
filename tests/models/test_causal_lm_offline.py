"""Offline teacher logits for task causal_lm: ``kd augment label`` writes every sequence with the
teacher's logits (whole, or its top k and the rest's mass), a data file with ``teacher_logits``
reads them back as the very sequences and logits the teacher gives, and distillation from them
computes the loss the online teacher gives, without running the teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kd_core import ConfigError, GeneralDistiller, TrainingConfig, get_task
from kd_core.config import DistillationConfig
from kd_core.features import TEACHER_LOGITS
from kd_core.labelling import label_file
from kd_core.schema import DataFile, ModelSpec
from kd_models.causal_lm import CausalLMAdaptor, CausalLMTask
from tests.models.tiny import WIKITEXT, tiny_llama, wikitext_tokenizer


@pytest.fixture(autouse=True)
def _corpus_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "kd-cache"))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = wikitext_tokenizer()
    directory = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(len(tokenizer)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(WIKITEXT.read_text(encoding="utf-8").splitlines()[1:40]) + "\n", encoding="utf-8")
    return path


def _labelled(tmp_path: Path, llama_dir: Path, top_k: int | None, source: DataFile | None = None):
    task = get_task("causal_lm")
    spec = ModelSpec(model=str(llama_dir))
    output = tmp_path / f"labelled-{top_k}.jsonl"
    written = label_file(task, spec, source or DataFile(path=str(_corpus(tmp_path))), output, max_length=24,
                         batch_size=4, top_k=top_k, progress=False)
    data = task.read(DataFile(path=str(output), teacher_logits="teacher_logits"), spec, 24, None, "data.train")
    return task, spec, written, data


@pytest.mark.parametrize("top_k", [None, 5])
def test_labelled_sequences_read_back_with_the_teachers_logits(tmp_path: Path, llama_dir: Path,
                                                               top_k: int | None) -> None:
    task, spec, written, data = _labelled(tmp_path, llama_dir, top_k)
    online = task.read(DataFile(path=str(tmp_path / "corpus.txt")), spec, 24, None, "data.train")
    assert written == len(online) == len(data) > 4
    batch = task.collator(spec)([data[i] for i in range(4)])
    same = task.collator(spec)([online[i] for i in range(4)])
    assert torch.equal(batch["input_ids"], same["input_ids"]) and torch.equal(batch["labels"], same["labels"])
    teacher = task.load_teacher(spec).eval()
    with torch.no_grad():
        logits = teacher(input_ids=same["input_ids"], attention_mask=same["attention_mask"]).logits
    stored, real = batch[TEACHER_LOGITS], same["attention_mask"].bool()
    if top_k is None:
        torch.testing.assert_close(stored[real], logits[real], rtol=1e-5, atol=1e-5)
    else:  # the top k as they are; every other token shares the rest of the probability evenly
        values, indices = logits[real].topk(top_k, dim=-1)
        torch.testing.assert_close(stored[real].gather(-1, indices), values, rtol=1e-5, atol=1e-5)
        probabilities = stored[real].softmax(-1)
        torch.testing.assert_close(probabilities.sum(-1), torch.ones(int(real.sum())))
        torch.testing.assert_close(probabilities.gather(-1, indices), logits[real].softmax(-1).gather(-1, indices),
                                   rtol=1e-4, atol=1e-6)


def test_distilling_from_stored_logits_is_distilling_from_the_teacher(tmp_path: Path, llama_dir: Path) -> None:
    task, spec, _, data = _labelled(tmp_path, llama_dir, None)
    teacher = task.load_teacher(spec).eval()
    torch.manual_seed(0)
    student = tiny_llama(teacher.config.vocab_size, layers=2, seed=3)
    config = DistillationConfig(temperature=2, kd_loss_type="jsd", kd_loss_params={"beta": 0.5}, hard_label_weight=0.5)
    distiller = GeneralDistiller(TrainingConfig(output_dir=str(tmp_path / "run"), progress=False), config, teacher,
                                 student, CausalLMAdaptor(), CausalLMAdaptor())
    batch = task.collator(spec)([data[i] for i in range(4)])
    online = {k: v for k, v in batch.items() if k != TEACHER_LOGITS}
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    stored_terms = distiller.compute_losses(batch, 0.0)
    assert not calls, "the teacher does not run for stored logits"
    online_terms = distiller.compute_losses(online, 0.0)
    assert calls
    for name in ("kd", "hard_label"):
        torch.testing.assert_close(stored_terms[name], online_terms[name], rtol=1e-5, atol=1e-6)


def test_prompt_completion_pairs_keep_their_labels(tmp_path: Path, llama_dir: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Question {i} :", "completion": f"answer number {i} ."}) + "\n"
                             for i in range(6)), encoding="utf-8")
    source = DataFile(path=str(pairs), text=["prompt", "completion"])
    task, spec, _, data = _labelled(tmp_path, llama_dir, 3, source)
    online = task.read(source, spec, 24, None, "data.train")
    for i in range(len(online)):
        assert data[i]["labels"] == online[i]["labels"] and data[i]["input_ids"] == online[i]["input_ids"]
        assert data[i]["labels"][0] == -100, "the prompt is not learned"


def test_stored_logits_refuse_on_policy_batches_and_foreign_files(tmp_path: Path, llama_dir: Path) -> None:
    spec = ModelSpec(model=str(llama_dir))
    with pytest.raises(ConfigError, match="score the file's tokens, not the student's own samples"):
        CausalLMTask(on_policy=0.5).read(DataFile(path=str(tmp_path / "x.jsonl"), teacher_logits="teacher_logits"),
                                         spec, 24, None, "data.train")
    _labelled(tmp_path, llama_dir, 2)
    labelled = tmp_path / "labelled-2.jsonl"
    with pytest.raises(ConfigError, match=r"tokens, more than data\.max_length 8; label the data"):
        get_task("causal_lm").read(DataFile(path=str(labelled), teacher_logits="teacher_logits"), spec, 8, None,
                                   "data.train")
    row = json.loads(labelled.read_text(encoding="utf-8").splitlines()[0])
    row["input_ids"] = row["input_ids"][:-1]
    cut = tmp_path / "cut.jsonl"
    cut.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="row 1 has 23 tokens but 24 rows of teacher logits"):
        get_task("causal_lm").read(DataFile(path=str(cut), teacher_logits="teacher_logits"), spec, 24, None,
                                   "data.train")
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text(json.dumps({"text": "hello", "teacher_logits": [[0.1, 0.2]]}) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="row 1 is not a sequence labelled by kd augment label for task causal_lm"):
        get_task("causal_lm").read(DataFile(path=str(foreign), teacher_logits="teacher_logits"), spec, 24, None,
                                   "data.train")


def test_stored_logits_refuse_fused_linear_which_reads_the_teachers_hidden_states(tmp_path: Path,
                                                                                  llama_dir: Path) -> None:
    task, spec, _, data = _labelled(tmp_path, llama_dir, None)
    teacher = task.load_teacher(spec).eval()
    config = DistillationConfig(temperature=2, kd_loss_type="kl", fused_linear=True)
    distiller = GeneralDistiller(TrainingConfig(output_dir=str(tmp_path / "run"), progress=False), config, teacher,
                                 tiny_llama(teacher.config.vocab_size, layers=2, seed=3), CausalLMAdaptor(),
                                 CausalLMAdaptor())
    with pytest.raises(ConfigError, match="stored teacher logits"):
        distiller.compute_losses(task.collator(spec)([data[i] for i in range(2)]), 0.0)
