"""A distillation run for the data-parallel tests: launched by torchrun with N processes, or as
one process, it distils a TinyEncoder on fixed data and leaves the student in OUTPUT/student.pt."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from kd_core import DistillationConfig, GeneralDistiller, TrainingConfig, lookup
from kd_core.distributed import is_main_process
from tests.core.models import TinyEncoder, TokenDataset


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ckpt-steps", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(123)
    teacher = TinyEncoder(width=16, layers=2)
    torch.manual_seed(args.seed)
    student = TinyEncoder(width=8, layers=1)
    adaptor = lookup("adaptors", "features")()
    distiller = GeneralDistiller(
        TrainingConfig(output_dir=str(args.output), progress=False, seed=args.seed, ckpt_steps=args.ckpt_steps),
        DistillationConfig(temperature=2, kd_loss_type="kl", hard_label_weight=0.5, intermediate_matches=[
            {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "proj": ["linear", 8, 16]}]),
        teacher, student, adaptor, adaptor)
    loader = DataLoader(TokenDataset(size=64, full=True, seed=4), batch_size=args.batch_size, shuffle=True)
    distiller.train(torch.optim.AdamW(student.parameters(), lr=1e-2), loader, num_steps=args.steps,
                    max_grad_norm=1.0, resume=args.resume)
    if is_main_process():
        torch.save({**student.state_dict(), **{f"proj.{k}": v for k, v in distiller.loss_plan.state_dict().items()}},
                   args.output / "student.pt")


if __name__ == "__main__":
    main()
