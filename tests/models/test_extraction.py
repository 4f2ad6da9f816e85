"""ETD extraction and layer selection, checked against the teacher's own weights.

Index sets are recovered from the student's word embeddings by matching columns with the teacher's,
never read from the extraction code; importance is checked by planting dimensions that carry
nothing (all-zero activations), which first-order Taylor importance must never keep.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kd_core import ConfigError, lookup
from kd_models import extract_student, select_layers
from tests.models.tiny import tiny_batch, tiny_model

MINILM_SHAPE = {"layers": 6, "hidden": 384, "heads": 12, "ffn": 1536}


def _randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every LayerNorm distinct random weights and biases, so that its slices are recognisable."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator))
    return model


def _columns_in(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """For each column of ``student`` the index of the identical column of ``teacher``."""
    distance = torch.cdist(student.T.contiguous(), teacher.T.contiguous(), compute_mode="donot_use_mm_for_euclid_dist")
    found = distance.argmin(1)
    assert torch.equal(teacher[:, found], student), "every student column must be a teacher column"
    return found


def _rows_in(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return _columns_in(student.T, teacher.T)


def _norms(model: nn.Module) -> list[nn.LayerNorm]:
    return [m for m in model.modules() if isinstance(m, nn.LayerNorm)]


@pytest.mark.parametrize("family", ["bert", "roberta", "electra", "distilbert"])
@pytest.mark.parametrize("method", ["rand", "impt", "first"])
def test_extraction_at_full_width_and_depth_is_the_teacher(family: str, method: str) -> None:
    teacher = tiny_model(family, layers=4)
    batches = [tiny_batch(labels="sequence", seed=s) for s in range(2)]
    student = extract_student(teacher, 4, method=method, dataloader=batches, progress=False).eval()
    assert type(student) is type(teacher)
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    assert teacher_state.keys() == student_state.keys()
    assert all(torch.equal(teacher_state[k], student_state[k]) for k in teacher_state)
    batch = tiny_batch()
    assert torch.equal(student(**batch).logits, teacher(**batch).logits)


@pytest.fixture(scope="module")
def minilm_shaped() -> nn.Module:
    """A random BERT of all-MiniLM-L6-v2's shape (6 x 384, 12 heads, FFN 1536) with a small vocabulary."""
    m = MINILM_SHAPE
    return _randomise_norms(tiny_model("bert", layers=m["layers"], hidden=m["hidden"], heads=m["heads"],
                                       ffn=m["ffn"]))


