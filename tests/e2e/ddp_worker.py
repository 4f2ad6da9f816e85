"""A distillation run for the data-parallel tests: launched by torchrun with N processes, or as
one process, it distils a TinyEncoder on fixed data and leaves the student in OUTPUT/student.pt
(and with ``--validate``, the validation summary in OUTPUT/validation.json)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from kd_core import DistillationConfig, GeneralDistiller, TrainingConfig
from kd_core.distributed import is_main_process
from kd_core.validation import Validation
from tests.core.models import MaskedFeaturesAdaptor, TinyEncoder, TokenDataset


def _held_out_loss(model: torch.nn.Module) -> dict[str, float]:
    """Cross-entropy on held-out rows, made much worse on every rank but the first: only the
    main process's score may decide, or the ranks would stop at different steps and hang."""
    data = TokenDataset(size=24, full=True, seed=5)
    model.eval()
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(data.ids, data.mask, data.labels)["logits"], data.labels)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    return {"loss": float(loss) + 100.0 * rank}


def _held_share(model: torch.nn.Module) -> float:
    """The share of ``model``'s weights this process holds (its shards' elements over all)."""
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())
    return local / sum(p.numel() for p in model.parameters())


def _record_held_shares(distiller: GeneralDistiller, output: Path) -> None:
    """On the first micro-batch, write the share of the student and the teacher this rank holds."""
    compute = distiller.compute_losses

    def recording(batch, progress):
        rank = torch.distributed.get_rank()
        path = output / f"held-{rank}.json"
        if not path.exists():
            path.write_text(json.dumps({"student": _held_share(distiller.model_S),
                                        "teacher": _held_share(distiller.model_T)}))
        return compute(batch, progress)

    distiller.compute_losses = recording


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ckpt-steps", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--validate", action="store_true", help="Score held-out rows every 2 steps, patience 2.")
    parser.add_argument("--ragged", action="store_true", help="Sentences of 2 to 10 tokens instead of 10 each.")
    parser.add_argument("--accumulate", type=int, default=1, help="Micro-batches per optimizer step.")
    parser.add_argument("--distributed", choices=["ddp", "fsdp"], default="ddp")
    parser.add_argument("--report-held", action="store_true", help="Write each rank's share of the weights.")
    args = parser.parse_args()
    torch.manual_seed(123)
    teacher = TinyEncoder(width=16, layers=2)
    torch.manual_seed(args.seed)
    student = TinyEncoder(width=8, layers=1)
    adaptor = MaskedFeaturesAdaptor()
    distiller = GeneralDistiller(
        TrainingConfig(output_dir=str(args.output), progress=False, seed=args.seed, ckpt_steps=args.ckpt_steps,
                       gradient_accumulation_steps=args.accumulate, distributed=args.distributed),
        DistillationConfig(temperature=2, kd_loss_type="kl", hard_label_weight=0.5, intermediate_matches=[
            {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "proj": ["linear", 8, 16]}]),
        teacher, student, adaptor, adaptor)
    if args.report_held:
        args.output.mkdir(parents=True, exist_ok=True)
        _record_held_shares(distiller, args.output)
    loader = DataLoader(TokenDataset(size=64, full=not args.ragged, seed=4), batch_size=args.batch_size, shuffle=True)
    validation = Validation(_held_out_loss, "loss", greater_is_better=False, eval_steps=2, patience=2) \
        if args.validate else None
    result = distiller.train(torch.optim.AdamW(student.parameters(), lr=1e-2), loader, num_steps=args.steps,
                             max_grad_norm=1.0, resume=args.resume, validation=validation)
    if is_main_process() and validation is not None:
        (args.output / "validation.json").write_text(json.dumps(result.validation))
    if is_main_process():
        torch.save({**student.state_dict(), **{f"proj.{k}": v for k, v in distiller.loss_plan.state_dict().items()}},
                   args.output / "student.pt")


if __name__ == "__main__":
    main()
