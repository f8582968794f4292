"""Look inside a model: the seed's shape trace, then a per-layer table of shapes, parameters and MACs.

``summary(d2l_resnet18(), (1, 1, 256, 256))`` prints first exactly the lines of the seed's cell 6
(``Sequential output shape:\\t torch.Size([1, 64, 64, 64])`` ...), because the trace is taken
over the model's direct children in the order they run, which for an ``nn.Sequential`` is the
seed's ``for layer in net`` loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn


@dataclass
class LayerRow:
    """One row of the table: a module down to the requested depth."""

    name: str
    depth: int
    type_name: str
    output_shape: list[int] | None  # None when the module did not run
    num_params: int
    macs: int


@dataclass
class ModelSummary:
    """The result of :func:`summary`; ``str()`` gives the printable report."""

    input_size: tuple[int, ...]
    trace: list[str]
    rows: list[LayerRow]
    total_params: int
    trainable_params: int
    total_macs: int
    depth: int = 2

    def __str__(self) -> str:
        return render(self)


def _leaf_macs(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-accumulates of one call of a conv or linear layer (0 for other layers)."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def summary(model: nn.Module, input_size: Sequence[int], depth: int = 2) -> ModelSummary:
    """Run ``model`` once on a random batch of ``input_size`` (N, C, H, W) and describe every layer.

    The model runs in eval mode without gradients (its mode is restored afterwards), on the
    device and dtype of its parameters. MACs count convolutions and linear layers for the whole
    batch. Rows go down to ``depth`` levels of nesting (1: the model's direct children).
    """
    if depth < 1:
        raise ValueError("depth must be at least 1")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    named = [(name, m) for name, m in model.named_modules() if name]
    shapes: dict[str, list[int]] = {}
    macs: dict[str, int] = {}
    trace: list[str] = []
    direct_children = {name for name, _ in model.named_children()}

    def make_hook(name: str, module: nn.Module):
        is_leaf = next(module.children(), None) is None

        def hook(mod: nn.Module, inputs: object, output: object) -> None:
            if isinstance(output, torch.Tensor):
                shapes[name] = list(output.shape)
                if is_leaf:
                    macs[name] = macs.get(name, 0) + _leaf_macs(mod, output)
                if name in direct_children:
                    # The seed prints: print(layer.__class__.__name__, 'output shape:\t', X.shape)
                    trace.append(f"{type(mod).__name__} output shape:\t {output.shape}")

        return hook

    handles = [m.register_forward_hook(make_hook(name, m)) for name, m in named]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.rand(*input_size, device=device, dtype=dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()

    rows = []
    for name, module in named:
        level = name.count(".") + 1
        if level > depth:
            continue
        prefix = name + "."
        subtotal = sum(v for k, v in macs.items() if k == name or k.startswith(prefix))
        rows.append(
            LayerRow(
                name=name,
                depth=level,
                type_name=type(module).__name__,
                output_shape=shapes.get(name),
                num_params=sum(p.numel() for p in module.parameters()),
                macs=subtotal,
            )
        )
    return ModelSummary(
        input_size=tuple(input_size),
        trace=trace,
        rows=rows,
        total_params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_macs=sum(macs.values()),
        depth=depth,
    )


def _human(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def render(s: ModelSummary) -> str:
    """Format a :class:`ModelSummary`: the trace, a blank line, the table and the totals."""
    header = ("Layer (type)", "Output shape", "Params", "MACs")
    body = [
        (
            "  " * (r.depth - 1) + f"{r.name} ({r.type_name})",
            "--" if r.output_shape is None else str(r.output_shape),
            f"{r.num_params:,}",
            f"{r.macs:,}",
        )
        for r in s.rows
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(4)]

    def line(cells: tuple[str, ...]) -> str:
        return (
            f"{cells[0]:<{widths[0]}}  {cells[1]:<{widths[1]}}  "
            f"{cells[2]:>{widths[2]}}  {cells[3]:>{widths[3]}}"
        ).rstrip()

    rule = "-" * len(line(header))
    out = [*s.trace, "", line(header), rule, *(line(b) for b in body), rule]
    out.append(f"Total params: {s.total_params:,}")
    out.append(f"Trainable params: {s.trainable_params:,}")
    out.append(f"Total MACs: {s.total_macs:,} ({_human(s.total_macs)}; conv and linear layers, whole batch)")
    out.append(f"Input size: {list(s.input_size)}")
    return "\n".join(out)
