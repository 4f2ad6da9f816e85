"""ETD for decoders of the Llama layout: at full shape extraction is the teacher itself; a
narrower student keeps whole key/value groups (their query heads and every head dimension, so
rotary embeddings and the grouping stay exact), one hidden index set for the embeddings, every
RMSNorm and the tied head, and the SwiGLU neurons chosen; importance picks the best-scored ones."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from kd_core import ConfigError, lookup
from kd_models.causal_lm import CausalLMCollator
from kd_models.decoder_extraction import (
    DecoderShape,
    extract_decoder,
    plan_decoder_selection,
    record_decoder_activations,
)
from kd_models.extraction import select_layers, taylor_importance
from kd_models.students import transformer_student
from tests.models.tiny import WIKITEXT, tiny_llama, wikitext_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return wikitext_tokenizer()


def _llama(tokenizer, kv_heads: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=4,
                                        num_attention_heads=4, num_key_value_heads=kv_heads, intermediate_size=64,
                                        max_position_embeddings=128, tie_word_embeddings=True, bos_token_id=0,
                                        eos_token_id=0)).eval()


def _qwen2(tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
                                        max_position_embeddings=128, tie_word_embeddings=False)).eval()


def _batches(tokenizer, count: int = 3) -> list[dict[str, torch.Tensor]]:
    lines = [line for line in WIKITEXT.read_text(encoding="utf-8").splitlines() if line.strip()][:4 * count]
    collate = CausalLMCollator(tokenizer)
    examples = [{"input_ids": tokenizer(line)["input_ids"][:24]} for line in lines]
    return list(DataLoader(examples, batch_size=4, collate_fn=collate))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_extraction_at_full_shape_is_the_teacher(tokenizer, family: str) -> None:
    teacher = _llama(tokenizer) if family == "llama" else _qwen2(tokenizer)
    shape = DecoderShape.of(teacher)
    student = extract_decoder(teacher, shape.layers, method="rand")
    batch = _batches(tokenizer, 1)[0]
    with torch.no_grad():
        torch.testing.assert_close(student(**batch).logits, teacher(**batch).logits)


def test_a_narrower_student_keeps_whole_groups_and_one_hidden_index_set(tokenizer) -> None:
    teacher = _llama(tokenizer)
    student = extract_decoder(teacher, 2, hidden_size=24, intermediate_size=40, kv_heads=1, method="rand", seed=3)
    config = student.config
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (2, 24, 40)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 1, 8)
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr(), "still tied"
    embed_T, embed_S = teacher.model.embed_tokens.weight, student.model.embed_tokens.weight
    hidden = torch.tensor([next(j for j in range(32) if torch.equal(embed_T[:, j], embed_S[:, i])) for i in range(24)])
    assert torch.all(hidden[1:] > hidden[:-1]), "kept dimensions stay in the teacher's order"
    for position, layer in enumerate(select_layers(4, 2)):
        block_T, block_S = teacher.model.layers[layer], student.model.layers[position]
        torch.testing.assert_close(block_S.input_layernorm.weight, block_T.input_layernorm.weight[hidden])
        q_T = block_T.self_attn.q_proj.weight[:, hidden].view(4, 8, 24)
        k_T = block_T.self_attn.k_proj.weight[:, hidden].view(2, 8, 24)
        q_S = block_S.self_attn.q_proj.weight.view(2, 8, 24)
        group = next(g for g in range(2) if torch.equal(block_S.self_attn.k_proj.weight, k_T[g]))
        torch.testing.assert_close(q_S, q_T[2 * group:2 * group + 2], msg="the group's own query heads, whole")
        torch.testing.assert_close(block_S.self_attn.v_proj.weight,
                                   block_T.self_attn.v_proj.weight[:, hidden].view(2, 8, 24)[group])
        o_T = block_T.self_attn.o_proj.weight[hidden].view(24, 4, 8)[:, 2 * group:2 * group + 2].reshape(24, 16)
        torch.testing.assert_close(block_S.self_attn.o_proj.weight, o_T)
        gate_T, gate_S = block_T.mlp.gate_proj.weight[:, hidden], block_S.mlp.gate_proj.weight
        neurons = [next(n for n in range(64) if torch.equal(gate_T[n], gate_S[i])) for i in range(40)]
        torch.testing.assert_close(block_S.mlp.up_proj.weight, block_T.mlp.up_proj.weight[neurons][:, hidden])
        torch.testing.assert_close(block_S.mlp.down_proj.weight, block_T.mlp.down_proj.weight[hidden][:, neurons])
    torch.testing.assert_close(student.model.norm.weight, teacher.model.norm.weight[hidden])
    batch = _batches(tokenizer, 1)[0]
    assert student(**batch).logits.shape == teacher(**batch).logits.shape
    assert student.generate(batch["input_ids"][:1, :4], max_new_tokens=3, do_sample=False).shape == (1, 7)


def test_importance_keeps_the_best_scored_groups_neurons_and_dimensions(tokenizer) -> None:
    teacher = _llama(tokenizer)
    batches = _batches(tokenizer)
    importance = taylor_importance(teacher, batches, progress=False, record=record_decoder_activations)
    shape = DecoderShape.of(teacher)
    selection = plan_decoder_selection(shape, [0, 3], 20, 16, 1, "impt", importance, 0)
    hidden_scores = sum(v for (kind, _), v in importance.scores.items() if kind == "hidden")
    assert set(selection.hidden.tolist()) == set(hidden_scores.topk(20).indices.tolist())
    for layer in (0, 3):
        assert set(selection.ffn[layer].tolist()) == set(importance.scores[("ffn", layer)].topk(16).indices.tolist())
        groups = [importance.scores[("q_proj", layer)].view(2, 16).sum(-1)[g]
                  + importance.scores[("k_proj", layer)].view(2, 8).sum(-1)[g]
                  + importance.scores[("v_proj", layer)].view(2, 8).sum(-1)[g] for g in range(2)]
        assert selection.groups[layer].tolist() == [int(torch.stack(groups).argmax())]


def test_the_etd_initializers_extract_decoders_and_explain_what_they_keep(tokenizer) -> None:
    teacher = _llama(tokenizer)
    student = transformer_student(teacher, num_hidden_layers=2, hidden_size=16, intermediate_size=32,
                                  num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    extracted = lookup("initializers", "etd_impt")(teacher, student, data=_batches(tokenizer), num_batches=2)
    assert extracted.model.layers[0].self_attn.k_proj.weight.shape == (8, 16)
    again = lookup("initializers", "etd_rand")(teacher, student, seed=1)
    assert DecoderShape.of(again) == DecoderShape.of(extracted)
    with pytest.raises(ConfigError, match="leave hidden_consistency on"):
        lookup("initializers", "etd_rand")(teacher, student, hidden_consistency=False)
    wrong = transformer_student(teacher, num_hidden_layers=2, hidden_size=16, num_attention_heads=2,
                                num_key_value_heads=2, head_dim=8)
    with pytest.raises(ConfigError, match="keeps whole key/value groups of the teacher"):
        lookup("initializers", "etd_rand")(teacher, wrong)
    with pytest.raises(ConfigError, match="num_key_value_heads 3 must be between 1 and the teacher's 2"):
        extract_decoder(teacher, 2, kv_heads=3)


def test_tiny_llama_is_a_decoder_extraction_knows(tokenizer) -> None:
    shape = DecoderShape.of(tiny_llama(len(tokenizer)))
    assert (shape.heads, shape.kv_heads, shape.group, shape.head_dim) == (4, 2, 2, 8)


def test_qwen2_slices_its_biases_and_derives_head_dim_from_the_width(tokenizer, tmp_path) -> None:
    teacher = _qwen2(tokenizer)
    student = extract_decoder(teacher, 2, hidden_size=16, intermediate_size=24, kv_heads=1, method="first")
    block_T, block_S = teacher.model.layers[select_layers(3, 2)[0]], student.model.layers[0]
    torch.testing.assert_close(block_S.self_attn.q_proj.bias, block_T.self_attn.q_proj.bias[:16])
    torch.testing.assert_close(block_S.self_attn.k_proj.bias, block_T.self_attn.k_proj.bias[:8])
    torch.testing.assert_close(student.lm_head.weight, teacher.lm_head.weight[:, :16])
    batch = _batches(tokenizer, 1)[0]
    student.save_pretrained(tmp_path / "student")  # one attention kind per kept layer, or saving fails
    reloaded = type(student).from_pretrained(tmp_path / "student").eval()
    assert reloaded.config.layer_types == ["full_attention"] * 2
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, student.eval()(**batch).logits)
    with pytest.raises(ConfigError, match="derives head_dim from hidden_size / num_attention_heads"):
        extract_decoder(teacher, 2, hidden_size=24, kv_heads=1)


def test_shallower_students_get_one_attention_kind_per_layer(tokenizer, tmp_path) -> None:
    """Qwen2's config lists each layer's attention kind: a layer-copied student saves and reloads;
    a teacher that mixes kinds makes the student name its own, or the kept layers' are checked."""
    teacher = _qwen2(tokenizer)
    student = lookup("initializers", "layer_copy")(teacher, transformer_student(teacher, num_hidden_layers=2))
    student.save_pretrained(tmp_path / "copied")
    assert type(student).from_pretrained(tmp_path / "copied").config.layer_types == ["full_attention"] * 2
    teacher.config.layer_types = ["sliding_attention", "full_attention", "sliding_attention"]
    with pytest.raises(ConfigError, match="the teacher's layers mix attention kinds"):
        transformer_student(teacher, num_hidden_layers=2)
    named = transformer_student(teacher, num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"])
    with pytest.raises(ConfigError, match=r"set student\.config\.layer_types to match"):
        lookup("initializers", "layer_copy")(teacher, named)  # uniform keeps layers 0 and 2, both sliding
