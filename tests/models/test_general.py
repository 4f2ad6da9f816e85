"""Task general: the corpus (packing, cache, mixture, select, SQuAD contexts), each paper's
objective against its formula written out here, general students saved and reloaded under every
task head, ETD importance on unlabelled text, and runs that resume on the same sequences."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from click.testing import CliRunner
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertModel

from kd_core import ConfigError, get_task
from kd_core.cli import build_cli
from kd_core.config import DistillationConfig
from kd_core.loss_plan import LossPlan
from kd_core.schema import DataFile, ModelSpec, StudentSpec
from kd_models import corpus
from kd_models.corpus import packed_sequences, read_corpus
from kd_models.general import GeneralTask
from kd_models.squad import read_contexts
from tests.models.interrupted import straight_killed_resumed

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "examples" / "recipes"
DATA = ROOT / "examples" / "data"
DOCUMENTS = ["The cat sat on the mat .", "A very long document follows here, with many words that run on and on "
             "until it fills more than one packed sequence of the corpus by itself alone .",
             "short one", "Another paragraph about distillation of language models into small students ."]


@pytest.fixture(autouse=True)
def _corpus_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "kd-cache"))


@pytest.fixture
def tokenizer(minilm_path: Path):
    return AutoTokenizer.from_pretrained(minilm_path)


def _tiny_config(**overrides) -> BertConfig:
    settings = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
                "intermediate_size": 64, "max_position_embeddings": 64, "hidden_dropout_prob": 0.0,
                "attention_probs_dropout_prob": 0.0}
    return BertConfig(**{**settings, **overrides})


def _saved_tiny(model_class: type, seed: int, directory: Path, minilm_path: Path) -> Path:
    """A tiny random ``model_class`` saved in ``directory`` with MiniLM's tokenizer."""
    torch.manual_seed(seed)
    model_class(_tiny_config()).save_pretrained(directory)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Path:
    """A tiny random base encoder (no head), like a sentence-embedding teacher."""
    return _saved_tiny(BertModel, 5, tmp_path_factory.mktemp("tiny-encoder"), minilm_path)


