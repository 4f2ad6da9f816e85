"""The engine against independent expectations: accumulation, exact resume, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from kd_core import (
    METRICS_FILE,
    Adaptor,
    BasicDistiller,
    BasicTrainer,
    ConfigError,
    DistillationConfig,
    GeneralDistiller,
    KDError,
    NonFiniteLossError,
    TrainingConfig,
    lookup,
)
from kd_core.assembly import linear_schedule_with_warmup
from kd_core.sampling import LengthGroupedBatchSampler
from tests.core.models import MaskedFeaturesAdaptor, TinyEncoder, TokenDataset

MATCHES = [{"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
            "proj": ["linear", 8, 16]}]


def _distiller(output_dir: Path, dropout: float = 0.0, accumulation: int = 1, seed: int = 0,
               adaptor: Adaptor | None = None, **config) -> GeneralDistiller:
    torch.manual_seed(123)
    teacher = TinyEncoder(width=16, layers=2)
    student = TinyEncoder(width=8, layers=1, dropout=dropout)
    train_config = TrainingConfig(output_dir=str(output_dir), device="cpu", progress=False, seed=seed,
                                  gradient_accumulation_steps=accumulation, **config)
    distill_config = DistillationConfig(temperature=2, kd_loss_type="kl", hard_label_weight=0.5,
                                        intermediate_matches=MATCHES)
    adaptor = adaptor or lookup("adaptors", "features")()
    return GeneralDistiller(train_config, distill_config, teacher, student, adaptor, adaptor)


def test_four_accumulated_micro_batches_of_8_equal_one_batch_of_32(tmp_path: Path) -> None:
    data = TokenDataset(size=64, full=True)  # no padding: every micro-batch has as many tokens
    results = []
    for batch_size, accumulation in ((32, 1), (8, 4)):
        distiller = _distiller(tmp_path / f"b{batch_size}", accumulation=accumulation)
        optimizer = torch.optim.SGD(distiller.model_S.parameters(), lr=0.5)
        distiller.train(optimizer, DataLoader(data, batch_size=batch_size), num_epochs=2)
        results.append({k: v.clone() for k, v in distiller.model_S.state_dict().items()}
                       | {f"proj.{k}": v for k, v in distiller.loss_plan.state_dict().items()})
    single, accumulated = results
    assert single.keys() == accumulated.keys()
    initial = _distiller(tmp_path / "init").model_S.state_dict()
    assert any(not torch.equal(single[k], initial[k]) for k in initial), "training changed nothing"
    for key in single:
        torch.testing.assert_close(accumulated[key], single[key], rtol=1e-5, atol=1e-6, msg=key)


def _train_on(data: TokenDataset, output_dir: Path, batch_size: int, accumulation: int,
              adaptor: Adaptor) -> tuple[dict[str, torch.Tensor], list[float]]:
    distiller = _distiller(output_dir, accumulation=accumulation, adaptor=adaptor)
    optimizer = torch.optim.SGD(distiller.model_S.parameters(), lr=0.5)
    distiller.train(optimizer, DataLoader(data, batch_size=batch_size), num_epochs=2)
    losses = [json.loads(line)["loss"] for line in (output_dir / METRICS_FILE).read_text().splitlines()]
    weights = distiller.model_S.state_dict() | {f"proj.{k}": v for k, v in distiller.loss_plan.state_dict().items()}
    return weights, losses


def test_accumulated_micro_batches_of_ragged_lengths_equal_one_batch_token_for_token(tmp_path: Path) -> None:
    # 40 sentences of 2 to 10 tokens: micro-batches of 8 hold different numbers of tokens, so the
    # mean of their per-batch means is not the mean over the step's tokens (hidden_mse is a token
    # mean); the last step of each epoch is one micro-batch of 8 in both runs
    data = TokenDataset(size=40)
    assert len({int(data.mask[i:i + 8].sum()) for i in range(0, 40, 8)}) > 1
    differences = {}
    for name, adaptor in (("masks", MaskedFeaturesAdaptor()), ("rows", lookup("adaptors", "features")())):
        single, single_losses = _train_on(data, tmp_path / f"{name}-16", 16, 1, adaptor)
        accumulated, accumulated_losses = _train_on(data, tmp_path / f"{name}-8x2", 8, 2, adaptor)
        differences[name] = max(float((single[k] - accumulated[k]).abs().max()) for k in single)
        if name == "masks":
            torch.testing.assert_close(accumulated_losses, single_losses, rtol=1e-6, atol=0)
    # with the masks the step is the token mean whatever the split; an adaptor that cannot say its
    # masks in advance is weighted by rows (the mean of micro-batch means), which the split moves
    assert differences["masks"] < 1e-6, differences
    assert differences["rows"] > 1000 * differences["masks"], differences


class _Interrupt(Exception):
    pass


def _loader(grouped: bool) -> DataLoader:
    data = TokenDataset(size=40)
    generator = torch.Generator().manual_seed(7)
    if grouped:
        sampler = LengthGroupedBatchSampler(data.mask.sum(1).tolist(), 6, generator, group_batches=2)
        return DataLoader(data, batch_sampler=sampler)
    return DataLoader(data, batch_size=6, shuffle=True, generator=generator)


def _run(output_dir: Path, stop_at: int | None = None, resume: bool = False, grouped: bool = False,
         ckpt_steps: int = 3) -> GeneralDistiller:
    distiller = _distiller(output_dir, dropout=0.2, ckpt_steps=ckpt_steps)
    optimizer = torch.optim.AdamW(distiller.model_S.parameters(), lr=1e-2)
    loader = _loader(grouped)

    def callback(model, step):
        if stop_at is not None and step == stop_at:
            raise _Interrupt

    distiller.train(optimizer, loader, num_steps=17, scheduler_class=linear_schedule_with_warmup,
                    scheduler_args={"num_warmup_steps": 3, "num_training_steps": 17},
                    callback=callback, resume=resume)
    return distiller


@pytest.mark.parametrize("grouped", [False, True], ids=["shuffled", "length_grouped"])
# 7 batches an epoch: mid-epoch, across epochs, and exactly at the end of an epoch
@pytest.mark.parametrize(("stop_at", "ckpt_steps"), [(3, 3), (6, 3), (9, 3), (7, 7), (14, 7)])
def test_interrupted_and_resumed_equals_uninterrupted_bitwise(tmp_path: Path, stop_at: int, ckpt_steps: int,
                                                              grouped: bool) -> None:
    reference = _run(tmp_path / "straight", grouped=grouped, ckpt_steps=ckpt_steps)
    with pytest.raises(_Interrupt):
        _run(tmp_path / "killed", stop_at=stop_at, grouped=grouped, ckpt_steps=ckpt_steps)
    resumed = _run(tmp_path / "killed", resume=True, grouped=grouped, ckpt_steps=ckpt_steps)
    for key, value in reference.model_S.state_dict().items():
        assert torch.equal(resumed.model_S.state_dict()[key], value), key
    for key, value in reference.loss_plan.state_dict().items():
        assert torch.equal(resumed.loss_plan.state_dict()[key], value), key
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 18)), "metrics.jsonl must hold each step once after a resume"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", ["truncated model.safetensors", "broken state.json", "missing state.safetensors"])
def test_a_corrupt_newest_checkpoint_is_named_and_the_run_resumes_from_the_one_before(
        tmp_path: Path, damage: str) -> None:
    reference = _run(tmp_path / "straight")
    with pytest.raises(_Interrupt):
        _run(tmp_path / "killed", stop_at=9)
    checkpoints = tmp_path / "killed" / "checkpoints"
    newest = checkpoints / "step-00000009"
    if damage.startswith("truncated"):
        _truncate(newest / "model.safetensors")
    elif damage.startswith("broken"):
        (newest / "state.json").write_text('{"global_step": 9, "epoch"', encoding="utf-8")
    else:
        (newest / "state.safetensors").unlink()
    with pytest.warns(UserWarning, match=r"checkpoint .*step-00000009 cannot be read \(.*\); kept as "
                                         r"step-00000009\.corrupt and resuming from the next older checkpoint"):
        resumed = _run(tmp_path / "killed", resume=True)
    # nothing was lost: from step 6 the run replays to the same weights, and the damaged files stay
    for key, value in reference.model_S.state_dict().items():
        assert torch.equal(resumed.model_S.state_dict()[key], value), key
    assert (checkpoints / "step-00000009.corrupt").is_dir()
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 18))


def test_resume_with_every_checkpoint_corrupt_says_so(tmp_path: Path) -> None:
    with pytest.raises(_Interrupt):
        _run(tmp_path, stop_at=6)
    for directory in (tmp_path / "checkpoints").iterdir():
        _truncate(directory / "model.safetensors")
    with pytest.warns(UserWarning, match="cannot be read"), \
            pytest.raises(KDError, match=r"no checkpoint under .* can be read: step-00000006 \(model.safetensors is "
                                         r"damaged .*\); step-00000003 .* Run without --resume to start afresh"):
        _run(tmp_path, resume=True)


def test_a_fresh_start_removes_the_checkpoints_of_an_earlier_run(tmp_path: Path) -> None:
    _run(tmp_path)  # 17 steps, checkpoints at 3, 6, ..., 15 and 17
    distiller = _distiller(tmp_path, ckpt_steps=2, keep_checkpoints=1)
    loader = DataLoader(TokenDataset(size=16), batch_size=4)
    with pytest.warns(UserWarning, match=r"starting afresh in .*: removing 6 checkpoint\(s\) of an earlier run"):
        distiller.train(torch.optim.SGD(distiller.model_S.parameters(), lr=0.1), loader, num_steps=4)
    # kept, step 17 of the other run would outrank this run's own newest checkpoint
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000004"]


def test_outputs_checkpoints_and_metrics(tmp_path: Path) -> None:
    distiller = _distiller(tmp_path, ckpt_steps=4, keep_checkpoints=2)
    optimizer = torch.optim.AdamW(distiller.model_S.parameters(), lr=1e-3)
    calls = []
    result = distiller.train(optimizer, DataLoader(TokenDataset(size=40), batch_size=4), num_steps=10,
                             callback=lambda model, step: calls.append(step))
    assert result.global_step == 10
    assert calls == [4, 8, 10]
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["step-00000008", "step-00000010"], "keep_checkpoints=2 keeps the newest two"
    weights = load_file(str(tmp_path / "checkpoints" / "step-00000010" / "model.safetensors"))
    for key, value in distiller.model_S.state_dict().items():
        assert torch.equal(weights[key], value)
    assert not list(tmp_path.rglob("*.tmp")), "no temporary files may remain"
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 11))
    assert {"kd", "hard_label", "match0.hidden_mse", "loss", "lr"} <= records[0].keys()
    first = records[0]
    assert first["loss"] == pytest.approx(first["kd"] + first["hard_label"] + first["match0.hidden_mse"], rel=1e-5)


def test_projection_parameters_join_the_optimizer_with_their_own_learning_rate(tmp_path: Path) -> None:
    matches = [dict(MATCHES[0], proj=["linear", 8, 16, {"learning_rate": 0.123}])]
    adaptor = lookup("adaptors", "features")()
    distiller = GeneralDistiller(TrainingConfig(output_dir=str(tmp_path), progress=False),
                                 DistillationConfig(intermediate_matches=matches),
                                 TinyEncoder(width=16), TinyEncoder(width=8), adaptor, adaptor)
    optimizer = torch.optim.SGD(distiller.model_S.parameters(), lr=0.01)
    before = distiller.loss_plan.projections["0"].weight.detach().clone()
    distiller.train(optimizer, DataLoader(TokenDataset(size=8), batch_size=4), num_steps=1)
    assert optimizer.param_groups[-1]["lr"] == 0.123
    assert not torch.equal(before, distiller.loss_plan.projections["0"].weight)


def test_basic_trainer_and_basic_distiller_reduce_their_loss(tmp_path: Path) -> None:
    data = DataLoader(TokenDataset(size=32, seed=3), batch_size=8)
    adaptor = lookup("adaptors", "features")()
    torch.manual_seed(0)
    model = TinyEncoder(width=16)
    trainer = BasicTrainer(TrainingConfig(output_dir=str(tmp_path / "t"), progress=False), model, adaptor)
    trainer.train(torch.optim.AdamW(model.parameters(), lr=1e-2), data, num_epochs=15)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-4:]) < 0.5 * sum(losses[:4])
    student = TinyEncoder(width=8)
    with pytest.warns(UserWarning, match="BasicDistiller ignores intermediate_matches"):
        distiller = BasicDistiller(TrainingConfig(output_dir=str(tmp_path / "d"), progress=False),
                                   DistillationConfig(kd_loss_type="kl", intermediate_matches=MATCHES), model, student,
                                   adaptor, adaptor)
    distiller.train(torch.optim.AdamW(student.parameters(), lr=1e-2), data, num_epochs=15)
    records = [json.loads(line) for line in (tmp_path / "d" / "metrics.jsonl").read_text().splitlines()]
    assert set(records[0]) >= {"kd"} and not any(k.startswith("match") for k in records[0])
    assert sum(r["loss"] for r in records[-4:]) < 0.5 * sum(r["loss"] for r in records[:4])


def test_non_finite_loss_names_the_term(tmp_path: Path) -> None:
    distiller = _distiller(tmp_path)
    with torch.no_grad():
        distiller.model_S.head.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"loss term 'kd' is nan at step 1"):
        distiller.train(torch.optim.SGD(distiller.model_S.parameters(), lr=0.1),
                        DataLoader(TokenDataset(size=8), batch_size=4), num_steps=1)


def test_skip_nonfinite_skips_the_bad_micro_batch_and_counts_it(tmp_path: Path) -> None:
    data = TokenDataset(size=16, full=True)
    data.ids[4:8, 0] = 0  # token 0 gets a NaN embedding below: the second batch's loss is NaN
    examples = [data[i] for i in range(16)]

    def run(name: str, batches: list, **config) -> GeneralDistiller:
        distiller = _distiller(tmp_path / name, **config)
        with torch.no_grad():
            distiller.model_S.embed.weight[0] = float("nan")
        distiller.train(torch.optim.SGD(distiller.model_S.parameters(), lr=0.1),
                        DataLoader(batches, batch_size=4), num_epochs=1)
        return distiller

    with pytest.raises(NonFiniteLossError, match=r"loss term '.*' is nan at step 2"):
        run("strict", examples)
    skipping = run("skip", examples, skip_nonfinite=True)
    lines = [json.loads(line) for line in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    assert [line["skipped_nonfinite"] for line in lines] == [0, 1, 1, 1]
    assert "loss" not in lines[1]
    # skipping the batch leaves the weights as training on the other three batches alone would
    without = run("without", examples[:4] + examples[8:])
    for key, value in without.model_S.state_dict().items():
        if key != "embed.weight":
            torch.testing.assert_close(skipping.model_S.state_dict()[key], value, msg=key)
    torch.testing.assert_close(skipping.model_S.embed.weight[1:], without.model_S.embed.weight[1:])


def test_resume_refuses_a_changed_run(tmp_path: Path) -> None:
    distiller = _distiller(tmp_path, ckpt_steps=2)
    loader = DataLoader(TokenDataset(size=16), batch_size=4)
    distiller.train(torch.optim.SGD(distiller.model_S.parameters(), lr=0.1), loader, num_steps=2)
    again = _distiller(tmp_path, ckpt_steps=2)
    with pytest.raises(Exception, match="the run changed \\(total_steps was 2, now 5\\)"):
        again.train(torch.optim.SGD(again.model_S.parameters(), lr=0.1), loader, num_steps=5, resume=True)


def test_layer_out_of_range_and_missing_features_are_clear(tmp_path: Path) -> None:
    adaptor = lookup("adaptors", "features")()
    bad = [dict(MATCHES[0], layer_S=5)]
    distiller = GeneralDistiller(TrainingConfig(output_dir=str(tmp_path), progress=False),
                                 DistillationConfig(intermediate_matches=bad),
                                 TinyEncoder(width=16), TinyEncoder(width=8), adaptor, adaptor)
    with pytest.raises(ConfigError, match=r"intermediate_matches\[0\].layer_S: layer 5 does not exist; "
                                          r"the student gives 3 'hidden' layers \(0..2\)"):
        distiller.train(torch.optim.SGD(distiller.model_S.parameters(), lr=0.1),
                        DataLoader(TokenDataset(size=8), batch_size=4), num_steps=1)
    with pytest.raises(ConfigError, match=r"intermediate_matches\[0\].loss: unknown loss 'hiden_mse'.*"
                                          r"Did you mean 'hidden_mse'\?"):
        GeneralDistiller(TrainingConfig(output_dir=str(tmp_path)),
                         DistillationConfig(intermediate_matches=[dict(MATCHES[0], loss="hiden_mse")]),
                         TinyEncoder(), TinyEncoder(), adaptor, adaptor)
