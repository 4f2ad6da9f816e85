"""TextBrewer's token edits (``textbrewer.data_utils``), drawn from a ``random.Random`` so that a
seed fixes them, and the augmenters that apply one of them to the words of a text.

Each edit takes a list of tokens and returns a new list; the input is never changed.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from kd_core.errors import ConfigError

Tokens = list[Any]


def masking(tokens: Sequence[Any], rng: random.Random, p: float = 0.1, mask: str = "[MASK]") -> Tokens:
    """Each token replaced by ``mask`` with probability ``p``."""
    return [mask if rng.random() < p else token for token in tokens]


def deleting(tokens: Sequence[Any], rng: random.Random, p: float = 0.1) -> Tokens:
    """Each token deleted with probability ``p``."""
    return [token for token in tokens if rng.random() >= p]


def n_gram_sampling(tokens: Sequence[Any], rng: random.Random, p_ng: Sequence[float] = (0.2,) * 5,
                    l_ng: Sequence[int] = (1, 2, 3, 4, 5)) -> Tokens:
    """A random span of the tokens, its length drawn from ``l_ng`` with probabilities ``p_ng``
    (the whole list when it is shorter)."""
    length = rng.choices(list(l_ng), weights=list(p_ng))[0]
    start = rng.randrange(max(1, len(tokens) - length + 1))
    return list(tokens[start:start + length])


def short_disorder(tokens: Sequence[Any], rng: random.Random,
                   p: Sequence[float] = (0.9, 0.1, 0.0, 0.0, 0.0)) -> Tokens:
    """Local reorderings: at each position, with the probabilities ``p``, the 3-gram ``abc`` stays,
    or becomes ``bac``, ``cba``, ``cab`` or ``bca`` (a swap of the last two tokens when only two
    are left); the scan then moves past the reordered tokens."""
    out = list(tokens)
    i = 0
    while i < len(out) - 1:
        kind = rng.choices(range(5), weights=list(p))[0]
        if (kind != 0 and i == len(out) - 2) or kind == 1:
            out[i], out[i + 1] = out[i + 1], out[i]
            i += 2
        elif kind == 2:
            out[i], out[i + 2] = out[i + 2], out[i]
            i += 3
        elif kind == 3:
            out[i], out[i + 1], out[i + 2] = out[i + 2], out[i], out[i + 1]
            i += 3
        elif kind == 4:
            out[i], out[i + 1], out[i + 2] = out[i + 1], out[i + 2], out[i]
            i += 3
        else:
            i += 1
    return out


def long_disorder(tokens: Sequence[Any], rng: random.Random, p: float = 0.1, length: float = 20) -> Tokens:
    """Long-range reorderings: at each position, with probability ``p``, the two halves of the
    span of ``length`` tokens starting there swap places (``length <= 1`` is a fraction of the
    text's length; the span is rounded up to an even number of tokens)."""
    out = list(tokens)
    if int(length) <= 1:
        length = len(tokens) * length
    span = (int(length) + 1) // 2 * 2
    half = span // 2
    i = 0
    while span and i <= len(out) - span:
        if rng.random() < p:
            out[i:i + half], out[i + half:i + span] = out[i + half:i + span], out[i:i + half]
            i += span
        else:
            i += 1
    return out


EDITS: dict[str, Callable[..., Tokens]] = {
    "masking": masking, "deleting": deleting, "n_gram_sampling": n_gram_sampling,
    "short_disorder": short_disorder, "long_disorder": long_disorder,
}


class TokenEditAugmenter:
    """An augmenter applying one token edit, with fixed options, to the whitespace-separated
    words of a text; each variant is one independent draw of the edit."""

    def __init__(self, edit: str, **options: Any) -> None:
        if edit not in EDITS:
            raise ConfigError(f"unknown token edit {edit!r}; the edits are {', '.join(EDITS)}")
        self.edit = EDITS[edit]
        try:
            inspect.signature(self.edit).bind([], random.Random(), **options)
        except TypeError as exc:
            raise ConfigError(f"augmenter {edit!r}: {exc}") from None
        _check_probabilities(edit, options)
        self.options = options

    def fit(self, texts: Sequence[str]) -> None:
        """Nothing to learn: the edits read only the text itself."""

    def variants(self, text: str, rng: random.Random) -> Iterator[str]:
        """Endless independent edits of ``text``."""
        words = text.split()
        while True:
            yield " ".join(self.edit(words, rng, **self.options))


def _check_probabilities(edit: str, options: dict[str, Any]) -> None:
    value = options.get("p")
    if edit == "short_disorder" and value is not None and not isinstance(value, (list, tuple)):
        raise ConfigError(f"augmenter {edit!r}: p gives the probabilities of 5 reorderings, got {value!r}")
    if isinstance(value, (int, float)) and not 0 <= value <= 1:
        raise ConfigError(f"augmenter {edit!r}: p must lie in [0, 1], got {value}")
    for name in ("p", "p_ng"):
        value = options.get(name)
        if isinstance(value, (list, tuple)) and (any(v < 0 for v in value) or abs(sum(value) - 1) > 1e-6):
            raise ConfigError(f"augmenter {edit!r}: {name} must be probabilities that sum to 1, got {list(value)}")
    if edit == "n_gram_sampling" and len(options.get("p_ng", (0,) * 5)) != len(options.get("l_ng", (0,) * 5)):
        raise ConfigError(f"augmenter {edit!r}: p_ng and l_ng must have the same length")
    if edit == "short_disorder" and "p" in options and len(options["p"]) != 5:
        raise ConfigError(f"augmenter {edit!r}: p gives the probabilities of 5 reorderings, got {list(options['p'])}")


def token_edit_factory(edit: str) -> Callable[..., TokenEditAugmenter]:
    """The registered factory of the augmenter applying ``edit``: ``factory(**options)``."""
    def factory(**options: Any) -> TokenEditAugmenter:
        return TokenEditAugmenter(edit, **options)

    factory.__name__ = edit
    factory.__doc__ = f"TextBrewer's {edit!r} token edit as an augmenter. {EDITS[edit].__doc__}"
    return factory