@pytest.fixture(scope="module")
def tiny_masked_lm(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Path:
    """A tiny random BERT with its masked-LM head."""
    return _saved_tiny(BertForMaskedLM, 6, tmp_path_factory.mktemp("tiny-mlm"), minilm_path)


def _text_file(tmp_path: Path, lines: list[str], name: str = "corpus.txt") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


# -- the corpus ---------------------------------------------------------------------------------


def test_packing_keeps_every_token_in_order_with_a_separator_between_documents(tokenizer) -> None:
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    sequences = list(packed_sequences(iter(DOCUMENTS), tokenizer, 12))
    assert all(s[0] == cls and s[-1] == sep for s in sequences)
    assert all(len(s) == 12 for s in sequences[:-1]) and 3 <= len(sequences[-1]) <= 12
    # the stream: the documents' tokens with a separator between two documents, cut into blocks of
    # 10; a separator that would open a block is dropped (the block before closes with [SEP])
    stream = []
    for document in DOCUMENTS:
        stream += ([sep] if stream else []) + tokenizer(document, add_special_tokens=False)["input_ids"]
    blocks, block = [], []
    for token in stream:
        if not block and token == sep:
            continue
        block.append(token)
        if len(block) == 10:
            blocks.append(block)
            block = []
    blocks += [block] if block else []
    assert [s[1:-1] for s in sequences] == blocks


def test_a_source_is_tokenized_once_and_read_memory_mapped(tokenizer, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = _text_file(tmp_path, DOCUMENTS * 5)
    first = read_corpus(DataFile(path=str(path)), tokenizer, 16, None, "data.train", progress=False)
    monkeypatch.setattr(corpus, "_build", lambda *a, **k: pytest.fail("the cached source was tokenized again"))
    again = read_corpus(DataFile(path=str(path)), tokenizer, 16, None, "data.train", progress=False)
    assert [again[i] for i in range(len(again))] == [first[i] for i in range(len(first))]
    files = again.parts[0][0].cache_files
    assert files and all(Path(f["filename"]).is_relative_to(tmp_path / "kd-cache") for f in files), \
        "the sequences are mapped from the cache's Arrow files, not held in memory"
    expected = list(packed_sequences(iter(DOCUMENTS * 5), tokenizer, 16))
    assert [first[i]["input_ids"] for i in range(len(first))] == expected
    path.write_text("\n".join(DOCUMENTS) + "\n")
    monkeypatch.undo()
    changed = read_corpus(DataFile(path=str(path)), tokenizer, 16, None, "data.train", progress=False)
    assert len(changed) < len(first), "a changed file is tokenized anew"


def test_sources_mix_by_weight_and_select_keeps_the_chosen_rows(tokenizer, tmp_path: Path) -> None:
    wiki = _text_file(tmp_path, DOCUMENTS * 4, "wiki.txt")
    reviews = tmp_path / "reviews.csv"
    with reviews.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label", "source"])
        for i in range(40):
            writer.writerow([f"review number {i} of the imdb kind", 1, "imdb"])
            writer.writerow(["a rotten tomatoes sentence", 0, "rotten_tomatoes"])
    spec = DataFile(sources=[DataFile(path=str(wiki), weight=2),
                             DataFile(path=str(reviews), select={"source": "imdb"}, weight=0.5)])
    mixed = read_corpus(spec, tokenizer, 16, None, "data.train", progress=False)
    wiki_alone = read_corpus(DataFile(path=str(wiki)), tokenizer, 16, None, "data.train", progress=False)
    imdb_alone = read_corpus(DataFile(path=str(reviews), select={"source": "imdb"}), tokenizer, 16, None,
                             "data.train", progress=False)
    assert len(mixed) == 2 * len(wiki_alone) + round(0.5 * len(imdb_alone))
    assert [s["read_per_epoch"] for s in mixed.sources] == [2 * len(wiki_alone), round(0.5 * len(imdb_alone))]
    text = tokenizer.decode([t for i in range(len(imdb_alone)) for t in imdb_alone[i]["input_ids"]])
    assert "imdb" in text and "rotten" not in text
    again = read_corpus(spec, tokenizer, 16, None, "data.train", progress=False)
    assert [again[i] for i in range(len(again))] == [mixed[i] for i in range(len(mixed))], "the sample is seeded"


def test_squad_files_give_their_context_paragraphs_once() -> None:
    contexts = read_contexts(DATA / "squad11" / "part-a.json")
    document = json.loads((DATA / "squad11" / "part-a.json").read_text())
    paragraphs = [p["context"] for a in document["data"] for p in a["paragraphs"]]
    assert contexts == list(dict.fromkeys(paragraphs)) and len(contexts) == 913
    assert read_contexts(DATA / "wikitext2" / "valid.txt") is None


def test_other_tasks_refuse_a_corpus_of_sources(tiny_teacher_dir: Path, tmp_path: Path) -> None:
    spec = DataFile(sources=[DataFile(path=str(_text_file(tmp_path, DOCUMENTS)))])
    with pytest.raises(ConfigError, match=r"data.train.sources: this task reads one file"):
        get_task("sequence_classification").read(spec, ModelSpec(model=str(tiny_teacher_dir)), 16, None,
                                                  "data.train")


def test_the_general_task_has_no_evaluation_set(tiny_encoder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="task general has no evaluation set"):
        get_task("general").read(DataFile(path=str(_text_file(tmp_path, DOCUMENTS))),
                                 ModelSpec(model=str(tiny_encoder)), 16, None, "data.eval")


# -- the objectives against the papers' formulas ------------------------------------------------


def _per_head(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, width = x.shape
    return x.reshape(batch, length, heads, width // heads).transpose(1, 2)


def _qkv(model: BertModel, hidden_in: torch.Tensor, layer: int) -> dict[str, torch.Tensor]:
    """Queries, keys and values [B, H, L, d] of ``layer`` from its input, by its own projections."""
    attention = model.encoder.layer[layer].attention.self
    heads = model.config.num_attention_heads
    return {name: _per_head(getattr(attention, module)(hidden_in), heads)
            for name, module in (("q", "query"), ("k", "key"), ("v", "value"))}


def _row_kl(x_S: torch.Tensor, y_S: torch.Tensor, x_T: torch.Tensor, y_T: torch.Tensor,
            mask: torch.Tensor) -> torch.Tensor:
    """mean over heads and real rows of KL(softmax(x_T y_T^T / sqrt d_T) || softmax(x_S y_S^T / sqrt d_S)),
    the softmax over real keys."""
    keys = ~mask.bool()[:, None, None, :]

    def log_relation(x, y):
        return torch.log_softmax((x @ y.transpose(-1, -2) / math.sqrt(x.shape[-1])).masked_fill(keys, -math.inf), -1)

    log_s, log_t = log_relation(x_S, y_S), log_relation(x_T, y_T)
    kl = (log_t.exp() * (log_t - log_s)).masked_fill(keys, 0).sum(-1)  # [B, H, L]
    rows = mask.bool()[:, None, :].expand_as(kl)
    return kl[rows].mean()


def _batch(model_path: Path, tmp_path: Path, mlm: float = 0.0) -> dict[str, torch.Tensor]:
    task = GeneralTask(mlm_probability=mlm)
    spec = ModelSpec(model=str(model_path))
    dataset = task.read(DataFile(path=str(_text_file(tmp_path, DOCUMENTS * 3))), spec, 24, None, "data.train")
    torch.manual_seed(0)
    return task.collator(spec)([dataset[i] for i in (0, len(dataset) - 1, 1)])  # the last one is shorter


def _plan(recipe: str, keep: list[int] | None = None, **fields) -> LossPlan:
    """The recipe's distillation section as a plan, with only the matches ``keep`` lists, and in
    each the ``fields`` it already has replaced (``proj`` for another width, ``params``)."""
    section = yaml.safe_load((RECIPES / recipe).read_text())["distillation"]
    matches = section.get("intermediate_matches") or []
    section["intermediate_matches"] = [{**m, **{k: v for k, v in fields.items() if k in m}}
                                       for i, m in enumerate(matches) if keep is None or i in keep]
    return LossPlan(DistillationConfig.from_dict(section))


def _terms(plan: LossPlan, teacher, student, batch) -> dict[str, torch.Tensor]:
    task = get_task("general")
    with torch.no_grad():
        features_T = task.adaptor(teacher).run(teacher, batch, plan.needs_T)
        features_S = task.adaptor(student).run(student, batch, plan.needs_S)
        return plan(features_S, features_T)


def _models(teacher_path: Path, **student):
    """The teacher at ``teacher_path`` and a random 2-layer student of its class (16 wide unless
    ``student`` says otherwise)."""
    teacher = get_task("general").load_teacher(ModelSpec(model=str(teacher_path))).eval()
    torch.manual_seed(1)
    shape = {"num_hidden_layers": 2, "hidden_size": 16, "intermediate_size": 32, **student}
    return teacher, type(teacher)(_tiny_config(**shape)).eval()


def test_minilm_objective_is_last_layer_attention_and_value_relation_kl(tiny_encoder: Path, tmp_path: Path) -> None:
    teacher, student = _models(tiny_encoder)
    batch = _batch(tiny_encoder, tmp_path)
    mask = batch["attention_mask"]
    assert not mask.all(), "the batch has padding, which the formulas leave out"
    terms = _terms(_plan("general_minilm.yaml"), teacher, student, batch)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": mask}
    with torch.no_grad():
        hidden_T = teacher(**inputs, output_hidden_states=True).hidden_states
        hidden_S = student(**inputs, output_hidden_states=True).hidden_states
        t, s = _qkv(teacher, hidden_T[-2], -1), _qkv(student, hidden_S[-2], -1)
    torch.testing.assert_close(terms["match0.attention_kl"], _row_kl(s["q"], s["k"], t["q"], t["k"], mask),
                               rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(terms["match1.value_relation_kl"], _row_kl(s["v"], s["v"], t["v"], t["v"], mask),
                               rtol=1e-4, atol=1e-6)


def test_minilmv2_objective_splits_q_k_v_into_relation_heads(tiny_encoder: Path, tmp_path: Path) -> None:
    teacher, student = _models(tiny_encoder)
    batch = _batch(tiny_encoder, tmp_path)
    mask = batch["attention_mask"]
    heads = 8  # divides both widths (16 and 32) and differs from the models' 4 attention heads
    plan = _plan("general_minilmv2.yaml", params={"num_relation_heads": heads})
    terms = _terms(plan, teacher, student, batch)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": mask}
    with torch.no_grad():
        hidden_T = teacher(**inputs, output_hidden_states=True).hidden_states
        hidden_S = student(**inputs, output_hidden_states=True).hidden_states
        attention_T, attention_S = teacher.encoder.layer[-1].attention.self, student.encoder.layer[-1].attention.self
    for index, module in enumerate(("query", "key", "value")):
        with torch.no_grad():
            a_T = _per_head(getattr(attention_T, module)(hidden_T[-2]), heads)
            a_S = _per_head(getattr(attention_S, module)(hidden_S[-2]), heads)
        torch.testing.assert_close(terms[f"match{index}.relation_kl"], _row_kl(a_S, a_S, a_T, a_T, mask),
                                   rtol=1e-4, atol=1e-6)


def test_tinybert_objective_is_projected_hidden_mse_and_attention_score_mse(tiny_encoder: Path,
                                                                           tmp_path: Path) -> None:
    teacher, student = _models(tiny_encoder)
    batch = _batch(tiny_encoder, tmp_path)
    mask = batch["attention_mask"]
    # the tiny student has 2 layers of 16 and the teacher 4 of 32: the recipe's matches of hidden
    # states (0, 0), (2, 1), (4, 2) and of attention scores (1, 0), (3, 1) fit them
    plan = _plan("general_tinybert.yaml", keep=[0, 1, 2, 4, 5], proj=["linear", 16, 32])
    terms = _terms(plan, teacher, student, batch)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": mask}
    real = mask.bool()
    with torch.no_grad():
        hidden_T = teacher(**inputs, output_hidden_states=True).hidden_states
        hidden_S = student(**inputs, output_hidden_states=True).hidden_states
        for index, (layer_T, layer_S) in enumerate([(0, 0), (2, 1), (4, 2)]):
            projected = plan.projections[str(index)](hidden_S[layer_S])
            expected = ((projected - hidden_T[layer_T]) ** 2).mean(-1)[real].mean()
            torch.testing.assert_close(terms[f"match{index}.hidden_mse"], expected, rtol=1e-4, atol=1e-6)
        for index, (layer_T, layer_S) in ((3, (1, 0)), (4, (3, 1))):
            t, s = _qkv(teacher, hidden_T[layer_T], layer_T), _qkv(student, hidden_S[layer_S], layer_S)
            scores_T = t["q"] @ t["k"].transpose(-1, -2) / math.sqrt(t["q"].shape[-1])
            scores_S = s["q"] @ s["k"].transpose(-1, -2) / math.sqrt(s["q"].shape[-1])
            pairs = (real[:, None, :, None] & real[:, None, None, :]).expand_as(scores_T)
            expected = ((scores_S - scores_T) ** 2)[pairs].mean()
            torch.testing.assert_close(terms[f"match{index}.attention_mse"], expected, rtol=1e-4, atol=1e-6)


def test_distilbert_objective_is_soft_targets_on_masked_tokens_mlm_and_cosine(tiny_masked_lm: Path,
                                                                              tmp_path: Path) -> None:
    teacher, student = _models(tiny_masked_lm, hidden_size=32, intermediate_size=64)  # DistilBERT keeps the width
    batch = _batch(tiny_masked_lm, tmp_path, mlm=0.15)
    masked = batch["labels"] != -100
    assert masked.any() and (batch["labels"][~batch["attention_mask"].bool()] == -100).all()
    section = yaml.safe_load((RECIPES / "general_distilbert.yaml").read_text())["distillation"]
    terms = _terms(_plan("general_distilbert.yaml"), teacher, student, batch)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        out_T = teacher(**inputs, output_hidden_states=True)
        out_S = student(**inputs, output_hidden_states=True)
    temperature = section["temperature"]
    log_t = torch.log_softmax(out_T.logits[masked] / temperature, -1)
    log_s = torch.log_softmax(out_S.logits[masked] / temperature, -1)
    soft = temperature ** 2 * (log_t.exp() * (log_t - log_s)).sum(-1).mean()
    torch.testing.assert_close(terms["kd"], section["kd_loss_weight"] * soft, rtol=1e-4, atol=1e-6)
    mlm = F.cross_entropy(out_S.logits[masked], batch["labels"][masked])
    torch.testing.assert_close(terms["hard_label"], section["hard_label_weight"] * mlm, rtol=1e-4, atol=1e-6)
    real = batch["attention_mask"].bool()
    cosine = (1 - F.cosine_similarity(out_S.hidden_states[-1], out_T.hidden_states[-1], dim=-1))[real].mean()
    torch.testing.assert_close(terms["match0.cos"], cosine, rtol=1e-4, atol=1e-6)


# -- students ----------------------------------------------------------------------------------


def test_etd_impt_reads_unlabelled_text_through_the_contrastive_or_masked_lm_loss(
        tiny_encoder: Path, tiny_masked_lm: Path, tmp_path: Path) -> None:
    from kd_models.extraction import extract_student, importance_loss

    for path, mlm in ((tiny_encoder, 0.0), (tiny_masked_lm, 0.15)):
        teacher = get_task("general").load_teacher(ModelSpec(model=str(path)))
        batch = _batch(path, tmp_path, mlm)
        loss = importance_loss(teacher, batch)
        assert loss.dim() == 0 and loss > 0
        if mlm:
            torch.testing.assert_close(loss, teacher(**batch).loss)
        student = extract_student(teacher, 2, hidden_size=16, intermediate_size=32, method="impt",
                                  dataloader=[batch], progress=False)
        assert type(student) is type(teacher) and student.config.hidden_size == 16
    with pytest.raises(ConfigError, match="at least 2"):
        importance_loss(get_task("general").load_teacher(ModelSpec(model=str(tiny_encoder))),
                        {k: v[:1] for k, v in _batch(tiny_encoder, tmp_path).items()})


def _general_recipe(tmp_path: Path, teacher: Path, objective: str = "general_minilm.yaml", **training) -> Path:
    """The recipe ``objective`` at a tiny scale: the teacher at ``teacher``, a 2 x 16 student by
    ETD-Impt, 6 steps on a small corpus of two sources."""
    data = yaml.safe_load((RECIPES / objective).read_text())
    data["teacher"] = {"model": str(teacher)}
    data["data"] = {"train": {"sources": [{"path": str(_text_file(tmp_path, DOCUMENTS * 20))},
                                          {"path": str(DATA / "squad11" / "part-a.json"), "limit": 10}]},
                    "max_length": 32}
    data["student"] = {"config": {"num_hidden_layers": 2, "hidden_size": 16, "intermediate_size": 32},
                       "init": {"name": "etd_impt", "num_batches": 2}}
    data["training"] = {**data["training"], "batch_size": 4, "num_steps": 6, "warmup_ratio": 0.0,
                        "ckpt_steps": 3, **training}
    for match in data["distillation"].get("intermediate_matches") or []:
        if match.get("proj"):
            match["proj"] = ["linear", 16, 32]
    path = tmp_path / f"tiny-{objective}"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_general_student_reloads_under_every_task_head(tiny_encoder: Path, tmp_path: Path) -> None:
    from transformers import (
        AutoModel,
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    result = CliRunner().invoke(build_cli(), ["distill", str(_general_recipe(tmp_path, tiny_encoder)), "-o",
                                              str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    saved = tmp_path / "run" / "student"
    encoder = AutoModel.from_pretrained(saved).state_dict()
    assert AutoTokenizer.from_pretrained(saved).vocab_size == 30522
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 6 and {"match0.attention_kl", "match1.value_relation_kl"} <= set(steps[-1])
    for auto_class in (AutoModelForSequenceClassification, AutoModelForTokenClassification,
                       AutoModelForQuestionAnswering):
        model = auto_class.from_pretrained(saved)
        for name, value in model.base_model.state_dict().items():
            assert torch.equal(value, encoder[name]), f"{auto_class.__name__}: {name}"
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["task"] == "general" and report["metric"] is None


def test_a_general_student_takes_the_teachers_classes_under_a_task_head(tiny_encoder: Path) -> None:
    tags = ["O", "B-person", "I-person"]
    task = get_task("token_classification")
    teacher = task.load_teacher(ModelSpec(model=str(tiny_encoder), labels=tags, allow_untrained_head=True))
    student = task.build_student(StudentSpec(model=str(tiny_encoder)), teacher)
    assert student.config.id2label == dict(enumerate(tags)) and student.classifier.out_features == 3


def test_a_killed_general_run_resumes_on_the_same_sequences(tiny_encoder: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file

    recipe = _general_recipe(tmp_path, tiny_encoder)
    seen, result = straight_killed_resumed(recipe, tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    assert len(seen["resumed"]) < len(seen["straight"]), "the resumed run started from its checkpoint"
    for a, b in zip(seen["straight"][-3:], seen["resumed"][-3:], strict=True):
        assert torch.equal(a, b), "the resumed run read the sequences the uninterrupted one read"
    a = load_file(str(tmp_path / "a" / "student" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "student" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))


def test_the_general_recipes_check(tiny_encoder: Path, tiny_masked_lm: Path, tmp_path: Path) -> None:
    for objective, teacher in (("general_minilm.yaml", tiny_encoder), ("general_minilmv2.yaml", tiny_encoder),
                               ("general_tinybert.yaml", tiny_encoder), ("general_distilbert.yaml", tiny_masked_lm)):
        recipe = _general_recipe(tmp_path, teacher, objective)
        data = yaml.safe_load(recipe.read_text())
        if objective == "general_minilmv2.yaml":
            for match in data["distillation"]["intermediate_matches"]:
                match["params"] = {"num_relation_heads": 8}
        if objective == "general_distilbert.yaml":
            data["student"] = {"config": {"num_hidden_layers": 2}, "init": {"name": "layer_copy",
                                                                            "layer_selection": [0, 2]}}
        if objective == "general_tinybert.yaml":  # the matches that fit 2 student and 4 teacher layers
            matches = data["distillation"]["intermediate_matches"]
            data["distillation"]["intermediate_matches"] = [matches[i] for i in (0, 1, 2, 4, 5)]
        recipe.write_text(yaml.safe_dump(data))
        result = CliRunner().invoke(build_cli(), ["distill", str(recipe), "-o", str(tmp_path / objective), "--check"])
        assert result.exit_code == 0, f"{objective}: {result.output}"
    with pytest.raises(ConfigError, match="has no masked-LM head"):
        GeneralTask(mlm_probability=0.15).load_teacher(ModelSpec(model=str(tiny_encoder)))
