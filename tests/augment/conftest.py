"""Fixtures of the kd-augment tests: a small SST-2 corpus, and tiny random language models (a
BERT masked LM with MiniLM's vocabulary, a GPT-2 with a byte-level BPE trained on the corpus)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kd_core.data import read_records

EOS = "<|endoftext|>"


@pytest.fixture(scope="session")
def corpus(sst2_dir: Path) -> list[str]:
    """The first 120 sentences of the bundled SST-2 training set."""
    return [row["sentence"].strip() for row in read_records(sst2_dir / "train.tsv", limit=120)]


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory, corpus: list[str]) -> Path:
    """A 2-layer random GPT-2 with a 400-token byte-level BPE trained on ``corpus``, saved."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1, special_tokens=[EOS])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, bos_token=EOS, unk_token=EOS)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=160, n_embd=32, n_layer=2, n_head=2,
                                       bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id))
    directory = tmp_path_factory.mktemp("tiny-gpt2")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def mlm_dir(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Path:
    """A 2-layer random BertForMaskedLM with MiniLM's WordPiece tokenizer, saved."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-mlm")
    BertForMaskedLM(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64)).save_pretrained(directory)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(directory)
    return directory
