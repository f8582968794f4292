"""The training engine: one step, evaluation, and ``fit(config)`` that runs a whole training.

It takes a :class:`TrainConfig` and knows nothing of the command line. Data stays on the
device as uint8 (see ``data/loader.py``); the loop never synchronises with the device inside an
epoch except to draw the progress bar on a terminal.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import Augment, DeviceLoader, ImageSet, load_fashion_mnist, split_train_val
from ..errors import ResnetlabError
from ..fileio import write_text
from ..models import create_model
from .checkpoint import save_weights, unwrap, versions
from .config import TrainConfig, validate
from .metrics import plot_curves, write_csv

Log = Callable[[str], None]


@dataclass
class TrainResult:
    """What a finished run reports (also written to ``results.json``)."""

    run_dir: Path
    device: str
    train_loss: float  # last epoch, measured during training as the book does
    train_acc: float
    test_acc: float  # with the best weights (by validation accuracy; the last epoch without validation)
    test_loss: float
    best_epoch: int
    best_val_acc: float | None
    examples_per_sec: float  # training images per second over training steps only, as the book's timer
    train_seconds: float
    total_seconds: float
    history: list[dict] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; asking for cuda without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ResnetlabError("--device cuda: no CUDA GPU is available here; use --device cpu or auto")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX), where bf16 autocast pays off.

    Measured on a 2-core AMD EPYC with avx512_bf16 (2026-11-26): bf16 trained the seed's
    ResNet-18 1.5x faster than fp32 at 28 px; on CPUs without it bf16 is emulated and slower.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def use_bf16(precision: str, device: torch.device) -> bool:
    """Resolve ``precision``: ``auto`` is bf16 on CUDA and on CPUs with native bf16, else fp32."""
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def xavier_init(model: nn.Module) -> None:
    """The book's ``init_weights``: Xavier-uniform weights for every linear and conv layer."""
    for m in model.modules():
        if type(m) in (nn.Linear, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)


def build_model(config: TrainConfig, in_channels: int, num_classes: int) -> nn.Module:
    """Create the configured model for the data's channels and classes, with the configured init."""
    args = {"in_channels": in_channels, "num_classes": num_classes, **config.model_args}
    try:
        model = create_model(config.model, **args)
    except (TypeError, ValueError) as exc:
        raise ResnetlabError(f"--model-args {json.dumps(config.model_args)} do not fit {config.model} ({exc})") from None
    if config.init == "xavier":
        xavier_init(model)
    return model


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD or AdamW; weight decay applies to conv and linear weights, not to norms and biases."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)


