"""kd-models' plugin module: registers its adaptors, tasks, metrics, students and initializers."""

from __future__ import annotations

from kd_core import hookimpl
from kd_core.hookspecs import Register
from kd_models import initializers, students
from kd_models.adaptors import HFAdaptor, RNNAdaptor
from kd_models.causal_lm import METRICS as CAUSAL_LM_METRICS
from kd_models.causal_lm import CausalLMTask
from kd_models.general import GeneralTask
from kd_models.question_answering import QuestionAnsweringTask
from kd_models.squad import METRICS as SQUAD_METRICS
from kd_models.tasks import SequenceClassificationTask, TokenClassificationTask


@hookimpl
def kd_register_adaptors(register: Register) -> None:
    register("hf", HFAdaptor)
    register("rnn", RNNAdaptor)


@hookimpl
def kd_register_tasks(register: Register) -> None:
    register("sequence_classification", SequenceClassificationTask())
    register("token_classification", TokenClassificationTask())
    register("question_answering", QuestionAnsweringTask())
    register("general", GeneralTask())
    register("causal_lm", CausalLMTask())


@hookimpl
def kd_register_metrics(register: Register) -> None:
    for name, metric in {**SQUAD_METRICS, **CAUSAL_LM_METRICS}.items():
        register(name, metric)


@hookimpl
def kd_register_students(register: Register) -> None:
    for name, builder in students.PRESET_BUILDERS.items():
        register(name, builder)
    register("bilstm", students.bilstm)
    register("bigru", students.bigru)


@hookimpl
def kd_register_initializers(register: Register) -> None:
    register("layer_copy", initializers.layer_copy)
    register("etd_rand", initializers.etd_rand)
    register("etd_impt", initializers.etd_impt)
