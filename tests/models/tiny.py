"""Tiny random Hugging Face encoders of every family kd-models supports, and tiny causal LMs
(Llama, GPT-2) with a byte-level BPE trained on WikiText-2."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

FAMILIES = ("bert", "roberta", "distilbert", "electra", "mpnet", "deberta-v2")
SDPA_FAMILIES = ("bert", "roberta", "distilbert", "electra")  # MPNet and DeBERTa-v2 run eager only
VOCAB = 100
WIKITEXT = Path(__file__).resolve().parents[2] / "examples" / "data" / "wikitext2" / "valid.txt"
EOS = "<|endoftext|>"


def tiny_config(model_type: str, layers: int = 3, hidden: int = 32, heads: int = 4, ffn: int = 64, **extra):
    """A small, dropout-free config of ``model_type``."""
    from transformers import AutoConfig

    if model_type == "distilbert":
        sizes = {"dim": hidden, "n_layers": layers, "n_heads": heads, "hidden_dim": ffn, "dropout": 0.0,
                 "attention_dropout": 0.0, "seq_classif_dropout": 0.0}
    else:
        sizes = {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
                 "intermediate_size": ffn, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
        if model_type == "electra":
            sizes["embedding_size"] = hidden
    return AutoConfig.for_model(model_type, vocab_size=VOCAB, max_position_embeddings=40, **sizes, **extra)


def tiny_model(model_type: str, head: str = "sequence", attn: str = "eager", seed: int = 0, **config) -> nn.Module:
    """A tiny random ``*ForSequenceClassification`` or ``*ForTokenClassification`` in eval mode."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    auto = AutoModelForSequenceClassification if head == "sequence" else AutoModelForTokenClassification
    torch.manual_seed(seed)
    return auto.from_config(tiny_config(model_type, **config), attn_implementation=attn).eval()


def tiny_batch(batch: int = 2, length: int = 7, seed: int = 0, labels: str | None = None) -> dict[str, torch.Tensor]:
    """Random token ids with the second example padded after 4 tokens; optional sequence/token labels."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1:, 4:] = 0
    out = {"input_ids": torch.randint(5, VOCAB, (batch, length), generator=generator) * mask, "attention_mask": mask}
    if labels == "sequence":
        out["labels"] = torch.randint(0, 2, (batch,), generator=generator)
    elif labels == "token":
        out["labels"] = torch.randint(0, 2, (batch, length), generator=generator).masked_fill(mask == 0, -100)
    return out


def wikitext_tokenizer(vocab_size: int = 300):
    """A byte-level BPE trained on the first 400 lines of WikiText-2, GPT-2 style (its one special
    token ends sequences; no padding token)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    lines = [line for line in WIKITEXT.read_text(encoding="utf-8").splitlines() if line.strip()][:400]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(lines, vocab_size=vocab_size, min_frequency=1, special_tokens=[EOS])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, bos_token=EOS, unk_token=EOS)


def tiny_llama(vocab: int, layers: int = 4, seed: int = 0) -> nn.Module:
    """A tiny random LlamaForCausalLM (grouped-query attention, tied embeddings) in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=layers,
                                        num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                        max_position_embeddings=128, tie_word_embeddings=True, bos_token_id=0,
                                        eos_token_id=0)).eval()


def tiny_gpt2(vocab: int, layers: int = 4, seed: int = 0) -> nn.Module:
    """A tiny random dropout-free GPT2LMHeadModel in eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=128, n_embd=32, n_layer=layers, n_head=4,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                                      eos_token_id=0)).eval()