def lr_factor(step: int, config: TrainConfig, steps_per_epoch: int) -> float:
    """The schedule's multiplier of the peak lr at optimizer step ``step`` (0-based)."""
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "step":
        return config.step_gamma ** (step // (config.step_epochs * steps_per_epoch))
    progress = (step - warmup) / max(1, total - warmup)
    if config.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(0.0, 1.0 - progress)  # onecycle: linear warm-up, then linear decay to zero


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader, *, bf16: bool = False, tta: bool = False) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` over every example of ``loader``.

    With ``tta``, the softmax of each image and of its mirror image are averaged.
    Returns the sums as well (``correct``, ``loss_sum``, ``count``) so ranks can add them up.
    """
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=loader.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=loader.device)
    count = 0
    for x, y in loader.batches():
        with _autocast(loader.device, bf16):
            logits = model(x).float()
            if tta:
                probs = (logits.softmax(1) + model(x.flip(3)).float().softmax(1)) / 2
                logits = probs.clamp_min(1e-12).log()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        count += len(y)
    model.train(was_training)
    c, s = int(correct), float(loss_sum)
    return {"acc": c / max(count, 1), "loss": s / max(count, 1), "correct": c, "loss_sum": s, "count": count}


class _Ema:
    """An exponential moving average of the weights (buffers copied), evaluated in place of the model."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)

    @property
    def module(self) -> nn.Module:
        return self.averaged.module


@dataclass
class Training:
    """What one optimisation step needs, held together: the model, its optimiser, schedule and EMA."""

    config: TrainConfig
    model: nn.Module
    step_model: nn.Module  # the model, or its torch.compile wrapper, called in training steps
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: nn.Module
    ema: _Ema | None
    device: torch.device
    bf16: bool

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and saved: the EMA when there is one, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step on a batch; returns the (detached) loss and logits."""
        with _autocast(self.device, self.bf16):
            logits = self.step_model(x)
            loss = self.criterion(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return loss.detach(), logits.detach()

    def train_epoch(self, loader: DeviceLoader, epoch: int) -> dict[str, float]:
        """Run one epoch of steps; return mean loss, accuracy, images seen and seconds.

        Loss and accuracy are summed on the device and read once at the end (the book's
        per-step ``float()`` would stall the device every step), except to draw the bar.
        """
        start = time.perf_counter()
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        seen = 0
        bar = None
        if _console_progress():
            from tqdm import tqdm

            bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{self.config.epochs}", unit="step", leave=False)
        for step, (x, y) in enumerate(loader.batches(epoch)):
            loss, logits = self.train_step(x, y)
            loss_sum += loss * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            if bar is not None:
                bar.update(1)
                if step % 10 == 0 or step == len(loader) - 1:
                    bar.set_postfix(loss=f"{float(loss_sum) / seen:.3f}", acc=f"{int(correct) / seen:.3f}",
                                    img_s=f"{seen / (time.perf_counter() - start):.0f}")
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        if bar is not None:
            bar.close()
        return {"loss": float(loss_sum) / seen, "acc": int(correct) / seen, "seen": seen,
                "seconds": time.perf_counter() - start}


def default_run_dir(model_name: str) -> Path:
    """``runs/<date-time>-<model>`` under the working folder."""
    return Path("runs") / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{model_name}"


def prepare_run_dir(out: str | None, model_name: str) -> Path:
    """Create the run folder (refusing one that already holds a run); point ``runs/latest`` at it."""
    run_dir = Path(out) if out else default_run_dir(model_name)
    if (run_dir / "config.json").exists():
        raise ResnetlabError(f"--out {run_dir} already holds a run; choose another folder")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResnetlabError(f"--out {run_dir}: cannot create it ({exc.strerror}); choose a writable folder") from None
    if out is None:
        link = run_dir.parent / "latest"
        tmp = run_dir.parent / f".latest.{run_dir.name}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run_dir.name)
        tmp.replace(link)
    return run_dir


def load_data(config: TrainConfig) -> tuple[ImageSet, ImageSet | None, ImageSet]:
    """Fashion-MNIST as (train, validation or None, test), with the configured split and limits."""
    train, test = load_fashion_mnist(config.data)
    val = None
    if config.val_split > 0:
        train, val = split_train_val(train, config.val_split, config.seed)
    if config.limit_train is not None:
        train = train.subset(torch.arange(min(config.limit_train, len(train))))
    if config.limit_test is not None:
        test = test.subset(torch.arange(min(config.limit_test, len(test))))
    return train, val, test


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 images scaled to [0, 1]."""
    x = images.transpose(0, 1).reshape(images.shape[1], -1).double() / 255
    return x.mean(1).tolist(), x.std(1).tolist()


def _console_progress() -> bool:
    return sys.stderr.isatty()


def fit(config: TrainConfig, log: Log = print) -> TrainResult:
    """Train ``config.model`` on Fashion-MNIST as ``config`` says; write the run folder; return the results."""
    validate(config)
    started = time.perf_counter()
    device = resolve_device(config.device)
    bf16 = use_bf16(config.precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    train, val, test = load_data(config)
    if len(train) < config.batch_size:
        raise ResnetlabError(
            f"--batch-size {config.batch_size} is larger than the {len(train)} training images; lower it"
        )
    seed_everything(config.seed)
    in_channels, num_classes = train.images.shape[1], len(train.class_names)
    model = build_model(config, in_channels, num_classes).to(device)
    # Only now, with data and model in hand, does the run get a folder: a bad flag leaves nothing behind.
    run_dir = prepare_run_dir(config.out, config.model)
    write_text(run_dir / "config.json", config.to_json())
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    mean, std = channel_stats(train.images) if config.normalize else (None, None)

    def loader(data: ImageSet, training: bool) -> DeviceLoader:
        return DeviceLoader(
            data, config.batch_size, device=device, image_size=config.image_size, mean=mean, std=std,
            shuffle=training, drop_last=training, seed=config.seed, channels_last=config.channels_last,
            augment=Augment(config.crop_padding, config.flip, config.erase_prob) if training else Augment(),
        )

    train_loader = loader(train, True)
    val_loader = loader(val, False) if val is not None else None
    test_loader = loader(test, False)
    steps_per_epoch = len(train_loader)

    optimizer = make_optimizer(config, model)
    training = Training(
        config=config,
        model=model,
        step_model=torch.compile(model) if config.compile else model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config, steps_per_epoch)),
        criterion=nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
        ema=_Ema(model, config.ema_decay) if config.ema_decay else None,
        device=device,
        bf16=bf16,
    )

    metadata = {
        "model": config.model,
        "model_args": model.model_args,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "class_names": list(train.class_names),
        "input_size": [in_channels, config.image_size, config.image_size],
        "normalization": {"mean": mean, "std": std} if mean is not None else None,
        "preset": config.preset or "",
        "versions": versions(),
        "config": config.to_dict(),
    }
    log(
        f"training {config.model} on {len(train):,} images ({steps_per_epoch} steps/epoch), "
        f"validating on {len(val) if val is not None else 0:,}, testing on {len(test):,}; "
        f"device {device}, {'bf16' if bf16 else 'fp32'}; run folder {run_dir}"
    )

    history: list[dict] = []
    best_acc, best_epoch, best_state = -1.0, 0, None
    train_seconds, train_examples = 0.0, 0
    train_loss = train_acc = float("nan")
    for epoch in range(config.epochs):
        epoch_start = time.perf_counter()
        stats = training.train_epoch(train_loader, epoch)
        train_seconds += stats["seconds"]
        train_examples += stats["seen"]
        train_loss, train_acc = stats["loss"], stats["acc"]
        net = training.eval_model
        val_acc = evaluate(net, val_loader, bf16=bf16, tta=config.tta)["acc"] if val_loader else None
        test_acc = evaluate(net, test_loader, bf16=bf16, tta=config.tta)["acc"] if config.test_each_epoch else None
        row = {
            "epoch": epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_acc": val_acc,
            "test_acc": test_acc,
            "examples_per_sec": stats["seen"] / stats["seconds"],
            "seconds": time.perf_counter() - epoch_start,
        }
        history.append(row)
        # The best epoch is chosen on validation accuracy only; without validation it is the last.
        score = val_acc if val_acc is not None else float(epoch)
        epoch_meta = {**metadata, "epoch": epoch + 1, "metrics": {k: v for k, v in row.items() if v is not None}}
        if score > best_acc:
            best_acc, best_epoch = score, epoch + 1
            best_state = {k: v.detach().clone() for k, v in unwrap(net).state_dict().items()}
            save_weights(run_dir / "best.safetensors", net, epoch_meta)
        save_weights(run_dir / "last.safetensors", net, epoch_meta)
        write_csv(run_dir / "metrics.csv", history)
        plot_curves(run_dir / "curves.png", history, title=f"{config.model} ({config.preset or 'custom'})")
        log(
            f"epoch {epoch + 1}/{config.epochs}  lr {row['lr']:.4g}  loss {train_loss:.3f}  "
            f"train acc {train_acc:.3f}"
            + (f"  val acc {val_acc:.3f}" if val_acc is not None else "")
            + (f"  test acc {test_acc:.3f}" if test_acc is not None else "")
            + f"  {row['examples_per_sec']:.0f} img/s  {row['seconds']:.1f} s"
        )

    net = training.eval_model
    unwrap(net).load_state_dict(best_state)
    test_metrics = evaluate(net, test_loader, bf16=bf16, tta=config.tta)
    result = TrainResult(
        run_dir=run_dir,
        device=str(device),
        train_loss=train_loss,
        train_acc=train_acc,
        test_acc=test_metrics["acc"],
        test_loss=test_metrics["loss"],
        best_epoch=best_epoch,
        best_val_acc=best_acc if val_loader is not None else None,
        examples_per_sec=train_examples / train_seconds,
        train_seconds=train_seconds,
        total_seconds=time.perf_counter() - started,
        history=history,
    )
    write_results(result)
    # The book's two closing lines (d2l.train_ch6).
    log(f"loss {result.train_loss:.3f}, train acc {result.train_acc:.3f}, test acc {result.test_acc:.3f}")
    log(f"{result.examples_per_sec:.1f} examples/sec on {result.device}")
    return result


def write_results(result: TrainResult) -> None:
    """Write ``results.json``: the final numbers of a run."""
    values = {k: v for k, v in result.__dict__.items() if k not in ("run_dir", "history")}
    write_text(result.run_dir / "results.json", json.dumps(values, indent=2) + "\n")
