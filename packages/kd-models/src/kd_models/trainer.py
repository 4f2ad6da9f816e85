"""kd's distillation inside a transformers ``Trainer``, for training that already lives in a
Trainer script: :class:`DistillationTrainer`.

``compute_loss`` computes the step ``kd distill`` computes: the teacher's features (from the
teacher cache, or the batch's stored ``teacher_logits``, when configured), the student's, and the
terms of kd's LossPlan for the ``DistillationConfig`` (a recipe's ``distillation`` section as a
dict is read the same way). ``TrainingArguments`` stay in charge of everything else: batching,
gradient accumulation, mixed precision, checkpoints, logging. What kd adds to them:

- the projections of intermediate matches join the optimizer (``create_optimizer``), are clipped
  with the student (``max_grad_norm`` over both, as in kd's engine), and are saved with every
  Trainer checkpoint (``kd_loss_plan.pt``) and read back on resume;
- with several processes (torchrun, accelerate) the Trainer wraps the student in
  DistributedDataParallel, which knows nothing of the projections: they start from the main
  process's weights and their gradients are averaged across processes before clipping, as the
  student's are;
- every loss term is a mean over the items of the whole optimizer step (its real tokens, say),
  across the step's accumulated micro-batches and every process, as in kd's engine
  (:mod:`kd_core.normalization`), not the Trainer's mean of micro-batch means: the step's
  micro-batches are counted when the Trainer draws them (``get_batch_samples``), and each
  micro-batch's terms are weighted by their share of the step's items;
- every loss term is logged beside the Trainer's ``loss`` (its mean over the optimizer steps
  since the last log), so TensorBoard, W&B or any ``report_to`` sees them;
- the teacher is moved to the Trainer's device, in inference mode, and never optimised.

Adding distillation to a Trainer script::

    trainer = DistillationTrainer(model=student, teacher_model=teacher,
                                  distillation={"temperature": 4, "kd_loss_type": "kl", "hard_label_weight": 0.5},
                                  args=TrainingArguments(...), train_dataset=..., data_collator=...)
    trainer.train()
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from kd_core import distributed
from kd_core.config import DistillationConfig, TrainingConfig
from kd_core.distillers import GeneralDistiller
from kd_core.errors import ConfigError
from kd_core.features import Adaptor
from kd_core.normalization import step_weights, weight_of
from kd_core.tasks import get_task

LOSS_PLAN_FILE = "kd_loss_plan.pt"
"""The projections' weights in a Trainer checkpoint folder."""


class _ProjectionGradients(TrainerCallback):
    """The projections' gradients around the optimizer step. Without clipping, they are averaged
    across processes just before it (with clipping, ``_clip_grad_norm`` did it first). After it
    they are cleared: the Trainer clears the model's gradients (``model.zero_grad``), not the
    optimizer's, and the projections' would pile up from step to step."""

    def __init__(self, trainer: DistillationTrainer) -> None:
        self.trainer = trainer

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not args.max_grad_norm > 0:
            self.trainer.average_projection_gradients()

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer.loss_plan.zero_grad(set_to_none=True)


