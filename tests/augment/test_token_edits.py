"""TextBrewer's token edits: the same results as textbrewer.data_utils wherever the outcome is
fixed by the settings, the advertised rates where it is random, the input never changed, and one
seed one result."""

from __future__ import annotations

import random

import pytest

from kd_augment.token_edits import (
    EDITS,
    TokenEditAugmenter,
    deleting,
    long_disorder,
    masking,
    n_gram_sampling,
    short_disorder,
)
from kd_core import ConfigError, lookup

TOKENS = list("abcdefghijk")


@pytest.mark.parametrize(("ours", "theirs"), [
    (lambda t, r: masking(t, r, p=1.0), lambda tb, t: tb.masking(t, p=1.0)),
    (lambda t, r: masking(t, r, p=0.0), lambda tb, t: tb.masking(t, p=0.0)),
    (lambda t, r: deleting(t, r, p=0.0), lambda tb, t: tb.deleting(t, p=0.0)),
    (lambda t, r: deleting(t, r, p=1.0), lambda tb, t: tb.deleting(t, p=1.0)),
    (lambda t, r: short_disorder(t, r, p=[0, 1, 0, 0, 0]), lambda tb, t: tb.short_disorder(t, p=[0, 1, 0, 0, 0])),
    (lambda t, r: short_disorder(t, r, p=[0, 0, 1, 0, 0]), lambda tb, t: tb.short_disorder(t, p=[0, 0, 1, 0, 0])),
    (lambda t, r: short_disorder(t, r, p=[0, 0, 0, 1, 0]), lambda tb, t: tb.short_disorder(t, p=[0, 0, 0, 1, 0])),
    (lambda t, r: short_disorder(t, r, p=[0, 0, 0, 0, 1]), lambda tb, t: tb.short_disorder(t, p=[0, 0, 0, 0, 1])),
    (lambda t, r: long_disorder(t, r, p=1, length=4), lambda tb, t: tb.long_disorder(t, p=1, length=4)),
    (lambda t, r: long_disorder(t, r, p=1, length=0.4), lambda tb, t: tb.long_disorder(t, p=1, length=0.4)),
    (lambda t, r: n_gram_sampling(t, r, p_ng=[1], l_ng=[len(t)]), lambda tb, t: tb.n_gram_sampling(t, [1], [len(t)])),
])
def test_deterministic_settings_match_textbrewer(ours, theirs, textbrewer_data_utils) -> None:
    # from 3 tokens up: TextBrewer's long_disorder never ends when a relative length rounds to 0
    for length in (3, 5, 8, 11):
        tokens = TOKENS[:length]
        assert ours(tokens, random.Random(0)) == theirs(textbrewer_data_utils, tokens), length


def test_random_edits_hit_their_rates() -> None:
    rng = random.Random(0)
    tokens = list(range(20_000))
    masked = masking(tokens, rng, p=0.3, mask=-1)
    assert abs(masked.count(-1) / len(tokens) - 0.3) < 0.015
    kept = deleting(tokens, rng, p=0.25)
    assert abs(len(kept) / len(tokens) - 0.75) < 0.015
    assert kept == sorted(kept), "deleting keeps the order of what it keeps"
    lengths = [len(n_gram_sampling(tokens, rng, p_ng=[0.5, 0.5], l_ng=[2, 4])) for _ in range(4000)]
    assert abs(lengths.count(2) / len(lengths) - 0.5) < 0.04 and set(lengths) == {2, 4}


def test_edits_keep_what_they_must() -> None:
    rng = random.Random(1)
    for _ in range(200):
        tokens = TOKENS[: rng.randint(0, len(TOKENS))]
        original = list(tokens)
        span = n_gram_sampling(tokens, rng)
        assert n_gram_sampling(tokens, rng, p_ng=[1], l_ng=[20]) == tokens, "a span longer than the text is all of it"
        assert any(tokens[i:i + len(span)] == span for i in range(max(1, len(tokens)))), "a contiguous span"
        assert sorted(short_disorder(tokens, rng, p=[0.2] * 5)) == sorted(tokens), "reordering keeps every token"
        assert sorted(long_disorder(tokens, rng, p=0.5, length=4)) == sorted(tokens)
        assert sorted(long_disorder(tokens, rng, p=1.0, length=0.1)) == sorted(tokens), "a span of 0 ends"
        masked = masking(tokens, rng, p=0.5)
        assert all(m in (t, "[MASK]") for m, t in zip(masked, tokens, strict=True))
        assert tokens == original, "edits never change their input"


def test_augmenters_are_registered_and_one_seed_gives_one_result() -> None:
    for name in EDITS:
        augmenter = lookup("augmenters", name)()
        stream = augmenter.variants("the film is a charming and often affecting journey", random.Random(5))
        again = augmenter.variants("the film is a charming and often affecting journey", random.Random(5))
        first = [next(stream) for _ in range(10)]
        assert first == [next(again) for _ in range(10)], name
    distinct = lookup("augmenters", "masking")(p=0.5).variants("a b c d e f g h", random.Random(0))
    assert len({next(distinct) for _ in range(30)}) > 10


def test_bad_options_fail_naming_the_edit() -> None:
    with pytest.raises(ConfigError, match=r"'masking'.*unexpected keyword"):
        TokenEditAugmenter("masking", q=0.1)
    with pytest.raises(ConfigError, match=r"p must lie in \[0, 1\]"):
        TokenEditAugmenter("deleting", p=1.5)
    with pytest.raises(ConfigError, match="sum to 1"):
        TokenEditAugmenter("short_disorder", p=[0.5, 0.1, 0, 0, 0])
    with pytest.raises(ConfigError, match="unknown token edit 'shuffle'"):
        TokenEditAugmenter("shuffle")
