"""Data-parallel training across processes (``torchrun``) for kd's engine.

Under ``torchrun --nproc_per_node N`` (or any launcher that sets ``WORLD_SIZE``/``RANK``) the
engine joins the process group (gloo on CPU, NCCL on CUDA), and:

- data: one seeded permutation per epoch, the same on every rank, cut into global batches of
  ``batch_size * world_size`` examples; rank r takes the r-th slice of each. So N processes with
  per-process batch b see exactly the batches of one process with batch N * b (a final global
  batch with fewer examples is dropped);
- gradients: averaged across ranks with one flat all-reduce per optimizer step, before clipping:
  the DDP contract. The student is not wrapped in DistributedDataParallel, so adaptors see the
  model itself (its config, its attention modules for Q/K/V hooks), and the teacher is never
  wrapped or synchronised: every rank runs its own copy in inference;
- outputs: rank 0 alone writes metrics, checkpoints, the student and reports; every rank reads
  the same checkpoint when resuming;
- shutdown: a process group the engine created is destroyed when the process exits (gloo's
  worker threads otherwise outlive the interpreter and abort the process, now and then, after
  training finished well).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, RandomSampler

from kd_core.errors import ConfigError
from kd_core.sharding import is_sharded


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    active: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this process writes outputs."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op when not distributed)."""
        if self.active:
            dist.barrier()

    def broadcast_object(self, value: Any) -> Any:
        """The main process's ``value`` on every rank (``value`` itself when not distributed)."""
        if not self.active:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Give every rank the main process's weights and buffers of ``module``."""
        if not self.active:
            return
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over all ranks, in place (``tensor`` itself when not distributed)."""
        if self.active and self.world_size > 1:
            dist.all_reduce(tensor)
        return tensor

    def sum_counts(self, counts: dict[str, float]) -> dict[str, float]:
        """Each key's sum over the ranks that have it (``counts`` itself when not distributed)."""
        if not self.active or self.world_size == 1:
            return dict(counts)
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, counts)
        total: dict[str, float] = {}
        for rank_counts in gathered:
            for key, value in rank_counts.items():
                total[key] = total.get(key, 0.0) + value
        return total

    def average_gradients(self, params: list[torch.Tensor]) -> None:
        """Average the gradients of ``params`` over all ranks (missing gradients count as zeros);
        FSDP's shards (:mod:`kd_core.sharding`), which FSDP averages itself, are left alone."""
        if not self.active or self.world_size == 1:
            return
        grads = []
        for p in params:
            if is_sharded(p):
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def is_main_process() -> bool:
    """Whether this process writes outputs: rank 0, or the only process."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def launched_world_size() -> int:
    """The number of processes a launcher such as torchrun started (1 when none did)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join the process group when launched with several processes (or when one already
    exists); returns this process's place and its device (``cuda:LOCAL_RANK`` on GPUs)."""
    if not dist.is_available():
        return Distributed(), device
    if not dist.is_initialized():
        if launched_world_size() == 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
            return Distributed(), device
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        atexit.register(_leave_process_group)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return Distributed(dist.get_rank(), dist.get_world_size(), active=True), device


def current() -> Distributed:
    """This process's place in the process group that already exists (one that another library,
    such as accelerate under a transformers Trainer, created), or not distributed; joins nothing."""
    if not (dist.is_available() and dist.is_initialized()):
        return Distributed()
    return Distributed(dist.get_rank(), dist.get_world_size(), active=True)


def _leave_process_group() -> None:
    """Destroy the default process group kd created, unless the program already did."""
    if dist.is_initialized():
        dist.destroy_process_group()


class ShardedLoader:
    """Each rank's share of one seeded permutation per epoch (see the module docstring).

    ``generator`` draws the permutations; kd's engine saves and restores its state with the
    checkpoint, so a resumed epoch replays the same order.
    """

    def __init__(self, dataset: Any, batch_size: int, collate_fn: Callable[[list[Any]], Any], shuffle: bool,
                 rank: int, world_size: int, seed: int) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.collate_fn = collate_fn
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.generator = torch.Generator().manual_seed(seed)
        if len(self) == 0:
            raise ConfigError(f"{len(dataset)} examples make no global batch of {batch_size} x {world_size} processes")

    @classmethod
    def from_dataloader(cls, loader: DataLoader, state: Distributed, seed: int) -> ShardedLoader:
        """The sharded version of a torch DataLoader (its dataset, batch size, collate function and
        whether it shuffles)."""
        if not isinstance(loader, DataLoader) or loader.batch_size is None:
            raise ConfigError("distributed training needs a torch DataLoader with a batch_size, so that kd can "
                              f"shard its dataset across processes; got {type(loader).__name__}")
        return cls(loader.dataset, loader.batch_size, loader.collate_fn, isinstance(loader.sampler, RandomSampler),
                   state.rank, state.world_size, seed)

    def __len__(self) -> int:
        return len(self.dataset) // (self.batch_size * self.world_size)

    def __iter__(self) -> Iterator[Any]:
        size = len(self.dataset)
        order = torch.randperm(size, generator=self.generator) if self.shuffle else torch.arange(size)
        step = self.batch_size * self.world_size
        for start in range(0, len(self) * step, step):
            mine = order[start + self.rank * self.batch_size:start + (self.rank + 1) * self.batch_size]
            yield self.collate_fn([self.dataset[int(i)] for i in mine])
