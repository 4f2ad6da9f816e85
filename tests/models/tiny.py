"""Tiny random Hugging Face encoders of every family kd-models supports."""

from __future__ import annotations

import torch
from torch import nn

FAMILIES = ("bert", "roberta", "distilbert", "electra", "mpnet", "deberta-v2")
SDPA_FAMILIES = ("bert", "roberta", "distilbert", "electra")  # MPNet and DeBERTa-v2 run eager only
VOCAB = 100


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
