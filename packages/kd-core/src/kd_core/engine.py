"""The training engine every trainer and distiller shares.

One loop: micro-batches with gradient accumulation, autocast, gradient clipping, an LR
scheduler, a progress bar, ``metrics.jsonl``, checkpoints and exact resume. Distillers differ
only in :meth:`Engine.compute_losses`: how they turn a batch into named loss terms.

Each term is a mean over the items of the whole optimizer step (its tokens, say), across its
accumulated micro-batches and every process, not a mean of per-micro-batch means
(:mod:`kd_core.normalization`): the micro-batches of a step are drawn first, their items counted
(:meth:`Engine.item_counts`), and each micro-batch's term weighted by its share.

Several processes (torchrun): data-parallel by default (:mod:`kd_core.distributed`), or with
``training.distributed: fsdp`` on FSDP2 shards of the student and the teachers
(:mod:`kd_core.sharding`).

Exact resume: a checkpoint stores the model, optimizer, scheduler, grad scaler, loss-plan
projections, every RNG state, the data position (epoch, micro-batches consumed) and the RNG
states the data loader drew its order from at the start of that epoch. On resume the loader
order is replayed from those states, the consumed micro-batches are skipped, and the RNG states
of the moment of the checkpoint are restored, so on CPU the resumed run ends with the same
weights, bit for bit, as one that was never interrupted.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from kd_core import distributed, sharding
from kd_core.checkpoint import (
    CorruptCheckpointError,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_aside,
    set_rng_state,
)
from kd_core.config import TrainingConfig
from kd_core.errors import ConfigError, KDError, NonFiniteLossError
from kd_core.features import Adaptor, as_adaptor, batch_rows, to_device, trim_padding
from kd_core.loggers import Logger
from kd_core.normalization import BATCH_ROWS, step_weights, weight_of
from kd_core.plugins import lookup
from kd_core.validation import Validation

Callback = Callable[..., Any]

METRICS_FILE = "metrics.jsonl"
RECORD_FIELDS = frozenset({"step", "epoch", "lr", "elapsed_s", "examples_per_s", "skipped_nonfinite"})
"""The fields of a metrics.jsonl record that are neither loss terms nor validation metrics
(``kd_core.validation.PREFIX``): every other field is a loss term (``loss`` their weighted sum)."""
CHECKPOINTS_DIR = "checkpoints"
OPTIMIZER_BY_NAME = "by_parameter_name"
"""The key under which a checkpoint of an FSDP run holds the optimizer's state, keyed by parameter
names (``torch.distributed.checkpoint.state_dict``) instead of the positions of ``state_dict()``."""


@dataclass
class TrainResult:
    """What :meth:`Engine.train` returns."""

    global_step: int
    loss: float | None
    last_checkpoint: Path | None
    output_dir: Path
    validation: dict[str, Any] | None = None
    """With ``validation=``: its :meth:`~kd_core.validation.Validation.summary` (the best step and
    value, whether training stopped early, whether the best or the last weights were kept)."""


@dataclass
class _Position:
    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy (if installed) and torch."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
    except ImportError:
        return
    np.random.seed(seed % 2**32)


class Engine:
    """Base of :class:`~kd_core.distillers.BasicTrainer` and the distillers.

    Subclasses implement :meth:`compute_losses`. ``train`` follows TextBrewer's call shape.
    """

    def __init__(self, train_config: TrainingConfig, model_S: nn.Module,
                 adaptor_S: Adaptor | Callable[[Any, Any], Any]) -> None:
        if not isinstance(train_config, TrainingConfig):
            raise TypeError(f"train_config must be a kd_core.TrainingConfig, got {type(train_config).__name__}")
        self.t_config = train_config
        self.model_S = model_S
        self.adaptor_S = as_adaptor(adaptor_S)
        self.device = torch.device(train_config.device)
        self.output_dir = Path(train_config.output_dir)
        self.dist = distributed.Distributed()
        self._shards: dict[str, sharding.ShardedModel] = {}

    # -- what subclasses provide -------------------------------------------------------------

    def compute_losses(self, batch: Any, progress: float) -> dict[str, torch.Tensor]:
        """Named loss terms for one micro-batch (already on the device)."""
        raise NotImplementedError

    def item_counts(self, batch: Any) -> dict[str, float]:
        """How many items (:mod:`kd_core.normalization`) each term of :meth:`compute_losses`
        averages over in ``batch``, computed from the batch alone; a term left out is weighted by
        the batch's rows. The engine weighs every term of a micro-batch by its share of the whole
        optimizer step's items."""
        return {}

    def step_counts(self, batches: Sequence[Any]) -> list[dict[str, float]]:
        """:meth:`item_counts` of each micro-batch of one optimizer step, with its rows under
        :data:`~kd_core.normalization.BATCH_ROWS` (what :func:`~kd_core.normalization.step_weights` reads)."""
        return [{**self.item_counts(batch), BATCH_ROWS: float(batch_rows(batch))} for batch in batches]

    def sharded_models(self) -> dict[str, nn.Module]:
        """The models ``training.distributed: fsdp`` shards, by role: the student, and the
        distillers' teachers. :meth:`use_models` takes models back by the same roles."""
        return {"student": self.model_S}

    def use_models(self, models: dict[str, nn.Module]) -> None:
        """Train and run ``models`` (by the roles of :meth:`sharded_models`) from now on."""
        self.model_S = models["student"]

    def extra_modules(self) -> dict[str, nn.Module]:
        """Trainable modules besides the student (projections), saved in checkpoints."""
        return {}

    def extra_param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups added automatically at the start of training."""
        return []

    def prepare(self) -> None:
        """Move models to the device and set their modes before training."""
        self.model_S.to(self.device).train()
        for module in self.extra_modules().values():
            module.to(self.device).train()

    # -- the loop ------------------------------------------------------------------------------

    def train(
        self,
        optimizer: torch.optim.Optimizer,
        dataloader: Any,
        num_epochs: int | None = None,
        num_steps: int | None = None,
        scheduler_class: Callable[..., Any] | None = None,
        scheduler_args: dict[str, Any] | None = None,
        scheduler: Any = None,
        max_grad_norm: float = -1.0,
        callback: Callback | None = None,
        batch_postprocessor: Callable[[Any], Any] | None = None,
        resume: bool | str | Path = False,
        validation: Validation | None = None,
        **kwargs: Any,
    ) -> TrainResult:
        """Train for ``num_epochs`` epochs or ``num_steps`` optimizer steps.

        ``scheduler_class(optimizer, **scheduler_args)`` is built after the projections' parameter
        groups join the optimizer (prefer it to ``scheduler``). ``callback(model=..., step=...)``
        runs after every checkpoint. ``resume=True`` continues from the newest checkpoint under
        ``output_dir/checkpoints`` (a path picks one). ``validation`` scores the student during
        training (:class:`~kd_core.validation.Validation`: its metrics go to metrics.jsonl and the
        progress bar; the best weights are kept, and training stops early after its patience).
        """
        if kwargs:
            raise TypeError(f"train() got unexpected arguments: {', '.join(sorted(kwargs))}")
        if (num_epochs is None) == (num_steps is None):
            raise ConfigError("train() needs exactly one of num_epochs and num_steps")
        t = self.t_config
        accum = t.gradient_accumulation_steps
        self.dist, self.device = distributed.setup(self.device)
        if self.dist.active:
            dataloader = distributed.ShardedLoader.from_dataloader(dataloader, self.dist, seed=t.seed or 0)
        epoch_len = _length(dataloader)
        if num_steps is None and epoch_len is None:
            raise ConfigError("the dataloader has no length, so train() needs num_steps, not num_epochs")
        steps_per_epoch = math.ceil(epoch_len / accum) if epoch_len else None
        if epoch_len == 0:
            raise ConfigError("the dataloader is empty: there is nothing to train on")
        total_steps = num_steps if num_steps is not None else num_epochs * steps_per_epoch
        if t.mixed_precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("training.mixed_precision 'fp16' needs a CUDA device; use 'bf16' on CPU")

        self.prepare()
        _add_param_groups(optimizer, self.extra_param_groups())
        if t.distributed == "fsdp" and self.dist.active:
            self._shard(optimizer, validation, batch_postprocessor)
        if scheduler_class is not None:
            if scheduler is not None:
                raise ConfigError("pass either scheduler or scheduler_class, not both")
            scheduler = scheduler_class(optimizer, **(scheduler_args or {}))
        scaler = torch.amp.GradScaler("cuda") if t.mixed_precision == "fp16" else None

        position = _Position()
        resume_state = None
        if resume:
            resume_state = self._resume(resume, optimizer, scheduler, scaler, total_steps, accum, epoch_len)
            position = _Position(resume_state["global_step"], resume_state["epoch"],
                                 resume_state["batch_in_epoch"])
            if validation is not None:
                _restore_validation(validation, resume_state, self.output_dir, position.global_step,
                                    self.dist.is_main)
        else:
            self._clear_earlier_checkpoints()
            if validation is not None:
                validation.reset()
                if self.dist.is_main:
                    validation.clear(self.output_dir)
            if t.seed is not None:
                seed_everything(t.seed)

        self.output_dir.mkdir(parents=True, exist_ok=True)
        metrics = _MetricsLog(self.output_dir / METRICS_FILE, truncate_after=position.global_step,
                              enabled=self.dist.is_main, report_to=t.report_to, log_dir=t.logs_path)
        bar = tqdm(total=total_steps, initial=position.global_step, disable=not (t.progress and self.dist.is_main),
                   desc=type(self).__name__, unit="step", dynamic_ncols=True, mininterval=0.5)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        autocast = torch.autocast(self.device.type, dtype=t.autocast_dtype,
                                  enabled=t.autocast_dtype is not None)
        last_loss: float | None = None
        last_checkpoint: Path | None = None
        started = time.perf_counter()
        sums: dict[str, float] = {}
        examples = 0  # this process's, since this call started
        skipped = resume_state.get("skipped_nonfinite", 0) if resume_state else 0
        optimizer.zero_grad(set_to_none=True)

        stopped = validation is not None and validation.should_stop  # a resumed run that had stopped early
        try:
            while position.global_step < total_steps and not stopped:
                iterator, epoch_rng = self._epoch_iterator(dataloader, position, resume_state)
                resume_state = None
                while True:
                    group, end_of_epoch = self._next_micro_batches(iterator, position, accum, epoch_len,
                                                                   batch_postprocessor)
                    if not group:  # an iterable without length ran out at a step's boundary
                        position.epoch += 1
                        position.batch_in_epoch = 0
                        break
                    counts = self.step_counts(group)
                    step_shares = step_weights(counts, self.dist.sum_counts, self.dist.world_size)
                    own_shares = step_weights(counts, dict, 1)  # what this process logs
                    for batch, shares, own in zip(group, step_shares, own_shares, strict=True):
                        batch = to_device(batch, self.device)
                        examples += batch_rows(batch)
                        if t.trim_padding:
                            batch = trim_padding(batch)
                        progress = position.global_step / total_steps
                        with autocast:
                            terms = self.compute_losses(batch, progress)
                        try:
                            _check_finite(terms, position.global_step + 1)
                        except NonFiniteLossError:
                            if not t.skip_nonfinite:
                                raise
                            skipped += 1
                            continue
                        loss = sum(weight_of(shares, name) * value for name, value in terms.items())
                        (scaler.scale(loss) if scaler else loss).backward()
                        for name, value in terms.items():
                            share = weight_of(own, name) * float(value.detach())
                            sums[name] = sums.get(name, 0.0) + share
                            sums["loss"] = sums.get("loss", 0.0) + share
                    self._optimizer_step(optimizer, scheduler, scaler, params, max_grad_norm)
                    position.global_step += 1
                    step_in_epoch = math.ceil(position.batch_in_epoch / accum)
                    epoch_done = position.epoch + 1
                    if end_of_epoch:
                        position.epoch += 1
                        position.batch_in_epoch = 0
                    last_loss = sums.get("loss", last_loss)
                    evaluated = validation is not None and validation.due(position.global_step, total_steps,
                                                                          end_of_epoch)
                    if evaluated:
                        self._validate(validation, position.global_step)
                        stopped = validation.should_stop
                    metrics.write({
                        "step": position.global_step,
                        "epoch": position.epoch + (position.batch_in_epoch / epoch_len if epoch_len else 0),
                        **sums,
                        **({"skipped_nonfinite": skipped} if t.skip_nonfinite else {}),
                        "lr": optimizer.param_groups[0]["lr"],
                        **(validation.metrics_record() if evaluated else {}),
                        **_throughput(examples * self.dist.world_size, time.perf_counter() - started),
                    })
                    bar.update(1)
                    bar.set_postfix(loss=f"{last_loss:.4f}", **(_bar_fields(validation) if validation else {}),
                                    refresh=False)
                    sums = {}
                    if stopped or self._checkpoint_due(position.global_step, total_steps, step_in_epoch,
                                                       steps_per_epoch, epoch_done, end_of_epoch):
                        weights, optimizer_state = self._training_state(optimizer)  # every rank: FSDP gathers
                        if self.dist.is_main:
                            last_checkpoint = self._save(position, weights, optimizer_state, scheduler, scaler,
                                                         epoch_rng, _loader_rng_state(dataloader), total_steps,
                                                         accum, epoch_len, skipped, validation)
                            if callback is not None:
                                callback(model=self.model_S, step=position.global_step)
                                self.model_S.train()
                    if position.global_step >= total_steps or end_of_epoch or stopped:
                        break
                if num_epochs is not None and position.epoch >= num_epochs:
                    break
        finally:
            bar.close()
            metrics.close()
        if validation is not None:
            self._finish_validation(validation, position.global_step)
        if self._shards:
            self.use_models({role: shard.restore() for role, shard in self._shards.items()})
            self._shards = {}
        self.dist.barrier()  # every rank returns once the main process has written all it writes
        if validation is None:
            return TrainResult(position.global_step, last_loss, last_checkpoint, self.output_dir)
        return TrainResult(position.global_step, last_loss, last_checkpoint, self.output_dir, validation.summary())

    # -- pieces of the loop --------------------------------------------------------------------

    def _validate(self, validation: Validation, step: int) -> None:
        """Score the student after ``step`` (the main process scores and tells the others, so all
        agree on stopping); write its weights when they are the best so far, and drop the best
        files that neither they nor a kept checkpoint need."""
        values = self.dist.broadcast_object(validation.score(self.model_S) if self.dist.is_main else None)
        if validation.record(step, values) and validation.keep_best and self.dist.is_main:
            validation.save_best(self.output_dir, self.model_S)
            validation.prune(self.output_dir, list_checkpoints(self.output_dir / CHECKPOINTS_DIR))

    def _finish_validation(self, validation: Validation, step: int) -> None:
        """Put the best weights back (``keep_best``), or warn that the metric was still rising."""
        if validation.keep_best and validation.best_step is not None and validation.best_step != step:
            if self.dist.is_main:
                validation.restore_best(self.output_dir, self.model_S)
            self.dist.broadcast_module(self.model_S)
        if validation.still_improving and not validation.should_stop:
            last = validation.history[-1]
            warnings.warn(f"training ended at step {step} while validation {validation.metric} was still improving "
                          f"({validation.history[-2][validation.metric]:.4g} -> {last[validation.metric]:.4g} at "
                          "the last evaluation): the model may not have finished learning; train longer "
                          "(more epochs, with patience to stop when it stops improving)", stacklevel=3)

    def _epoch_iterator(self, dataloader: Any, position: _Position,
                        resume_state: dict[str, Any] | None) -> tuple[Iterator[Any], dict[str, Any]]:
        """An iterator over this epoch's remaining batches, and the epoch-start RNG states."""
        if resume_state is None or position.batch_in_epoch == 0:
            if resume_state is not None:
                # a checkpoint at the end of an epoch: the loader's generators go on from where
                # that epoch left them, as in the run that was never interrupted
                if "loader_rng" in resume_state:  # (checkpoints of kd before 0.1.1 lack it)
                    _set_loader_rng_state(dataloader, resume_state["loader_rng"])
                set_rng_state(resume_state["rng"])
            epoch_rng = _loader_rng_state(dataloader)
            return iter(dataloader), epoch_rng
        epoch_rng = resume_state["epoch_rng"]
        _set_loader_rng_state(dataloader, epoch_rng)
        iterator = iter(dataloader)
        for _ in range(position.batch_in_epoch):
            next(iterator)
        set_rng_state(resume_state["rng"])
        return iterator, epoch_rng

    @staticmethod
    def _next_micro_batches(iterator: Iterator[Any], position: _Position, accum: int, epoch_len: int | None,
                            batch_postprocessor: Callable[[Any], Any] | None) -> tuple[list[Any], bool]:
        """The next optimizer step's micro-batches (``accum`` of them, fewer where the epoch ends),
        each through ``batch_postprocessor``, and whether they end the epoch. All are drawn before
        the first runs, so that the step's items are counted before its first backward."""
        group: list[Any] = []
        while len(group) < accum:
            if epoch_len is not None and position.batch_in_epoch >= epoch_len:
                return group, True
            try:
                batch = next(iterator)
            except StopIteration:
                return group, True
            position.batch_in_epoch += 1
            group.append(batch if batch_postprocessor is None else batch_postprocessor(batch))
        return group, epoch_len is not None and position.batch_in_epoch >= epoch_len

    def _shard(self, optimizer: torch.optim.Optimizer, validation: Validation | None,
               batch_postprocessor: Callable[[Any], Any] | None) -> None:
        """Train and run sharded copies of :meth:`sharded_models` (:mod:`kd_core.sharding`)."""
        sharding.refuse_unsharded({
            "validation during training (score the saved student afterwards)": validation is not None,
            "a batch_postprocessor (such as on-policy sampling)": batch_postprocessor is not None,
            "the teacher cache": bool(getattr(self, "teacher_caches", None))})
        sharding.refuse_fused_linear(getattr(getattr(self, "d_config", None), "fused_linear", False))
        originals = self.sharded_models()
        trained = dict(originals["student"].named_parameters())  # before they move to the meta device
        self._shards = {role: sharding.ShardedModel(model, self.device) for role, model in originals.items()}
        sharding.point_optimizer_at(optimizer, trained, self._shards["student"].module)
        self.use_models({role: shard.module for role, shard in self._shards.items()})

    def _optimizer_holder(self) -> nn.Module:
        """The modules whose parameters the optimizer steps, by the names its sharded state uses."""
        return nn.ModuleDict({"student": self.model_S, **self.extra_modules()})

    def _training_state(self, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The student's weights and the optimizer's state as a checkpoint holds them: whole, gathered
        from every process under FSDP (so every process must call this), the optimizer's keyed by
        parameter names there."""
        if not self._shards:
            return self.model_S.state_dict(), optimizer.state_dict()
        return (self._shards["student"].full_state_dict(),
                {OPTIMIZER_BY_NAME: sharding.optimizer_state(self._optimizer_holder(), optimizer)})

    def _optimizer_step(self, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
                        params: list[torch.Tensor], max_grad_norm: float) -> None:
        self.dist.average_gradients(params)
        if scaler is not None:
            scaler.unscale_(optimizer)
        if max_grad_norm is not None and max_grad_norm > 0 and self._shards:
            sharding.clip_grad_norm(params, max_grad_norm)
        elif max_grad_norm is not None and max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    def _checkpoint_due(self, step: int, total_steps: int, step_in_epoch: int,
                        steps_per_epoch: int | None, epoch: int, end_of_epoch: bool) -> bool:
        t = self.t_config
        if step >= total_steps:
            return True
        if t.ckpt_steps is not None:
            return step % t.ckpt_steps == 0
        if steps_per_epoch is None or epoch % t.ckpt_epoch_frequency != 0:
            return False
        interval = max(1, steps_per_epoch // t.ckpt_frequency)
        return step_in_epoch % interval == 0 or end_of_epoch

    def _save(self, position: _Position, weights: dict[str, torch.Tensor], optimizer_state: dict[str, Any],
              scheduler: Any, scaler: Any, epoch_rng: dict[str, Any], loader_rng: dict[str, Any], total_steps: int,
              accum: int, epoch_len: int | None, skipped_nonfinite: int = 0,
              validation: Validation | None = None) -> Path:
        state = {
            "skipped_nonfinite": skipped_nonfinite,
            "global_step": position.global_step,
            "epoch": position.epoch,
            "batch_in_epoch": position.batch_in_epoch,
            "total_steps": total_steps,
            "gradient_accumulation_steps": accum,
            "epoch_len": epoch_len,
            "optimizer": optimizer_state,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "extra": {name: m.state_dict() for name, m in self.extra_modules().items()},
            "rng": rng_state(),
            "epoch_rng": epoch_rng,
            "loader_rng": loader_rng,
            **({"validation": validation.state_dict()} if validation is not None else {}),
        }
        root = self.output_dir / CHECKPOINTS_DIR
        path = save_checkpoint(root, position.global_step, weights, state)
        if self.t_config.keep_checkpoints is not None:
            for old in list_checkpoints(root)[: -self.t_config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        if validation is not None:
            validation.prune(self.output_dir, list_checkpoints(root))
        return path

    def _clear_earlier_checkpoints(self) -> None:
        """A run that starts afresh removes the checkpoints an earlier run left in its folder:
        kept, they would outrank its own when old ones are pruned and when it is resumed."""
        earlier = list_checkpoints(self.output_dir / CHECKPOINTS_DIR)
        if not earlier or not self.dist.is_main:
            return
        warnings.warn(f"starting afresh in {self.output_dir}: removing {len(earlier)} checkpoint(s) of an earlier run "
                      "(use --resume, or resume=True, to continue that run instead)", stacklevel=3)
        for path in earlier:
            shutil.rmtree(path, ignore_errors=True)

    def _resume(self, resume: bool | str | Path, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
                total_steps: int, accum: int, epoch_len: int | None) -> dict[str, Any]:
        """Restore the newest readable checkpoint (or the one ``resume`` names). A corrupt newest
        one is named in a warning and set aside (``.corrupt``), and the next older one is used."""
        root = self.output_dir / CHECKPOINTS_DIR
        candidates = [Path(resume)] if resume is not True else list(reversed(list_checkpoints(root)))
        if not candidates:
            raise KDError(f"--resume: no checkpoint found under {root}; run without --resume to start afresh")
        damaged = []
        for path in candidates:
            try:
                return self._restore(path, optimizer, scheduler, scaler, total_steps, accum, epoch_len)
            except CorruptCheckpointError as exc:
                if resume is not True:
                    raise
                damaged.append(f"{path.name} ({exc.reason})")
                moved = set_aside(path) if self.dist.is_main else path
                warnings.warn(f"--resume: checkpoint {path} cannot be read ({exc.reason}); kept as {moved.name} and "
                              "resuming from the next older checkpoint", stacklevel=3)
        raise KDError(f"--resume: no checkpoint under {root} can be read: {'; '.join(damaged)}. "
                      "Run without --resume to start afresh")

    def _restore(self, path: Path, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
                 total_steps: int, accum: int, epoch_len: int | None) -> dict[str, Any]:
        model_state, state = load_checkpoint(path)
        expected = {"total_steps": total_steps, "gradient_accumulation_steps": accum, "epoch_len": epoch_len}
        changed = {k: (state[k], v) for k, v in expected.items() if state[k] != v}
        if changed:
            detail = ", ".join(f"{k} was {old}, now {new}" for k, (old, new) in changed.items())
            raise KDError(f"cannot resume from {path}: the run changed ({detail}); "
                          "resume with the same data, steps and accumulation, or start afresh")
        by_name = OPTIMIZER_BY_NAME in state["optimizer"]
        if by_name != bool(self._shards):
            raise KDError(f"cannot resume from {path}: it was written by a run with training.distributed "
                          f"{'fsdp' if by_name else 'ddp (or one process)'}; resume it the same way")
        if self._shards:
            self._shards["student"].load_full_state_dict(model_state)
        else:
            self.model_S.load_state_dict(model_state)
        for name, module in self.extra_modules().items():
            module.load_state_dict(state["extra"][name])
        if self._shards:
            sharding.load_optimizer_state(self._optimizer_holder(), optimizer, state["optimizer"][OPTIMIZER_BY_NAME])
        else:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        return state


def _restore_validation(validation: Validation, state: dict[str, Any], output_dir: Path, step: int,
                        is_main: bool) -> None:
    if "validation" not in state:
        raise KDError("--resume: the checkpoint was written by a run without a validation set; resume without "
                      "one, or start afresh")
    validation.load_state_dict(state["validation"])
    if is_main:
        validation.forget_after(output_dir, step)
        if validation.keep_best and validation.best_step is not None:
            validation.best_weights(output_dir)  # readable now, not only when training ends


def _throughput(examples: int, seconds: float) -> dict[str, float]:
    """The elapsed time and the examples a second over every process since training (re)started."""
    return {"elapsed_s": round(seconds, 3),
            **({"examples_per_s": round(examples / seconds, 2)} if examples and seconds > 0 else {})}


def _bar_fields(validation: Validation) -> dict[str, str]:
    """The progress bar's view of validation: the last value and the best (with its step)."""
    if not validation.history:
        return {}
    fields = {"val": f"{validation.history[-1][validation.metric]:.4f}"}
    if validation.best_value is not None:
        fields["best"] = f"{validation.best_value:.4f}@{validation.best_step}"
    return fields


def _check_finite(terms: dict[str, torch.Tensor], step: int) -> None:
    if not terms:
        raise ConfigError("the loss plan has no terms: every weight is zero and no match is configured")
    for name, value in terms.items():
        if not torch.isfinite(value.detach()).all():
            raise NonFiniteLossError(
                f"loss term {name!r} is {float(value.detach())} at step {step}; lower the learning "
                "rate, check the inputs, or use mixed_precision 'bf16' instead of 'fp16'")


def _add_param_groups(optimizer: torch.optim.Optimizer, groups: list[dict[str, Any]]) -> None:
    present = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for group in groups:
        if not any(id(p) in present for p in group["params"]):
            optimizer.add_param_group(group)


def _length(dataloader: Any) -> int | None:
    try:
        return len(dataloader)
    except TypeError:
        return None


def _loader_generators(dataloader: Any) -> list[torch.Generator]:
    found = []
    batch_sampler = getattr(dataloader, "batch_sampler", None)
    for owner in (dataloader, getattr(dataloader, "sampler", None), batch_sampler,
                  getattr(batch_sampler, "sampler", None)):
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
            found.append(generator)
    return found


def _loader_rng_state(dataloader: Any) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(),
            "generators": [g.get_state() for g in _loader_generators(dataloader)]}


