"""Look inside a network: what each stage outputs, and where a prediction comes from (Grad-CAM).

Algorithms only: the ``maps`` and ``explain`` commands that draw them are ``cli/explain.py``.

Stages are the ones the seed prints (b1..b5 of its ResNet-18) or the family's stem and
layer1..layer4 (``model.stages()``). :func:`stage_outputs` runs the model once and keeps each
stage's output with the seed's line for it (``Sequential output shape:\\t torch.Size([...])``).

:func:`grad_cam` is Selvaraju et al.'s Grad-CAM on one stage: the stage's activations A,
weighted per channel by the mean over positions of d(score of the target class)/dA, summed over
channels, ReLU'd, resized (bilinear) to the input and scaled to [0, 1] per image. It answers
"where did the evidence for this class lie", at the stage's resolution (4x4 for resnet18's last
stage at 32 px with the small stem; choose an earlier stage for finer maps). By default it uses
the last stage whose maps are at least 4x4 (:func:`default_stage`): the seed's network at 28 px
ends in 1x1 maps, where Grad-CAM can only paint the whole image one colour, and its 2x2 maps in
b4 light a quadrant; b3's 4x4 maps pick out a collar or a sole.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.loader import to_model_input
from ..errors import ResnetlabError
from ..models.probe import evaluating

# The smallest map side (positions) that a default Grad-CAM stage may have.
MIN_CAM_SIDE = 4


# Where a plain nn.Sequential's feature maps end: what comes after them makes vectors of the maps.
HEAD_LAYERS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Linear)


def named_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's stages, in order: its ``stages()``, or for a plain ``nn.Sequential`` (the notes' own ``net``)
    its parts before the pooling, named b1, b2, ... as the notes name them."""
    if hasattr(model, "stages"):
        return model.stages()
    if isinstance(model, nn.Sequential):
        parts = []
        for part in model:
            if isinstance(part, HEAD_LAYERS):
                break
            parts.append(part)
        if parts:
            return [(f"b{i + 1}", part) for i, part in enumerate(parts)]
    raise ResnetlabError(f"{type(model).__name__} does not name its stages: give it a stages() method that returns "
                         "[(name, module), ...] in order, as resnetlab's models do")


def find_stage(model: nn.Module, name: str | None) -> tuple[str, nn.Module]:
    """The stage called ``name`` (None: the last), or a one-line error listing the names."""
    stages = named_stages(model)
    if name is None:
        return stages[-1]
    for found in stages:
        if found[0] == name:
            return found
    raise ResnetlabError(f"--stage {name!r} is not a stage of this model; its stages are {', '.join(n for n, _ in stages)}")


@torch.no_grad()
def default_stage(model: nn.Module, x: torch.Tensor) -> str:
    """The last stage whose maps for ``x``'s size are at least :data:`MIN_CAM_SIDE` on each side (else the first stage)."""
    outputs = stage_outputs(model, torch.zeros_like(x[:1]))
    wide = [o.name for o in outputs if min(o.output.shape[-2:]) >= MIN_CAM_SIDE]
    return wide[-1] if wide else outputs[0].name


@dataclass
class StageOutput:
    """One stage's output for a batch, and the seed's line for it."""

    name: str
    output: torch.Tensor  # [N, C, H, W], detached, on the CPU, float32
    line: str  # as the seed prints it: "Sequential output shape:\t torch.Size([1, 64, 64, 64])"


@torch.no_grad()
def stage_outputs(model: nn.Module, x: torch.Tensor) -> list[StageOutput]:
    """Run ``model`` on ``x`` once (eval mode) and return every stage's output."""
    found: list[StageOutput] = []
    hooks = []
    for name, module in named_stages(model):
        def keep(mod, inputs, output, name=name):
            found.append(StageOutput(name, output.detach().float().cpu(),
                                     f"{type(mod).__name__} output shape:\t {output.shape}"))
        hooks.append(module.register_forward_hook(keep))
    try:
        with evaluating(model):
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return found


def grad_cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None,
             stage: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM heatmaps [N, H, W] in [0, 1] at ``x``'s size for class ``target`` [N] (None: the top class), and the logits.

    ``stage`` None: :func:`default_stage`. The model runs in eval mode; its parameters are not
    changed and their gradients are left as they were.
    """
    _, module = find_stage(model, stage if stage is not None else default_stage(model, x))
    kept: dict[str, torch.Tensor] = {}
    hook = module.register_forward_hook(lambda mod, inputs, output: kept.update(a=output))
    try:
        with evaluating(model), torch.enable_grad():
            # The input asks for gradients so the activations have them even when the weights do not
            # (a frozen backbone); torch.autograd.grad leaves the parameters' .grad untouched.
            logits = model(x.detach().requires_grad_(True)).float()
            chosen = logits.argmax(1) if target is None else target.to(logits.device)
            score = logits.gather(1, chosen.view(-1, 1)).sum()
            activations = kept["a"]
            (gradients,) = torch.autograd.grad(score, activations)
    finally:
        hook.remove()
    weights = gradients.float().mean((2, 3), keepdim=True)
    cam = F.relu((weights * activations.detach().float()).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return (cam / peak).clamp(0, 1).cpu(), logits.detach().cpu()


def as_seen(images, size: int) -> list[torch.Tensor]:
    """uint8 images [C, H, W] resized as the model's input is (``to_model_input``), back to uint8 for drawing heatmaps over."""
    return [(to_model_input(image[None].cpu(), size)[0] * 255).round().clamp(0, 255).to(torch.uint8) for image in images]
