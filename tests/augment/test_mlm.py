"""Masked-LM word replacement: candidates are the masked LM's best whole words at the masked
position, only words change and only into their candidates, p governs how many, and a seed fixes
the result. A tiny random BertForMaskedLM with MiniLM's WordPiece vocabulary stands in for BERT."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from kd_augment.mlm import MaskedLMReplace
from kd_core import ConfigError

TEXT = "the movie , sadly , is a wonderfully unpredictable mess"
MASKED_TEXT = "the [MASK] , sadly , is a wonderfully unpredictable mess"  # e.g. from another augmenter


def test_candidates_are_the_best_whole_words_at_the_mask(mlm_dir: Path) -> None:
    from transformers import AutoTokenizer, BertForMaskedLM

    augmenter = MaskedLMReplace(str(mlm_dir), candidates=5)
    tokenizer, model = AutoTokenizer.from_pretrained(mlm_dir), BertForMaskedLM.from_pretrained(mlm_dir).eval()
    for text in (TEXT, MASKED_TEXT):
        _check_candidates(text.split(), augmenter, tokenizer, model)


def _check_candidates(words, augmenter, tokenizer, model) -> None:
    found = augmenter.candidates(words)
    for i, word in enumerate(words):
        if word in (",", "[MASK]"):
            assert found[i] == [], "punctuation and masks have no candidates and are kept"
            continue
        assert len(found[i]) == 5
        masked = tokenizer(" ".join([*words[:i], "[MASK]", *words[i + 1:]]), return_tensors="pt")
        ids = masked["input_ids"][0].tolist()
        position = [j for j, t in enumerate(ids) if t == tokenizer.mask_token_id][int(i > 1 and "[MASK]" in words)]
        with torch.no_grad():
            logits = model(**masked).logits[0, position]
        chosen = tokenizer.convert_tokens_to_ids(found[i])
        assert all(not tokenizer.convert_ids_to_tokens(c).startswith("##") for c in chosen)
        assert word not in found[i]
        eligible = [t for t, index in tokenizer.get_vocab().items() if t not in tokenizer.all_special_tokens
                    and not t.startswith("##") and any(ch.isalnum() for ch in t) and t != word]
        scores = logits[tokenizer.convert_tokens_to_ids(eligible)]
        fifth_best = scores.topk(5).values[-1]
        assert logits[chosen].min() >= fifth_best - 1e-6, f"word {i}: {found[i]} are not the 5 best whole words"


def test_variants_replace_words_into_their_candidates_at_rate_p(mlm_dir: Path) -> None:
    words = TEXT.split()
    always = MaskedLMReplace(str(mlm_dir), p=1.0, candidates=3)
    options = always.candidates(words)
    variant = next(always.variants(TEXT, random.Random(0))).split()
    assert len(variant) == len(words)
    for new, old, allowed in zip(variant, words, options, strict=True):
        assert (new in allowed) if allowed else new == old
    assert next(MaskedLMReplace(str(mlm_dir), p=0.0).variants(TEXT, random.Random(0))) == TEXT
    half = MaskedLMReplace(str(mlm_dir), p=0.4)
    stream = half.variants(TEXT, random.Random(1))
    changed = sum(a != b for _ in range(200) for a, b in zip(next(stream).split(), words, strict=True))
    assert abs(changed / (200 * 8) - 0.4) < 0.05  # 8 of the 10 words have candidates


def test_one_seed_one_stream(mlm_dir: Path) -> None:
    first = MaskedLMReplace(str(mlm_dir)).variants(TEXT, random.Random(3))
    second = MaskedLMReplace(str(mlm_dir)).variants(TEXT, random.Random(3))
    assert [next(first) for _ in range(10)] == [next(second) for _ in range(10)]


def test_bad_settings_fail_clearly(mlm_dir: Path) -> None:
    with pytest.raises(ConfigError, match="p must lie"):
        MaskedLMReplace(str(mlm_dir), p=1.2)
    with pytest.raises(ConfigError, match="candidates must be at least 1"):
        MaskedLMReplace(str(mlm_dir), candidates=0)
