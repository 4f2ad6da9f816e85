"""Small pure-PyTorch models for engine tests: they return a Features dict themselves."""

from __future__ import annotations

import torch
from torch import nn

from kd_core.features import Features, FeaturesAdaptor


class TinyEncoder(nn.Module):
    """Embedding, ``layers`` residual MLP blocks with dropout, mean pooling, a classifier.

    ``forward(input_ids, attention_mask, labels)`` returns logits, labels, per-layer hidden
    states and the mask, so the built-in ``features`` adaptor reads it.
    """

    def __init__(self, vocab: int = 50, width: int = 16, layers: int = 2, classes: int = 3,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Dropout(dropout)) for _ in range(layers))
        self.head = nn.Linear(width, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor) -> dict[str, object]:
        hidden = [self.embed(input_ids)]
        for block in self.blocks:
            hidden.append(hidden[-1] + block(hidden[-1]))
        weights = attention_mask.unsqueeze(-1).float()
        pooled = (hidden[-1] * weights).sum(1) / weights.sum(1).clamp(min=1)
        return {"logits": self.head(pooled), "labels": labels, "hidden": hidden,
                "inputs_mask": attention_mask}


class TokenDataset(torch.utils.data.Dataset):
    """Random token sequences with labels; ``full=True`` gives no padding at all."""

    def __init__(self, size: int = 64, length: int = 10, vocab: int = 50, classes: int = 3,
                 full: bool = False, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, vocab, (size, length), generator=g)
        lengths = torch.full((size,), length) if full else torch.randint(2, length + 1, (size,), generator=g)
        self.mask = (torch.arange(length)[None] < lengths[:, None]).long()
        self.labels = torch.randint(0, classes, (size,), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


class MaskedFeaturesAdaptor(FeaturesAdaptor):
    """The ``features`` adaptor for :class:`TinyEncoder`, which also gives its masks before the
    model runs (as kd's own adaptors do), so the engine can count a step's tokens in advance."""

    def masks(self, batch: dict[str, torch.Tensor]) -> Features:
        return {"inputs_mask": batch["attention_mask"], "labels": batch["labels"], "logits_mask": None}
