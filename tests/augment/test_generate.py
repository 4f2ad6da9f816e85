"""Causal-LM generation: fine-tuning lowers the LM loss on the corpus, every sentence starts with a
training sentence's first token, a seed fixes the samples, a finished fine-tune is reused, and the
driver writes n new sentences, none a copy. A tiny random GPT-2 with a byte-level BPE trained on
the corpus stands in for the LM; the real SmolLM2-135M runs in the slow test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kd_augment.generate import FINE_TUNED, CausalLMGenerator, load_causal_lm
from kd_core.augmentation import augment_rows
from kd_core.data import read_records


def _corpus_loss(directory: Path, corpus: list[str]) -> float:
    model, tokenizer = load_causal_lm(str(directory))
    eos = tokenizer.eos_token_id
    total, count = 0.0, 0
    with torch.no_grad():
        for text in corpus:
            ids = torch.tensor([[eos, *tokenizer(text, add_special_tokens=False)["input_ids"], eos]])
            total += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return total / count


def test_fine_tuning_lowers_the_corpus_loss_and_is_reused(tiny_gpt2: Path, corpus: list[str], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    generator = CausalLMGenerator(str(tiny_gpt2), learning_rate=3e-3, progress=False)
    generator.fit(corpus, tmp_path)
    saved = tmp_path / FINE_TUNED
    assert _corpus_loss(saved, corpus) < _corpus_loss(tiny_gpt2, corpus) - 0.3
    monkeypatch.setattr(CausalLMGenerator, "_fine_tune", lambda *a: pytest.fail("the saved fine-tune was not reused"))
    again = CausalLMGenerator(str(tiny_gpt2), progress=False)
    again.fit(corpus, tmp_path)
    assert again.sample(4, seed=1) == generator.sample(4, seed=1)


def test_samples_start_with_training_first_tokens_and_follow_the_seed(tiny_gpt2: Path, corpus: list[str],
                                                                      tmp_path: Path) -> None:
    generator = CausalLMGenerator(str(tiny_gpt2), max_new_tokens=20, progress=False)
    generator.fit(corpus, tmp_path)
    tokenizer = generator.tokenizer
    firsts = {tokenizer.decode([tokenizer(t, add_special_tokens=False)["input_ids"][0]]).strip() for t in corpus}
    texts = generator.sample(30, seed=4)
    assert len(texts) == 30
    assert all(any(text.startswith(first) for first in firsts) for text in texts)
    assert generator.sample(30, seed=4) == texts
    assert generator.sample(30, seed=5) != texts


def test_driver_writes_n_new_sentences_none_a_copy(tiny_gpt2: Path, corpus: list[str], tmp_path: Path) -> None:
    rows = [{"sentence": t, "label": "1"} for t in corpus]
    output = tmp_path / "generated.jsonl"
    result = augment_rows(rows, ["sentence"], lambda: CausalLMGenerator(str(tiny_gpt2), max_new_tokens=30,
                                                                        progress=False),
                          output, n=40, seed=0, keep_original=True, progress=False, batch_size=16)
    records = read_records(output)
    new = [r["sentence"] for r in records if r["augmented"]]
    assert (result.rows, result.new, len(new)) == (len(rows) + 40, 40, 40)
    assert len(set(new)) == 40 and not set(new) & set(corpus) and all(new)
    assert [r["sentence"] for r in records if not r["augmented"]] == corpus
    assert not Path(f"{output}.work").exists(), "the work folder goes once the file is complete"


def test_a_fresh_run_and_a_resumed_one_write_the_same_file(tiny_gpt2: Path, corpus: list[str], tmp_path: Path) -> None:
    rows = [{"sentence": t} for t in corpus]

    def make(fail_after: int | None = None):
        generator = CausalLMGenerator(str(tiny_gpt2), learning_rate=1e-3, max_new_tokens=16, progress=False)
        if fail_after is not None:
            sample, calls = generator.sample, []

            def failing(count, seed):
                calls.append(seed)
                if len(calls) > fail_after:
                    raise KeyboardInterrupt
                return sample(count, seed)

            generator.sample = failing
        return generator

    def run(path: Path, fail_after: int | None = None) -> None:
        augment_rows(rows, ["sentence"], lambda: make(fail_after), path, n=30, seed=2, keep_original=False,
                     progress=False, batch_size=8)

    run(tmp_path / "a.jsonl")
    run(tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes(), "fine-tune and samples seeded"
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "c.jsonl", fail_after=2)
    assert any(Path(f"{tmp_path / 'c.jsonl'}.work").rglob("FINE_TUNED")), "the fine-tuned model is kept for resume"
    run(tmp_path / "c.jsonl")
    assert (tmp_path / "c.jsonl").read_bytes() == (tmp_path / "a.jsonl").read_bytes()


@pytest.mark.slow
def test_smollm2_generates_new_sentences_from_200_sst2_sentences(sst2_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    rows = read_records(sst2_dir / "train.tsv", limit=200)
    training = {row["sentence"].strip() for row in rows}
    output = tmp_path / "smollm2.jsonl"
    augment_rows(rows, ["sentence"], lambda: CausalLMGenerator(progress=False), output, n=50, seed=0,
                 keep_original=False, progress=False, batch_size=25)
    generated = [r["sentence"] for r in read_records(output)]
    assert len(generated) == 50 and all(text.strip() for text in generated)
    assert len(set(generated)) >= 45
    assert not training & set(generated)
    _, tokenizer = load_causal_lm()
    firsts = {tokenizer.decode([tokenizer(t, add_special_tokens=False)["input_ids"][0]]).strip() for t in training}
    assert all(any(text.startswith(first) for first in firsts) for text in generated)