@pytest.mark.parametrize("method", ["rand", "impt"])
def test_hidden_consistency_one_index_set_for_every_norm_and_uniform_layers(minilm_shaped: nn.Module,
                                                                            method: str) -> None:
    teacher = minilm_shaped
    batches = [tiny_batch(batch=4, length=9, labels="sequence", seed=s) for s in range(2)]
    student = extract_student(teacher, 3, 192, 768, method=method, dataloader=batches, progress=False)
    assert (student.config.num_hidden_layers, student.config.hidden_size, student.config.intermediate_size,
            student.config.num_attention_heads) == (3, 192, 768, 12)
    index = _columns_in(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
    assert len(set(index.tolist())) == 192
    for s_norm, t_norm in zip(_norms(student), [_norms(teacher)[0], *_norms(teacher)[3:5], *_norms(teacher)[7:9],
                                                *_norms(teacher)[11:13]], strict=True):
        assert torch.equal(s_norm.weight, t_norm.weight[index]) and torch.equal(s_norm.bias, t_norm.bias[index])
    for position, teacher_layer in enumerate([1, 3, 5]):
        s_block, t_block = student.bert.encoder.layer[position], teacher.bert.encoder.layer[teacher_layer]
        ffn_rows = _rows_in(s_block.intermediate.dense.weight, t_block.intermediate.dense.weight[:, index])
        assert torch.equal(s_block.output.dense.weight, t_block.output.dense.weight[index][:, ffn_rows])
        query_rows = _rows_in(s_block.attention.self.query.weight, t_block.attention.self.query.weight[:, index])
        assert torch.equal(query_rows // 32, torch.arange(12).repeat_interleave(16)), "16 of 32 dims in each head"
        for name in ("key", "value"):
            t_proj = getattr(t_block.attention.self, name)
            assert torch.equal(getattr(s_block.attention.self, name).weight, t_proj.weight[query_rows][:, index])
    assert torch.equal(student.classifier.weight, teacher.classifier.weight[:, index])
    assert torch.equal(student.bert.pooler.dense.weight, teacher.bert.pooler.dense.weight[index][:, index])


def test_without_hidden_consistency_every_stream_has_its_own_indices(minilm_shaped: nn.Module) -> None:
    teacher = minilm_shaped
    student = extract_student(teacher, 3, 192, 768, method="rand", hidden_consistency=False)
    embedding_index = _columns_in(student.bert.embeddings.word_embeddings.weight,
                                  teacher.bert.embeddings.word_embeddings.weight)
    first_norm, teacher_norm = student.bert.encoder.layer[0].attention.output.LayerNorm, _norms(teacher)[3]
    norm_index = _columns_in(first_norm.weight[None], teacher_norm.weight[None])
    assert not torch.equal(norm_index, embedding_index)
    consistent = extract_student(teacher, 3, 192, 768, method="rand")
    batch = tiny_batch()
    assert not torch.allclose(student(**batch).logits, consistent(**batch).logits)


def _plant_dead_dimensions(model: nn.Module) -> dict[str, torch.Tensor]:
    """Silence half of the hidden dimensions (every LayerNorm zero there), of the FFN neurons and of
    the neurons inside each head (their projections zero): their activations are 0, so is their
    Taylor importance."""
    generator = torch.Generator().manual_seed(1)
    dead = {"hidden": torch.randperm(384, generator=generator)[:192],
            "ffn": torch.randperm(1536, generator=generator)[:768],
            "head": torch.randperm(32, generator=generator)[:16]}
    head_rows = (dead["head"][None, :] + 32 * torch.arange(12)[:, None]).flatten()
    with torch.no_grad():
        for norm in _norms(model):
            norm.weight[dead["hidden"]] = 0
            norm.bias[dead["hidden"]] = 0
        for block in model.bert.encoder.layer:
            for projection in (block.attention.self.query, block.attention.self.key, block.attention.self.value):
                projection.weight[head_rows] = 0
                projection.bias[head_rows] = 0
            block.intermediate.dense.weight[dead["ffn"]] = 0
            block.intermediate.dense.bias[dead["ffn"]] = -10  # GELU(-10) is 0 to float precision
    return dead | {"head_rows": head_rows}


def test_impt_keeps_only_dimensions_that_matter_and_rand_does_not() -> None:
    m = MINILM_SHAPE
    teacher = _randomise_norms(tiny_model("bert", layers=6, hidden=m["hidden"], heads=m["heads"], ffn=m["ffn"]))
    dead = _plant_dead_dimensions(teacher)

    class CountingLoader:
        def __init__(self) -> None:
            self.served = 0

        def __iter__(self):
            for seed in range(100):
                self.served += 1
                yield tiny_batch(batch=4, length=9, labels="sequence", seed=seed)

    loader = CountingLoader()
    kept = {}
    for method in ("impt", "rand"):
        student = extract_student(teacher, 3, 192, 768, method=method, dataloader=loader, num_batches=3,
                                  progress=False)
        hidden = _columns_in(student.bert.embeddings.word_embeddings.weight,
                             teacher.bert.embeddings.word_embeddings.weight)
        block, t_block = student.bert.encoder.layer[0], teacher.bert.encoder.layer[1]
        ffn = _columns_in(block.output.dense.weight, t_block.output.dense.weight[hidden]).tolist()
        kept[method] = {"hidden": set(hidden.tolist()), "ffn": set(ffn)}
    assert loader.served == 3, "impt reads exactly num_batches batches; rand reads none"
    assert not kept["impt"]["hidden"] & set(dead["hidden"].tolist())
    assert not kept["impt"]["ffn"] & set(dead["ffn"].tolist())
    assert kept["rand"]["hidden"] & set(dead["hidden"].tolist()), "rand ignores importance"
    assert kept["impt"]["hidden"] != kept["rand"]["hidden"]


def test_impt_ignores_dead_neurons_inside_heads() -> None:
    m = MINILM_SHAPE
    teacher = tiny_model("bert", layers=2, hidden=m["hidden"], heads=m["heads"], ffn=m["ffn"])
    dead = _plant_dead_dimensions(teacher)
    batches = [tiny_batch(batch=4, length=9, labels="sequence", seed=s) for s in range(2)]
    student = extract_student(teacher, 2, 192, 768, method="impt", dataloader=batches, progress=False)
    index = _columns_in(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
    rows = _rows_in(student.bert.encoder.layer[0].attention.self.value.weight,
                    teacher.bert.encoder.layer[0].attention.self.value.weight[:, index])
    assert not set(rows.tolist()) & set(dead["head_rows"].tolist())


def test_layer_selection_rules() -> None:
    assert select_layers(6, 3) == [1, 3, 5]
    assert select_layers(12, 4) == [2, 5, 8, 11]
    assert select_layers(6, 3, "top") == [3, 4, 5] and select_layers(6, 3, "bottom") == [0, 1, 2]
    assert select_layers(6, 2, [0, 4]) == [0, 4]
    with pytest.raises(ConfigError, match="strictly increasing"):
        select_layers(6, 2, [4, 0])
    with pytest.raises(ConfigError, match="between 1 and the teacher's 6 layers"):
        select_layers(6, 7)


def test_extraction_rejects_shapes_it_cannot_make() -> None:
    teacher = tiny_model("bert", layers=2)
    with pytest.raises(ConfigError, match="multiple of its 4 attention heads"):
        extract_student(teacher, 2, 30)
    with pytest.raises(ConfigError, match="needs a dataloader"):
        extract_student(teacher, 2, 16, method="impt")
    with pytest.raises(ConfigError, match=r"knows the encoder layouts of .*bert.*distilbert"):
        extract_student(tiny_model("mpnet"), 2, 16)


def test_registered_initializers_take_the_students_shape() -> None:
    teacher = tiny_model("bert", layers=4)
    shaped = tiny_model("bert", layers=2, hidden=16, ffn=32)
    student = lookup("initializers", "etd_rand")(teacher, shaped)
    assert (student.config.num_hidden_layers, student.config.hidden_size) == (2, 16)
    copied = lookup("initializers", "layer_copy")(teacher, tiny_model("bert", layers=2), layer_selection="bottom")
    assert torch.equal(copied.bert.encoder.layer[1].output.dense.weight,
                       teacher.bert.encoder.layer[1].output.dense.weight)
    with pytest.raises(ConfigError, match="'layer_copy' keeps the teacher's width"):
        lookup("initializers", "layer_copy")(teacher, shaped)
    with pytest.raises(ConfigError, match="keeps the teacher's 4 attention heads; the student has 2"):
        lookup("initializers", "etd_rand")(teacher, tiny_model("bert", layers=2, hidden=16, heads=2, ffn=32))
    with pytest.raises(ConfigError, match="'etd_impt' needs batches of the training data"):
        lookup("initializers", "etd_impt")(teacher, shaped)
