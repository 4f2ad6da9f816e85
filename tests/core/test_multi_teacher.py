"""MultiTeacherDistiller: the ensemble's soft targets and matches against a named teacher, checked
against the formulas computed by hand from each model's own outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from kd_core import ConfigError, DistillationConfig, MultiTeacherDistiller, TrainingConfig, lookup
from tests.core.models import TinyEncoder, TokenDataset


def _teachers() -> dict[str, TinyEncoder]:
    teachers = {}
    for seed, name in enumerate(("a", "b", "c")):
        torch.manual_seed(seed)
        teachers[name] = TinyEncoder(width=16, layers=2).eval()
    return teachers


def _distiller(tmp_path: Path, teachers, **config) -> MultiTeacherDistiller:
    torch.manual_seed(9)
    student = TinyEncoder(width=8, layers=1)
    adaptor = lookup("adaptors", "features")()
    distiller = MultiTeacherDistiller(TrainingConfig(output_dir=str(tmp_path), progress=False, seed=0),
                                      DistillationConfig(**config), teachers, student, adaptor, adaptor)
    distiller.prepare()
    return distiller


def _batch() -> dict[str, torch.Tensor]:
    data = TokenDataset(size=8, seed=1)
    return {k: torch.stack([data[i][k] for i in range(8)]) for k in ("input_ids", "attention_mask", "labels")}


def _kl(student: torch.Tensor, target_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    log_p_s = torch.log_softmax(student / temperature, -1)
    return temperature**2 * (target_probs * (target_probs.log() - log_p_s)).sum(-1).mean()


def test_weighted_mean_of_logits(tmp_path: Path) -> None:
    teachers = _teachers()
    distiller = _distiller(tmp_path, teachers, temperature=3, kd_loss_type="kl", teacher_weights=[1, 2, 1])
    batch = _batch()
    terms = distiller.compute_losses(batch, 0.0)
    with torch.no_grad():
        mean = sum(w * teachers[n](**batch)["logits"] for w, n in zip((0.25, 0.5, 0.25), "abc", strict=True))
        expected = _kl(distiller.model_S(**batch)["logits"], torch.softmax(mean / 3, -1), 3.0)
    torch.testing.assert_close(terms["kd"].detach(), expected, rtol=1e-5, atol=1e-6)
    assert distiller.teacher_forwards == 3


def test_mean_of_probabilities(tmp_path: Path) -> None:
    teachers = _teachers()
    distiller = _distiller(tmp_path, list(teachers.values()), temperature=2, kd_loss_type="kl",
                           teacher_ensemble="probabilities")
    batch = _batch()
    terms = distiller.compute_losses(batch, 0.0)
    with torch.no_grad():
        mixture = sum(torch.softmax(t(**batch)["logits"] / 2, -1) for t in teachers.values()) / 3
        expected = _kl(distiller.model_S(**batch)["logits"], mixture, 2.0)
    torch.testing.assert_close(terms["kd"].detach(), expected, rtol=1e-5, atol=1e-6)


def test_matches_read_the_named_teacher_and_unread_teachers_do_not_run(tmp_path: Path) -> None:
    teachers = _teachers()
    match = {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "teacher": "c",
             "proj": ["linear", 8, 16]}
    distiller = _distiller(tmp_path, teachers, kd_loss_weight=0, intermediate_matches=[match])
    batch = _batch()
    terms = distiller.compute_losses(batch, 0.0)
    assert distiller.teacher_forwards == 1, "only teacher c is read"
    with torch.no_grad():
        projected = distiller.loss_plan.projections["0"](distiller.model_S(**batch)["hidden"][1])
        target = teachers["c"](**batch)["hidden"][2]
        real = batch["attention_mask"].bool()
        expected = ((projected - target) ** 2).mean(-1)[real].mean()
    torch.testing.assert_close(terms["match0.hidden_mse"].detach(), expected, rtol=1e-5, atol=1e-6)
    by_index = _distiller(tmp_path, teachers, kd_loss_weight=0, intermediate_matches=[match | {"teacher": 2}])
    by_index.loss_plan.load_state_dict(distiller.loss_plan.state_dict())
    by_index.model_S.load_state_dict(distiller.model_S.state_dict())
    torch.testing.assert_close(by_index.compute_losses(batch, 0.0)["match0.hidden_mse"], terms["match0.hidden_mse"])


def test_bad_teacher_names_and_weights_are_reported(tmp_path: Path) -> None:
    match = {"layer_T": 1, "layer_S": 1, "feature": "hidden", "loss": "cos", "teacher": "d"}
    with pytest.raises(ConfigError, match=r"intermediate_matches\[0\]\.teacher: 'd' is not one of the teachers "
                                          r"\(a, b, c\)"):
        _distiller(tmp_path, _teachers(), intermediate_matches=[match])
    with pytest.raises(ConfigError, match=r"teacher_weights .* one per teacher"):
        _distiller(tmp_path, _teachers(), teacher_weights=[1, 1])


def test_cached_ensemble_runs_no_teacher_in_the_second_epoch(tmp_path: Path) -> None:
    distiller = _distiller(tmp_path, _teachers(), kd_loss_type="kl", is_caching_logits=True)
    loader = DataLoader(TokenDataset(size=32, seed=2), batch_size=8, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    distiller.train(torch.optim.SGD(distiller.model_S.parameters(), lr=0.1), loader, num_epochs=2)
    assert distiller.teacher_forwards == 3 * 4
    assert set(distiller.teacher_caches) == {"a", "b", "c"}