def _set_loader_rng_state(dataloader: Any, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    for generator, saved in zip(_loader_generators(dataloader), state["generators"], strict=True):
        generator.set_state(saved)


class _MetricsLog:
    """``metrics.jsonl``: one JSON object per optimizer step, appended and flushed, and the same
    record sent to each tracker of ``report_to`` (by the main process only when training is
    distributed). A resumed run first drops what was written after ``truncate_after``."""

    def __init__(self, path: Path, truncate_after: int, enabled: bool, report_to: list[str], log_dir: Path) -> None:
        self.enabled = enabled
        self._loggers: list[Logger] = []
        if not enabled:
            return
        kept = []
        if path.exists() and truncate_after > 0:
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= truncate_after:
                        kept.append(line)
                except json.JSONDecodeError:
                    continue
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        try:
            for name in report_to:
                self._loggers.append(lookup("loggers", name)(log_dir, truncate_after))
        except BaseException:
            self._close_loggers()
            raise
        self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            self._handle.write(json.dumps(record) + "\n")
            self._handle.flush()
            for logger in self._loggers:
                logger.log(record, record["step"])

    def close(self) -> None:
        if self.enabled:
            self._handle.close()
            self._close_loggers()

    def _close_loggers(self) -> None:
        while self._loggers:
            self._loggers.pop().close()
