"""Model-size analysis: parameters and megabytes per module, as a tree (TextBrewer's
``display_parameters``), for any ``nn.Module``."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

MB = 1024 * 1024


@dataclass(frozen=True)
class ModuleSize:
    """One module of the tree: its dotted name, depth (0 = the model), parameter count, trainable
    parameters and the bytes its parameters take in their own dtypes. Shared parameters count once."""

    name: str
    depth: int
    params: int
    trainable: int
    bytes: int

    @property
    def megabytes(self) -> float:
        """Size in MiB."""
        return self.bytes / MB


def module_sizes(model: nn.Module, max_depth: int | None = None) -> list[ModuleSize]:
    """Every module down to ``max_depth`` (None: all), parents before their children."""
    rows = []
    for name, module in model.named_modules():
        depth = 0 if not name else name.count(".") + 1
        if max_depth is not None and depth > max_depth:
            continue
        params = list(module.parameters())
        rows.append(ModuleSize(name or type(model).__name__, depth, sum(p.numel() for p in params),
                               sum(p.numel() for p in params if p.requires_grad),
                               sum(p.numel() * p.element_size() for p in params)))
    return rows


def format_sizes(rows: list[ModuleSize]) -> str:
    """A plain-text tree of ``rows``: name (indented by depth), parameters, MiB and share of the model."""
    total = rows[0].params or 1
    width = max(len("  " * r.depth + r.name.rsplit(".", 1)[-1]) for r in rows)
    lines = [f"{'MODULE':<{width}}  {'PARAMS':>12}  {'MiB':>9}  {'SHARE':>6}"]
    for r in rows:
        label = "  " * r.depth + (r.name if r.depth == 0 else r.name.rsplit(".", 1)[-1])
        lines.append(f"{label:<{width}}  {r.params:>12,}  {r.megabytes:>9.2f}  {r.params / total:>6.1%}")
    root = rows[0]
    lines.append(f"total {root.params:,} parameters ({root.trainable:,} trainable), {root.megabytes:.2f} MiB")
    return "\n".join(lines)
