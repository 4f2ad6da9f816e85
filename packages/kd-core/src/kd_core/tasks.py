"""The Task protocol: what a recipe needs to know about one kind of problem.

kd-core stays free of model libraries; a plugin (kd-models for Hugging Face models) registers
tasks such as ``sequence_classification`` through ``kd_register_tasks``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from torch import nn
from torch.utils.data import Dataset

from kd_core.features import Adaptor

if TYPE_CHECKING:
    from kd_core.schema import DataSpec, ModelSpec, StudentSpec


@dataclass
class PreparedData:
    """Datasets ready for a DataLoader, and the collate function that batches them."""

    train: Dataset
    eval: Dataset | None
    collate: Any
    extra_eval: dict[str, Dataset] = field(default_factory=dict)
    """More evaluation sets by name (``data.extra_eval``: CoLA's out-of-domain dev, MNLI's
    mismatched), scored beside ``eval``."""


class Task(Protocol):
    """How to load, build, feed and save the models of one kind of problem."""

    def load_teacher(self, spec: ModelSpec, train_head: bool = False) -> nn.Module:
        """Load the model named by ``spec`` (a recipe's ``teacher`` section). A task head its
        checkpoint lacks must raise :class:`~kd_core.errors.UntrainedHeadError` unless
        ``train_head`` (the head is about to be trained, as by ``kd train``) or
        ``spec.allow_untrained_head`` (then with a warning)."""

    def build_student(self, spec: StudentSpec, teacher: nn.Module) -> nn.Module:
        """Build the student from the recipe's ``student`` section (usually from the teacher's
        config, so the vocabulary and tokenizer stay the same)."""

    def prepare_data(self, spec: DataSpec, teacher_spec: ModelSpec, base_dir: Path | None) -> PreparedData:
        """Read and tokenize the recipe's data."""

    def adaptor(self, model: nn.Module) -> Adaptor:
        """The adaptor that extracts features from ``model``."""

    def save_model(self, model: nn.Module, directory: Path, teacher_spec: ModelSpec) -> None:
        """Save ``model`` (and what it needs to be used, such as its tokenizer) to ``directory``."""

    def build_multitask_student(self, spec: StudentSpec, teachers: dict[str, nn.Module]) -> nn.Module:
        """A student with one head per task (``teachers`` maps each task to its teacher)."""

    def head_adaptor(self, model: nn.Module, head: str) -> Adaptor:
        """The adaptor that reads the multi-task student's head for task ``head``."""
