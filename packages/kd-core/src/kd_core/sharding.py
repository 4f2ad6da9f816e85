"""FSDP2 for kd's engine: ``training.distributed: fsdp`` under torchrun.

Each process holds a shard of the student's and of every teacher's weights
(``torch.distributed.fsdp.fully_shard``, FSDP2): every element of every ``nn.ModuleList`` (the
transformer layers of Hugging Face models) is a unit that is gathered for its forward and freed
after, then the root. Gradients are reduce-scattered (averaged) by FSDP itself; the loss plan's
projections stay whole on every process and are averaged as in data-parallel training.

What the engine does with it:

- the models trained and read are sharded *copies*; the originals are moved to the meta device
  (their memory freed) and get the trained weights back, whole, on every process when training
  ends (:meth:`ShardedModel.restore`), so what follows training (saving, evaluating on the main
  process) sees plain modules;
- the optimizer, built on the original student's parameters, is pointed at the sharded ones;
- checkpoints hold full (unsharded) state dicts, gathered from every process through
  ``torch.distributed.checkpoint.state_dict``: the student's weights as in data-parallel runs, the
  optimizer's state keyed by parameter names; every process reads them back on resume.

Every forward of a sharded model is a collective, so every process must run the same forwards:
work that runs on one process or a different number of times per process is refused (evaluation
during training, the teacher cache, batch post-processors such as on-policy sampling), and the
engine's checkpoint ``callback`` receives the sharded student (a forward there would wait for the
other processes). A run that fails leaves the models passed to it on the meta device.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from kd_core.errors import ConfigError


def _fsdp() -> Any:
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        raise ConfigError(f"training.distributed 'fsdp' needs FSDP2 (torch.distributed.fsdp.fully_shard, torch "
                          f">= 2.6); this torch is {torch.__version__}. Use 'ddp', or upgrade torch") from None
    return fully_shard


def _state_dict_api() -> Any:
    from torch.distributed.checkpoint import state_dict

    return state_dict


def refuse_unsharded(unsupported: dict[str, bool]) -> None:
    """Raise a ConfigError naming each present piece of ``unsupported`` (what -> present): work
    that would not run the same forwards on every process."""
    named = [what for what, present in unsupported.items() if present]
    if named:
        raise ConfigError(f"training.distributed 'fsdp' runs every forward on every process together, which "
                          f"{'; '.join(named)} would not; leave it out, or use 'ddp'")


def refuse_fused_linear(fused_linear: bool) -> None:
    """Raise a ConfigError for ``distillation.fused_linear`` under FSDP: it runs a decoder without
    its LM head, outside the sharded root whose forward gathers the root's parameters."""
    if fused_linear:
        raise ConfigError("distillation.fused_linear runs a decoder without its LM head, outside the sharded root "
                          "that FSDP gathers; use training.distributed 'ddp' with it")


def shard(module: nn.Module) -> None:
    """Shard ``module`` in place with FSDP2: each element of each ``nn.ModuleList``, then the root."""
    fully_shard = _fsdp()
    for child in list(module.modules()):
        if isinstance(child, nn.ModuleList):
            for block in child:
                fully_shard(block)
    fully_shard(module)


def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` (a parameter or gradient) is a DTensor: a shard that FSDP manages."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        return False
    return isinstance(tensor, DTensor)


class ShardedModel:
    """A sharded copy of ``module`` to train or run, and the way back to the original.

    The original's weights move to the meta device; :meth:`restore` (a collective: every process
    calls it) gathers the copy's weights and puts them back into the original, whole, on ``device``.
    """

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        self.original = module
        self.device = device
        persistent = set(module.state_dict())
        self._transient = {name: buffer.detach().clone() for name, buffer in module.named_buffers()
                           if name not in persistent}
        self.module = copy.deepcopy(module)
        shard(self.module)
        module.to("meta")

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The copy's whole state dict on every process (a collective)."""
        api = _state_dict_api()
        return api.get_model_state_dict(self.module, options=api.StateDictOptions(full_state_dict=True))

    def load_full_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a whole state dict (read by every process) into the sharded copy."""
        api = _state_dict_api()
        api.set_model_state_dict(self.module, state, options=api.StateDictOptions(full_state_dict=True))

    def restore(self) -> nn.Module:
        """Put the copy's weights back into the original, whole, and return the original."""
        state = self.full_state_dict()
        training = self.module.training
        self.original.to_empty(device=self.device)
        self.original.load_state_dict(state)
        for name, buffer in self._transient.items():
            _set_buffer(self.original, name, buffer.to(self.device))
        self.original.train(training)
        return self.original


def _set_buffer(module: nn.Module, name: str, value: torch.Tensor) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    owner._buffers[leaf] = value


def point_optimizer_at(optimizer: torch.optim.Optimizer, original: dict[str, nn.Parameter],
                       sharded: nn.Module) -> None:
    """Replace the ``original`` parameters (by name, as they were before the original module
    moved to the meta device) in ``optimizer`` by the sharded copy's of the same names; the
    optimizer must not have taken a step yet."""
    if optimizer.state:
        raise ConfigError("training.distributed 'fsdp': the optimizer has already taken steps; pass a fresh optimizer "
                          "(to continue a run, use resume)")
    by_id = {id(p): name for name, p in original.items()}
    replacements = dict(sharded.named_parameters())
    for group in optimizer.param_groups:
        group["params"] = [replacements[by_id[id(p)]] if id(p) in by_id else p for p in group["params"]]


def optimizer_state(holder: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's whole state keyed by parameter names under ``holder`` (a collective)."""
    api = _state_dict_api()
    return api.get_optimizer_state_dict(holder, optimizer, options=api.StateDictOptions(full_state_dict=True))


def load_optimizer_state(holder: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load :func:`optimizer_state`'s whole state (read by every process) into ``optimizer``."""
    api = _state_dict_api()
    api.set_optimizer_state_dict(holder, optimizer, state, options=api.StateDictOptions(full_state_dict=True))


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` over sharded and whole gradients together: the L2 norm of all of them
    (the shards' from every process), and every gradient scaled so that it is at most ``max_norm``."""
    sharded = [p.grad for p in params if p.grad is not None and is_sharded(p.grad)]
    whole = [p.grad for p in params if p.grad is not None and not is_sharded(p.grad)]
    squares = torch.zeros((), dtype=torch.float32)
    if sharded:
        norm = torch.nn.utils.get_total_norm(sharded, 2.0)
        squares = squares + norm.full_tensor().float().cpu() ** 2
    if whole:
        squares = squares + torch.nn.utils.get_total_norm(whole, 2.0).float().cpu() ** 2
    total = squares.sqrt()
    factor = min(1.0, max_norm / (float(total) + 1e-6))
    if factor < 1.0:
        for grad in (*sharded, *whole):
            grad.mul_(factor)
    return total
