"""Contextual whole-word replacement with a masked language model (TinyBERT's data augmentation,
Jiao et al. 2020, section 3.1, without its GloVe fallback).

For each word of a text, the word (all its sub-word pieces) is replaced by one mask token and the
masked LM's ``candidates`` most likely whole words at that position become its candidates (words
equal to the original are left out). Words without a letter or digit, and mask tokens already in
the text, are kept. Unlike TinyBERT, stopwords are candidates too, and words of several pieces
get masked-LM candidates rather than GloVe neighbours. Each variant then replaces every word, with probability
``p``, by one of its candidates drawn uniformly. TinyBERT's settings are p = 0.4, 15 candidates
and 20 variants per example. Any Hugging Face masked LM works (BERT's WordPiece, RoBERTa's
byte-level BPE and SentencePiece vocabularies); a whole word is a vocabulary entry that starts a
word and holds a letter or digit.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from kd_core.errors import ConfigError
from kd_core.paths import resolve_model_path

WORD_START_MARKERS = ("Ġ", "▁")
"""Byte-level BPE (RoBERTa, GPT-2) and SentencePiece mark the first piece of a word with these;
WordPiece (BERT) marks the other pieces with ``##`` instead."""


class MaskedLMReplace:
    """TinyBERT-style replacement of whole words by a masked LM's predictions (module docstring).

    ``model`` is a directory, a Hugging Face name already in the local cache, or
    ``package:MODULE``; ``batch_size`` masked copies of a text run through the model at once.
    """

    def __init__(self, model: str, p: float = 0.4, candidates: int = 15, max_length: int = 128,
                 batch_size: int = 32, device: str = "cpu") -> None:
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        if not 0 <= p <= 1:
            raise ConfigError(f"augmenter 'mlm_replace': p must lie in [0, 1], got {p}")
        if candidates < 1:
            raise ConfigError(f"augmenter 'mlm_replace': candidates must be at least 1, got {candidates}")
        path = resolve_model_path(model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.mask_token is None:
            raise ConfigError(f"augmenter 'mlm_replace': the tokenizer of {model!r} has no mask token; "
                              "give a masked language model (BERT, RoBERTa, ...)")
        self.model = AutoModelForMaskedLM.from_pretrained(path).to(device).eval()
        self.p, self.k, self.max_length, self.batch_size, self.device = p, candidates, max_length, batch_size, device
        self.words = whole_word_ids(self.tokenizer, self.model.get_output_embeddings().weight.shape[0])
        self._candidates: dict[str, list[list[str]]] = {}

    def fit(self, texts: Sequence[str]) -> None:
        """Nothing to learn: candidates come from the masked LM, text by text."""

    @torch.no_grad()
    def candidates(self, words: list[str]) -> list[list[str]]:
        """Each word's replacement candidates, best first (empty for words without letters or
        digits, which are kept)."""
        mask = self.tokenizer.mask_token
        positions = [i for i, word in enumerate(words) if word != mask and any(ch.isalnum() for ch in word)]
        found: list[list[str]] = [[] for _ in words]
        for first in range(0, len(positions), self.batch_size):
            chunk = positions[first:first + self.batch_size]
            masked = [" ".join([*words[:i], mask, *words[i + 1:]]) for i in chunk]
            batch = self.tokenizer(masked, padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt").to(self.device)
            is_mask = batch["input_ids"] == self.tokenizer.mask_token_id
            rows, columns = [], []
            for row, i in enumerate(chunk):
                # the text may hold masks already (e.g. from another augmenter): take the one at word i
                occurrence = words[:i].count(mask)
                found_at = is_mask[row].nonzero().squeeze(-1).tolist()
                if occurrence < len(found_at):  # else truncation cut word i off
                    rows.append(row)
                    columns.append(found_at[occurrence])
            if not rows:
                continue
            logits = self.model(**batch).logits
            scores = logits[rows, columns].float().masked_fill(~self.words.to(logits.device), -torch.inf)
            best = scores.topk(min(self.k + 1, int(self.words.sum())), dim=-1).indices.tolist()
            for row, ids in zip(rows, best, strict=True):
                word = words[chunk[row]]
                options = [self.tokenizer.convert_tokens_to_string([t]).strip()
                           for t in self.tokenizer.convert_ids_to_tokens(ids)]
                found[chunk[row]] = [o for o in options if o.lower() != word.lower()][:self.k]
        return found

    def variants(self, text: str, rng: random.Random) -> Iterator[str]:
        """Endless independent replacements in ``text``."""
        words = text.split()
        if text not in self._candidates:
            self._candidates = {text: self.candidates(words)}  # one text at a time: keep only the last
        options = self._candidates[text]
        while True:
            yield " ".join(rng.choice(c) if c and rng.random() < self.p else w
                           for w, c in zip(words, options, strict=True))


def whole_word_ids(tokenizer: Any, size: int) -> torch.Tensor:
    """A [size] bool mask (``size``: the model's output vocabulary) of the ids that are whole
    words: not special, not a word-continuation piece, and holding a letter or digit."""
    vocab = tokenizer.get_vocab()
    tokens = list(vocab)
    marked = any(t.startswith(WORD_START_MARKERS) for t in tokens[:5000])
    special = set(tokenizer.all_special_tokens)
    keep = torch.zeros(size, dtype=torch.bool)
    for token, index in vocab.items():
        continuation = token.startswith("##") or (marked and not token.startswith(WORD_START_MARKERS))
        if index >= size or token in special or continuation:
            continue
        keep[index] = any(ch.isalnum() for ch in token)
    return keep
