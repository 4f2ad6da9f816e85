"""Padding columns no example uses are cut before the forward passes, and the losses stay the same."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from kd_core import DistillationConfig, GeneralDistiller, TrainingConfig, lookup
from kd_core.features import TEACHER_LOGITS, batch_rows, trim_padding
from tests.core.models import TinyEncoder, TokenDataset


def _mask(lengths: list[int], width: int, left: bool = False) -> torch.Tensor:
    columns = torch.arange(width)[None]
    lengths = torch.tensor(lengths)[:, None]
    return (columns >= width - lengths if left else columns < lengths).long()


def test_right_and_left_padding_shrink_to_the_longest_example() -> None:
    mask = _mask([3, 5, 2], 8)
    batch = {"input_ids": torch.arange(24).view(3, 8), "attention_mask": mask, "labels": torch.tensor([0, 1, 0]),
             "token_labels": torch.ones(3, 8, dtype=torch.long), TEACHER_LOGITS: torch.zeros(3, 8, 4)}
    trimmed = trim_padding(batch)
    assert torch.equal(trimmed["input_ids"], batch["input_ids"][:, :5])
    assert trimmed["attention_mask"].shape == trimmed["token_labels"].shape == (3, 5)
    assert trimmed[TEACHER_LOGITS].shape == (3, 5, 4) and torch.equal(trimmed["labels"], batch["labels"])
    left = trim_padding({"input_ids": torch.arange(24).view(3, 8), "attention_mask": _mask([3, 5, 2], 8, left=True)})
    assert torch.equal(left["input_ids"], torch.arange(24).view(3, 8)[:, 3:])
    # a pair of sequence-level teacher logits is not a sequence even when L == 2
    pair = {"attention_mask": _mask([1, 1], 2), TEACHER_LOGITS: torch.randn(2, 2)}
    assert trim_padding(pair)[TEACHER_LOGITS].shape == (2, 2)


def test_batches_it_cannot_trim_come_back_unchanged() -> None:
    holes = {"input_ids": torch.ones(2, 4), "attention_mask": torch.tensor([[1, 0, 1, 0], [1, 0, 0, 0]])}
    full = {"input_ids": torch.ones(2, 4), "attention_mask": torch.ones(2, 4)}
    for batch in (holes, full, {"x": torch.ones(2, 3)}):
        assert trim_padding(batch) is batch
    tensors = [torch.ones(2)]
    assert all(a is b for a, b in zip(trim_padding(tensors), tensors, strict=True))
    task_batch = ("sst2", {"input_ids": torch.ones(2, 6), "attention_mask": _mask([2, 3], 6)})
    assert trim_padding(task_batch)[1]["input_ids"].shape == (2, 3)


class _PaddedTo(torch.utils.data.Dataset):
    """TokenDataset's examples padded with 6 more columns no example uses."""

    def __init__(self) -> None:
        self.data = TokenDataset(size=24)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        example = self.data[i]
        return {"input_ids": torch.cat([example["input_ids"], torch.zeros(6, dtype=torch.long)]),
                "attention_mask": torch.cat([example["attention_mask"], torch.zeros(6, dtype=torch.long)]),
                "labels": example["labels"]}


def test_trimmed_training_logs_the_losses_of_untrimmed_training(tmp_path: Path) -> None:
    matches = [{"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
                "proj": ["linear", 8, 16]}]
    logged = {}
    for trim in (False, True):
        torch.manual_seed(0)
        teacher, student = TinyEncoder(width=16, layers=2), TinyEncoder(width=8, layers=1)
        widths: list[int] = []
        def record(_module, _args, kwargs, widths=widths) -> None:
            widths.append(kwargs["input_ids"].shape[1])

        student.register_forward_pre_hook(record, with_kwargs=True)
        adaptor = lookup("adaptors", "features")()
        distiller = GeneralDistiller(
            TrainingConfig(output_dir=str(tmp_path / str(trim)), progress=False, seed=0, trim_padding=trim),
            DistillationConfig(temperature=2, kd_loss_type="kl", hard_label_weight=0.5, intermediate_matches=matches),
            teacher, student, adaptor, adaptor)
        distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), DataLoader(_PaddedTo(), batch_size=8),
                        num_epochs=2)
        assert max(widths) <= 10 if trim else set(widths) == {16}
        logged[trim] = [json.loads(line) for line in (tmp_path / str(trim) / "metrics.jsonl").read_text().splitlines()]
    for plain, trimmed in zip(logged[False], logged[True], strict=True):
        for term in ("kd", "hard_label", "match0.hidden_mse", "loss"):
            assert abs(plain[term] - trimmed[term]) < 1e-5, term


def test_batch_rows_counts_the_examples_of_any_nesting() -> None:
    ids = torch.zeros(5, 7, dtype=torch.long)
    assert batch_rows({"input_ids": ids, "labels": torch.zeros(5)}) == 5
    assert batch_rows(({"input_ids": ids[:3]}, torch.zeros(3))) == 3  # TextBrewer's tuple batches
    assert batch_rows([{"meta": "no tensor"}, {"x": torch.zeros(2, 4)}]) == 2
    assert batch_rows({"scale": torch.tensor(2.0), "x": ids}) == 5  # a 0-dim tensor has no rows
    assert batch_rows({"names": ["a", "b"]}) == 0
