"""Teacher caching: epochs after the first run no teacher forward, the student comes out as from an
uncached run, the disk cache serves later runs, and bad entries are recomputed, never used."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from kd_core import ConfigError, DistillationConfig, GeneralDistiller, TrainingConfig, lookup
from kd_core.teacher_cache import CacheWarning, compress_logits, expand_logits
from tests.core.models import TinyEncoder, TokenDataset

MATCHES = [{"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
            "proj": ["linear", 8, 16]}]


def _trim(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack and cut to the longest real length in the batch, so padding differs between epochs."""
    batch = {k: torch.stack([e[k] for e in examples]) for k in examples[0]}
    longest = int(batch["attention_mask"].sum(1).max())
    return {k: v[:, :longest] if v.dim() == 2 else v for k, v in batch.items()}


def _run(output_dir: Path, epochs: int = 2, teacher_seed: int = 123, **cache) -> GeneralDistiller:
    torch.manual_seed(teacher_seed)
    teacher = TinyEncoder(width=16, layers=2)
    torch.manual_seed(7)
    student = TinyEncoder(width=8, layers=1)
    adaptor = lookup("adaptors", "features")()
    distiller = GeneralDistiller(
        TrainingConfig(output_dir=str(output_dir), progress=False, seed=0),
        DistillationConfig(temperature=2, kd_loss_type="kl", hard_label_weight=0.5, intermediate_matches=MATCHES,
                           **cache),
        teacher, student, adaptor, adaptor)
    loader = DataLoader(TokenDataset(size=48, seed=3), batch_size=8, shuffle=True, collate_fn=_trim,
                        generator=torch.Generator().manual_seed(0))
    distiller.train(torch.optim.AdamW(student.parameters(), lr=1e-2), loader, num_epochs=epochs)
    return distiller


def test_second_epoch_runs_no_teacher_forward_and_gives_the_uncached_student(tmp_path: Path) -> None:
    uncached = _run(tmp_path / "plain")
    cached = _run(tmp_path / "cached", is_caching_logits=True)
    assert uncached.teacher_forwards == 12  # 6 batches x 2 epochs
    assert cached.teacher_forwards == 6, "the second epoch must be served from the cache"
    assert cached.teacher_cache.stats.hits == 48 and cached.teacher_cache.stats.misses == 48
    plain_state, cached_state = uncached.model_S.state_dict(), cached.model_S.state_dict()
    for key in plain_state:
        torch.testing.assert_close(cached_state[key], plain_state[key], rtol=1e-5, atol=1e-6, msg=key)


def test_disk_cache_serves_a_later_run_and_recomputes_bad_entries(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    first = _run(tmp_path / "a", epochs=1, teacher_cache_dir=str(directory))
    assert first.teacher_forwards == 6
    files = sorted(directory.rglob("*.safetensors"))
    assert len(files) == 48

    assert _run(tmp_path / "b", epochs=1, teacher_cache_dir=str(directory)).teacher_forwards == 0

    data = bytearray(files[0].read_bytes())
    data[-1] ^= 0xFF  # flip bits of the last tensor value
    files[0].write_bytes(bytes(data))
    with pytest.warns(CacheWarning, match="checksum does not match"):
        repaired = _run(tmp_path / "c", epochs=1, teacher_cache_dir=str(directory))
    assert repaired.teacher_cache.stats.recomputed == 1 and repaired.teacher_forwards == 1
    files[1].write_bytes(b"not a safetensors file")
    with pytest.warns(CacheWarning, match="unreadable"):
        assert _run(tmp_path / "d", epochs=1, teacher_cache_dir=str(directory)).teacher_forwards == 1

    other_teacher = _run(tmp_path / "e", epochs=1, teacher_seed=5, teacher_cache_dir=str(directory))
    assert other_teacher.teacher_forwards == 6, "another teacher's entries must not be used"


def test_top_k_logits_keep_the_top_values_and_the_remaining_mass() -> None:
    logits = torch.randn(6, 100, generator=torch.Generator().manual_seed(0)) * 3
    torch.testing.assert_close(expand_logits(compress_logits(logits, 100)), logits)
    student = torch.randn(6, 100, generator=torch.Generator().manual_seed(1)) * 3
    kl = lookup("losses", "kl")
    exact = kl(student, logits, temperature=1.0)
    errors = []
    for k in (1, 5, 20, 60):
        rebuilt = expand_logits(compress_logits(logits, k))
        top = logits.topk(k, -1).indices
        assert torch.equal(rebuilt.gather(-1, top), logits.gather(-1, top))
        torch.testing.assert_close(rebuilt.logsumexp(-1), logits.logsumexp(-1))  # total mass kept
        errors.append(abs(float(kl(student, rebuilt, temperature=1.0) - exact)))
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] / 4


def test_top_k_needs_a_cache() -> None:
    with pytest.raises(ConfigError, match="teacher_cache_top_k compresses cached logits"):
        DistillationConfig.from_dict({"teacher_cache_top_k": 5})