class DistillationTrainer(Trainer):
    """A ``transformers.Trainer`` whose loss is kd's distillation of ``teacher_model`` into
    ``model`` (see the module's docstring).

    ``distillation``: a :class:`~kd_core.DistillationConfig` or a recipe's ``distillation``
    section as a dict. The adaptors are those of ``task`` (a registered task name; the default
    reads classification and token-classification models, ``causal_lm`` decoder LMs) unless
    ``adaptor`` / ``teacher_adaptor`` are given. Every other argument is the Trainer's.
    """

    def __init__(self, model: nn.Module | None = None, teacher_model: nn.Module | None = None,
                 distillation: DistillationConfig | dict[str, Any] | None = None, *,
                 task: str = "sequence_classification", adaptor: Adaptor | None = None,
                 teacher_adaptor: Adaptor | None = None, **kwargs: Any) -> None:
        if model is None or teacher_model is None or distillation is None:
            raise TypeError("DistillationTrainer needs model (the student), teacher_model and distillation")
        config = distillation if isinstance(distillation, DistillationConfig) else \
            DistillationConfig.from_dict(distillation)
        if config.fused_linear:
            raise ConfigError("DistillationTrainer does not take distillation.fused_linear: the Trainer wraps and "
                              "autocasts the model's forward, which running the decoder alone would go around; "
                              "distil with kd distill or kd's distillers for it")
        registered = get_task(task)
        super().__init__(model=model, **kwargs)
        self.distiller = GeneralDistiller(
            TrainingConfig(output_dir=self.args.output_dir, device=str(self.args.device), progress=False), config,
            teacher_model, model, teacher_adaptor or registered.adaptor(teacher_model),
            adaptor or registered.adaptor(model))
        self.distiller.prepare()
        self.processes = distributed.current()
        self.processes.broadcast_module(self.distiller.loss_plan)
        self.add_callback(_ProjectionGradients(self))
        teacher_model.requires_grad_(False)
        self.loss_is_scaled_for_ga = True  # each micro-batch's terms carry their share of the step (compute_loss)
        self._shares: deque[dict[str, float]] = deque()
        self._term_sums: dict[str, float] = {}
        self._term_steps = 0

    @property
    def loss_plan(self) -> nn.Module:
        """kd's LossPlan: the terms, their weights and schedulers, and the projections."""
        return self.distiller.loss_plan

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer, with the projections' parameter groups added (with the
        arguments' weight decay, as the student's weights have it)."""
        optimizer = super().create_optimizer(model)
        present = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for group in self.distiller.extra_param_groups():
            if not any(id(p) in present for p in group["params"]):
                optimizer.add_param_group({"weight_decay": self.args.weight_decay, **group})
        return optimizer

    def average_projection_gradients(self) -> None:
        """Average the projections' gradients over the processes (DDP averages the student's)."""
        self.processes.average_gradients([p for p in self.loss_plan.parameters() if p.requires_grad])

    def _clip_grad_norm(self, model: nn.Module) -> Any:
        """Clip the student's and the projections' gradients together, as kd's engine does."""
        self.average_projection_gradients()
        projections = list(self.loss_plan.parameters())
        if not projections or self._has_mixed_mesh_grads(model):
            return super()._clip_grad_norm(model)
        return self.accelerator.clip_grad_norm_([*model.parameters(), *projections], self.args.max_grad_norm)

    def get_batch_samples(self, epoch_iterator: Iterator, num_batches: int,
                          device: torch.device) -> tuple[list, None]:
        """The Trainer's micro-batches of one optimizer step; their terms' shares of the step's
        items over every process are kept for :meth:`compute_loss`."""
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        counts = self.distiller.step_counts(batches)
        self._shares = deque(step_weights(counts, self.processes.sum_counts, self.processes.world_size))
        self._term_steps += bool(batches)
        return batches, None

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """kd's loss terms for one micro-batch: in training each weighted by the micro-batch's share
        of the step's items (so the step's sum is their mean over the step), in evaluation their
        plain sum; with ``return_outputs``, the student's logits too (what ``evaluate``'s metrics
        read)."""
        max_steps = self.state.max_steps or 0
        progress = self.state.global_step / max_steps if max_steps else 0.0
        distiller = self.distiller
        features_T = distiller.teacher_features(inputs)
        features_S = distiller.adaptor_S.run(model, inputs, distiller.loss_plan.needs_S)
        terms = distiller.loss_plan(features_S, features_T, progress)
        if not model.training:
            loss = sum(terms.values())
        elif not self._shares:
            raise RuntimeError("DistillationTrainer.compute_loss in training weighs each micro-batch by its share of "
                               "the optimizer step, which get_batch_samples counts; train with trainer.train()")
        else:
            shares = self._shares.popleft()
            weighted = {name: weight_of(shares, name) * value for name, value in terms.items()}
            for name, value in weighted.items():
                self._term_sums[name] = self._term_sums.get(name, 0.0) + float(value.detach())
            loss = sum(weighted.values())
        return (loss, {"logits": features_S["logits"]}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The Trainer's logs, with each loss term's mean over the optimizer steps since the last
        log, each step's term the mean over its items on every process (training logs only; every
        process logs at the same steps)."""
        if "loss" in logs and self._term_steps:
            names = sorted(self._term_sums)
            sums = self.processes.sum(torch.tensor([self._term_sums[name] for name in names], dtype=torch.float64,
                                                   device=self.args.device))
            # each process's shares carry the world size (DDP averages gradients over processes)
            means = (sums / (self._term_steps * self.processes.world_size)).tolist()
            logs = {**logs, **dict(zip(names, means, strict=True))}
            self._term_sums, self._term_steps = {}, 0
        super().log(logs, start_time)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if any(True for _ in self.loss_plan.parameters()) and self.args.should_save:
            folder = Path(self._get_output_dir(trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            torch.save(self.loss_plan.state_dict(), folder / LOSS_PLAN_FILE)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        saved = Path(resume_from_checkpoint) / LOSS_PLAN_FILE
        if saved.is_file():
            self.loss_plan.load_state_dict(torch.load(saved, map_location=self.args.device, weights_only=True))
