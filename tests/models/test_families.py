"""The ``hf`` adaptor on every supported encoder family, SDPA and eager, sequence and token heads:
captured Q/K/V reproduce the model's own eager attention maps."""

from __future__ import annotations

import pytest
import torch

from kd_core import ConfigError, FeatureNeeds, lookup
from kd_models.adaptors import attention_from_qk
from tests.models.tiny import FAMILIES, SDPA_FAMILIES, tiny_batch, tiny_model

CASES = [(family, "eager") for family in FAMILIES] + [(family, "sdpa") for family in SDPA_FAMILIES]


def _eager_attentions(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, ...]:
    """The model's own attention probabilities, from a copy of it that runs eager attention."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    auto = AutoModelForTokenClassification if "TokenClassification" in type(model).__name__ \
        else AutoModelForSequenceClassification
    eager = auto.from_config(model.config, attn_implementation="eager").eval()
    eager.load_state_dict(model.state_dict())
    return eager(**batch, output_attentions=True).attentions


@pytest.mark.parametrize(("family", "attn"), CASES)
@pytest.mark.parametrize("head", ["sequence", "token"])
def test_attention_from_the_adaptor_is_the_models_eager_attention(family: str, attn: str, head: str) -> None:
    model = tiny_model(family, head=head, attn=attn)
    batch = tiny_batch(labels=head)
    needs = FeatureNeeds({"attention": {0, -1}, "q": {1}, "k": {1}, "v": {1}, "hidden": {3}})
    features = lookup("adaptors", "hf")().run(model, batch, needs)
    hooked = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m._forward_hooks]
    assert not hooked, "kd's Q/K/V hooks must not outlive the forward pass"

    eager = _eager_attentions(model, batch)
    assert [a is not None for a in features["attention"]] == [True, False, True] or not attention_from_qk(model)
    assert [v is not None for v in features["v"]] == [False, True, False]
    real_rows = batch["attention_mask"].bool()[:, None, :, None].expand(-1, 4, -1, 7)
    for layer in (0, 2):
        torch.testing.assert_close(features["attention"][layer][real_rows], eager[layer][real_rows])
    for name in ("q", "k", "v"):
        assert features[name][1].shape == (2, 4, 7, 8)  # [B, H, L, d]
    assert len(features["hidden"]) == 4 and features["hidden"][3].shape == (2, 7, 32)
    if head == "token":
        assert features["logits"].shape == (2, 7, 2)
        assert torch.equal(features["logits_mask"], batch["attention_mask"])
    else:
        assert features["logits"].shape == (2, 2) and features["logits_mask"] is None
    assert torch.equal(features["labels"], batch["labels"])


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "electra"])
def test_attention_scores_are_the_pre_softmax_of_the_attention(family: str) -> None:
    model = tiny_model(family, attn="sdpa")
    batch = tiny_batch()
    features = lookup("adaptors", "hf")().run(model, batch, FeatureNeeds({"attention_scores": {2}, "attention": {2}}))
    scores = features["attention_scores"][2].masked_fill(batch["attention_mask"][:, None, None, :] == 0, -1e9)
    torch.testing.assert_close(scores.softmax(-1), features["attention"][2])


@pytest.mark.parametrize("family", ["mpnet", "deberta-v2"])
def test_relative_position_families_refuse_qk_scores(family: str) -> None:
    with pytest.raises(ConfigError, match=r"relative-position terms .* distil 'attention'"):
        lookup("adaptors", "hf")().run(tiny_model(family), tiny_batch(), FeatureNeeds({"attention_scores": {0}}))


def test_adaptor_names_the_missing_logits_and_how_to_write_an_adaptor() -> None:
    from transformers import AutoModel

    from tests.models.tiny import tiny_config

    base = AutoModel.from_config(tiny_config("bert")).eval()  # no task head: no logits
    with pytest.raises(ConfigError, match=r"no 'logits' in the model's outputs \(it has: last_hidden_state.*"
                                          r"write an adaptor"):
        lookup("adaptors", "hf")().run(base, tiny_batch(), FeatureNeeds({"logits": set()}))


@pytest.mark.real_teacher
def test_packaged_minilm_qk_attention_equals_its_eager_attention(minilm_path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2).eval()
    assert model.config._attn_implementation == "sdpa"
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    batch = dict(tokenizer(["a gripping, funny film", "dull"], padding=True, return_tensors="pt"))
    features = lookup("adaptors", "hf")().run(model, batch, FeatureNeeds({"attention": {-1}}))
    eager = _eager_attentions(model, batch)
    real_rows = batch["attention_mask"].bool()[:, None, :, None].expand_as(eager[-1])
    torch.testing.assert_close(features["attention"][5][real_rows], eager[-1][real_rows])


@pytest.mark.parametrize("head", ["sequence", "token"])
def test_teacher_cache_gives_back_every_feature_at_the_real_tokens(head: str) -> None:
    from kd_core.teacher_cache import TeacherCache

    model = tiny_model("bert", head=head)
    batch = tiny_batch(labels=head)
    needs = FeatureNeeds({"logits": set(), "hidden": {1, -1}, "attention": {-1}, "q": {0}, "v": {0}})
    adaptor = lookup("adaptors", "hf")()
    fresh = adaptor.run(model, batch, needs)
    cache = TeacherCache(model)
    with torch.no_grad():
        first = cache.features(batch, needs, lambda: adaptor.run(model, batch, needs))
        again = cache.features(batch, needs, lambda: pytest.fail("the second call must hit the cache"))
    assert (cache.stats.hits, cache.stats.misses, cache.stats.teacher_forwards) == (2, 2, 1)
    real = batch["attention_mask"].bool()
    for features in (first, again):
        rows = real if head == "token" else torch.ones(2, dtype=torch.bool)
        torch.testing.assert_close(features["logits"][rows], fresh["logits"][rows].detach())
        for layer in (1, 3):
            torch.testing.assert_close(features["hidden"][layer][real], fresh["hidden"][layer][real].detach())
        assert features["hidden"][0] is None and features["q"][1] is None
        for name in ("q", "v"):
            torch.testing.assert_close(features[name][0].transpose(1, 2)[real], fresh[name][0].transpose(1, 2)[real])
        pairs = real[:, None, :, None] & real[:, None, None, :]
        torch.testing.assert_close(features["attention"][2][pairs.expand(-1, 4, -1, -1)],
                                   fresh["attention"][2][pairs.expand(-1, 4, -1, -1)])
        assert torch.all(features["hidden"][3][~real] == 0)
