"""Tang et al. (2019), "Distilling Task-Specific Knowledge from BERT into Simple Neural Networks",
section 3.3: the rule-based augmentation that grows a transfer set for a BiLSTM student.

For every word draw X ~ U[0, 1]: if X < p_mask the word becomes the mask token; if
p_mask <= X < p_mask + p_pos it becomes a word with the same POS tag, drawn from the training
corpus's unigram distribution of words with that tag; otherwise it stays. Then, with probability
p_ng, keep only a random n-gram of the result, n uniform in ``ngram`` (1 to 5). The paper's
settings are p_mask = p_pos = 0.1, p_ng = 0.25 and 20 variants per example.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence

from kd_augment.pos import DEFAULT_TAGGER, SpacyTagger
from kd_core.errors import ConfigError


class TangRules:
    """Masking, POS-guided word replacement and n-gram sampling, as in the module docstring.

    ``fit`` tags the corpus once (only when ``p_pos > 0``) and learns, per tag, the words and
    their frequencies; texts not seen in ``fit`` are tagged when first edited.
    """

    def __init__(self, p_mask: float = 0.1, p_pos: float = 0.1, p_ng: float = 0.25,
                 ngram: Sequence[int] = (1, 5), mask: str = "[MASK]", tagger: str = DEFAULT_TAGGER) -> None:
        for name, value in (("p_mask", p_mask), ("p_pos", p_pos), ("p_ng", p_ng)):
            if not 0 <= value <= 1:
                raise ConfigError(f"augmenter 'tang': {name} must lie in [0, 1], got {value}")
        if p_mask + p_pos > 1:
            raise ConfigError(f"augmenter 'tang': p_mask + p_pos must be at most 1, got {p_mask + p_pos}")
        if len(ngram) != 2 or not 1 <= ngram[0] <= ngram[1]:
            raise ConfigError(f"augmenter 'tang': ngram is the range [n_min, n_max] of n-gram lengths, got {ngram}")
        self.p_mask, self.p_pos, self.p_ng = p_mask, p_pos, p_ng
        self.ngram = (int(ngram[0]), int(ngram[1]))
        self.mask = mask
        self.tagger = SpacyTagger(tagger) if p_pos > 0 else None
        self._tags: dict[str, list[str]] = {}
        self._vocabulary: dict[str, tuple[list[str], list[int]]] = {}

    def fit(self, texts: Sequence[str]) -> None:
        """Tag the corpus and count, per tag, how often each word carries it."""
        if self.tagger is None:
            return
        unique = list(dict.fromkeys(texts))
        tagged = self.tagger.tag([t.split() for t in unique])
        counts: dict[str, Counter] = defaultdict(Counter)
        for text, tags in zip(unique, tagged, strict=True):
            self._tags[text] = tags
            for word, tag in zip(text.split(), tags, strict=True):
                counts[tag][word] += 1
        self._vocabulary = {tag: (list(c), list(itertools.accumulate(c.values()))) for tag, c in counts.items()}

    def _tags_of(self, text: str, words: list[str]) -> list[str]:
        if text not in self._tags:
            self._tags[text] = self.tagger.tag([words])[0]
        return self._tags[text]

    def variants(self, text: str, rng: random.Random) -> Iterator[str]:
        """Endless independent applications of the rules to ``text``."""
        words = text.split()
        tags = self._tags_of(text, words) if self.tagger is not None else [None] * len(words)
        while True:
            out = []
            for word, tag in zip(words, tags, strict=True):
                x = rng.random()
                if x < self.p_mask:
                    out.append(self.mask)
                elif x < self.p_mask + self.p_pos and tag in self._vocabulary:
                    candidates, cumulative = self._vocabulary[tag]
                    out.append(rng.choices(candidates, cum_weights=cumulative)[0])
                else:
                    out.append(word)
            if rng.random() < self.p_ng:
                n = rng.randint(*self.ngram)
                start = rng.randrange(max(1, len(out) - n + 1))
                out = out[start:start + n]
            yield " ".join(out)
