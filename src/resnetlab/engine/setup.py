"""Setting a run up: one function, :func:`set_up`, from the given configuration to everything the loop needs.

In this order, because each step needs the one before: what is decided before the data
(``config.plan``: the preset, the device) and the process group; the data; the configuration
resolved against them (``config.resolve``: the data's rules, the feed); the model; the loaders;
where the run stands (fresh, or the saved progress); the optimisation step's pieces, with a
saved state loaded into them; and last the run folder, so that a bad flag or file, or memory
running out, leaves nothing behind. The result, :class:`Run`, is plain data: the loop (``loop.py``)
reads it and changes only the progress, the best weights and what the training step holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import DataFacts, Plan, RunConfig, TrainConfig, folder_side, plan, resolve
from ..data import Augment, DeviceLoader, ImageSet, dataset_kind, open_dataset
from ..data.feed import Feed
from ..data.loader import mix_seed
from ..data.stats import channel_stats, intensity_stats
from ..errors import ResnetlabError, first_line
from ..models.pretrained import IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD, IMAGENET_MEAN, IMAGENET_STD, is_pretrained_init
from ..models.small_maps import use_small_map_products
from ..util.compat import is_out_of_memory
from ..util.log import Log, silent, warn_stderr
from ..util.runtime import Precision, configure_backends, seed_everything
from ..weights import Preprocess
from .distributed import Dist, convert_sync_batchnorm, wrap_ddp
from .initialize import build_model, stem_of_init_file
from .run_folder import RunFolder
from .schedule import make_optimizer, make_scheduler
from .state import STATE_FILE, Progress, check_same_data, restore_train_state
from .step import Ema, Training


@dataclass
class Loaders:
    """The run's batches: training (shuffled, augmented), validation, test, and batch-norm recalibration."""

    train: DeviceLoader
    val: DeviceLoader | None
    test: DeviceLoader | None
    recalibration: DeviceLoader | None  # --recalibrate-bn's training images (None: off, or a frozen backbone)
    feed: Feed  # resident or streamed, and why (every loader feeds the same way)


@dataclass
class Run:
    """Everything a run's loop needs, made by :func:`set_up`."""

    config: RunConfig
    device: torch.device
    dist: Dist
    precision: Precision
    log: Log  # silent off rank 0: one voice prints, plots and writes
    folder: RunFolder | None  # None: a set-up that trains nothing to keep (lr-find)
    loaders: Loaders
    training: Training
    progress: Progress
    best_weights: dict[str, torch.Tensor] | None
    fingerprint: dict[str, str | None]  # each split's (ImageSet.fingerprint), kept in the state and the weights' header
    preprocess: Preprocess  # how an image becomes the model's input, for the weights' header
    class_names: list[str]
    resumed: bool

    @property
    def steps_per_epoch(self) -> int:
        """Training steps in an epoch (the last, partial batch is dropped)."""
        return len(self.loaders.train)

    def describe(self) -> str:
        """The run's first line: what is trained on what, where, and (resumed) from where on."""
        loaders, p = self.loaders, self.progress
        n_val, n_test = (loader.num_examples if loader else 0 for loader in (loaders.val, loaders.test))
        return (
            f"{'resuming' if self.resumed else 'training'} {self.config.model} on {loaders.train.num_examples:,} images "
            f"({self.steps_per_epoch} steps/epoch), validating on {n_val:,}, testing on {n_test:,}; device {self.device}"
            f"{f' x {self.dist.world_size} processes' if self.dist.enabled else ''}, {self.precision.name}; "
            f"{loaders.feed.reason}" + (f"; run folder {self.folder.path}" if self.folder is not None else "")
            + (f"; continuing epoch {p.epoch + 1} after step {p.step}/{self.steps_per_epoch}" if self.resumed else "")
        )


def set_up(given: TrainConfig, log: Log, *, out: str | None = None, run_dir: Path | None = None,
           state: dict | None = None, module: nn.Module | None = None, keep: bool = True) -> Run:
    """Set a run up from ``given`` (a new run into ``out``, or the run in ``run_dir`` resumed from ``state``).

    ``module``: the caller's own network, trained (as a copy) instead of a registry model.
    ``keep``: False for a set-up whose training is not kept (the learning-rate finder): no run folder.
    """
    first = plan(given)
    dist = Dist.join(first.device.type, first.config.dist_timeout)
    device = torch.device("cuda", dist.local_rank) if first.device.type == "cuda" and dist.enabled else first.device
    log = log if dist.is_main else silent
    train, val, test, source = load_data(first, warn=warn_stderr if dist.is_main else silent)
    facts = DataFacts(kind=dataset_kind(first.config.data), source=source, train_images=len(train),
                      side=int(train.shape[-1]), num_classes=len(train.class_names), nbytes=sum(split.nbytes for split in (train, val, test) if split is not None))
    # A new run's stem left to the data follows the --init file's (resolve reads it only for such a stem).
    init_stem = (lambda: stem_of_init_file(first.config.init)) if state is None and module is None else None
    resolved = resolve(first, facts, device, init_stem)
    config = resolved.config
    for line in resolved.lines if state is None else []:
        log(line)
    if dist.enabled and config.batch_size % dist.world_size:
        raise ResnetlabError(f"--batch-size {config.batch_size} (the global batch) must be divisible by the "
                             f"{dist.world_size} processes; choose a multiple")
    fingerprint = {name: split.fingerprint() if split is not None else None
                   for name, split in (("train", train), ("val", val), ("test", test))}
    if state is not None:
        check_same_data(state, fingerprint, config.data)
    configure_backends(device, config.deterministic)
    precision = Precision(config.precision)
    mean, std = normalization(config, train)
    try:  # what goes onto the device: where memory runs out if it does
        model = _model(config, train, device, precision, dist, log if state is None else None, module)
        loaders = _loaders(config, train, val, test, device, precision, dist, mean, std, resolved.feed)
        check_given_plan(config, len(loaders.train))
        progress, best_weights = _progress(state, config, device, dist)
        training = _training(config, model, len(loaders.train), progress, device, precision, dist)
        if state is not None:
            _restore(state, training, module, run_dir)
    except RuntimeError as exc:
        if not is_out_of_memory(exc):
            raise
        raise out_of_memory(exc, device, config.batch_size, run_dir / STATE_FILE if state is not None else None) from None
    # The training images' intensity, overall and on the border (a strided sample of at most 10,000 images): a
    # photo whose background is the other way round is warned of at prediction (photo.py).
    pixel_mean, border_mean = intensity_stats(train)
    # Only now, with everything built, does a new run get a folder: a bad flag or file leaves nothing behind.
    if not keep:
        folder = None
    elif run_dir is not None:
        folder = RunFolder(run_dir, dist.is_main)  # resume() holds its lock
    else:
        folder = RunFolder.create(out, config.model, dist, warn=warn_stderr)  # rank 0 takes its lock
        try:
            folder.write_text("config.json", config.to_json())
        except BaseException:
            folder.release()  # the run never started: the folder is free again
            raise
    preprocess = Preprocess(
        channels=int(train.shape[1]), size=config.image_size,
        # The side the images had before the loader's resize: new images are first brought to it the way the
        # data were (Pillow, bilinear), so prediction sees what training saw.
        stored_size=int(train.shape[-1]),
        mean=tuple(mean) if mean is not None else None, std=tuple(std) if std is not None else None,
        pixel_mean=pixel_mean, border_mean=border_mean,
    )
    return Run(config=config, device=device, dist=dist, precision=precision, log=log, folder=folder, loaders=loaders,
               training=training, progress=progress, best_weights=best_weights, fingerprint=fingerprint,
               preprocess=preprocess, class_names=list(train.class_names), resumed=state is not None)


def normalization(config: RunConfig, train: ImageSet) -> tuple[list[float] | None, list[float] | None]:
    """The per-channel mean and std the run standardises with: published weights' own (ImageNet's, averaged for gray
    images, which the summed first convolution expects), else the training images', else none."""
    if not config.normalize:
        return None, None
    if is_pretrained_init(config.init):
        gray = train.shape[1] == 1
        return list(IMAGENET_GRAY_MEAN if gray else IMAGENET_MEAN), list(IMAGENET_GRAY_STD if gray else IMAGENET_STD)
    return channel_stats(train)


def _restore(state: dict, training: Training, module: nn.Module | None, run_dir: Path | None) -> None:
    """Load a saved state into the run; a caller's module that is another network than the run's is one line."""
    try:
        restore_train_state(state, training)
    except RuntimeError as exc:
        if module is None or is_out_of_memory(exc):
            raise
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__  # the first mismatch
        raise ResnetlabError(f"{run_dir}: the saved weights do not fit the {type(module).__qualname__} given "
                             f"({detail[:160]}); give the network the run was started with") from None


def check_given_plan(config: RunConfig, steps_per_epoch: int) -> None:
    """A ``budget_plan`` given in a config file must fit this run's epochs (it was made for some data and batch)."""
    ceiling = config.epochs * steps_per_epoch
    if config.budget_plan and max(total for _, total in config.budget_plan) > ceiling:
        raise ResnetlabError(
            f"budget_plan buys {max(total for _, total in config.budget_plan):,} steps, more than the {config.epochs} "
            f"epochs of {steps_per_epoch} steps allow ({ceiling:,}): it was planned for other data or flags; remove "
            "budget_plan from the config file to plan afresh"
        )


def out_of_memory(exc: BaseException, device: torch.device | str, batch_size: int | None,
                  saved: Path | None) -> ResnetlabError:
    """The one line for memory running out: what ran out, what to lower, and how to continue a saved run."""
    batch = f" at --batch-size {batch_size}" if batch_size else ""
    smaller = f" (to {max(1, batch_size // 2)}, say)" if batch_size else ""
    resume = (f"; the state saved in {saved} continues with the same batch size once memory is free: "
              f"resnetlab train --resume {saved.parent}") if saved is not None and saved.exists() else ""
    return ResnetlabError(f"out of memory on {device}{batch} ({first_line(exc)[:160]}); lower --batch-size{smaller} "
                          f"or --image-size in a new run{resume}")


def load_data(first: Plan, warn: Log = warn_stderr) -> tuple[ImageSet, ImageSet | None, ImageSet | None, Path]:
    """(train, validation or None, test or None, the folder read), split and limited as the plan says (``open_dataset``)."""
    c = first.config
    # A class folder is decoded at the given size, else at what the recipe's rule makes of its images' sides.
    splits = open_dataset(c.data, image_size=c.image_size, channels=c.channels, val_split=c.val_split, val_fraction=c.val_fraction, seed=c.seed,
                          strict=c.strict, warn=warn, side_rule=folder_side)
    test = splits.test.limit(c.limit_test) if splits.test is not None else None
    return splits.train.limit(c.limit_train), splits.val, test, splits.source


def _model(config: RunConfig, train: ImageSet, device: torch.device, precision: Precision, dist: Dist,
           log: Log | None, module: nn.Module | None) -> nn.Module:
    """The model for the data's channels and classes, on the device, in the run's dtype and memory format."""
    seed_everything(config.seed)
    model = build_model(config, train.shape[1], len(train.class_names), log=log, module=module)
    model = model.to(device, precision.dtype)
    if config.small_maps:
        use_small_map_products(model)
    if config.sync_bn and dist.enabled:
        model = convert_sync_batchnorm(model, device.type)
    return model.to(memory_format=torch.channels_last) if config.channels_last else model


def _loaders(config: RunConfig, train: ImageSet, val: ImageSet | None, test: ImageSet | None, device: torch.device,
             precision: Precision, dist: Dist, mean: list[float] | None, std: list[float] | None, feed: Feed) -> Loaders:
    """The run's loaders, all fed one way (``feed``, as the recipe decided: resident, or streamed)."""

    def loader(data: ImageSet, training: bool = False) -> DeviceLoader:
        return DeviceLoader(
            data, config.batch_size, device=device, image_size=config.image_size, mean=mean, std=std,
            shuffle=training, drop_last=training, seed=config.seed, channels_last=config.channels_last,
            augment=Augment(config.crop_padding, config.flip, config.erase_prob) if training else Augment(),
            rank=dist.rank, world_size=dist.world_size, dtype=precision.dtype, stream=feed.stream,
        )

    recalibration = None
    if config.recalibrate_bn and not config.freeze_backbone:  # a frozen backbone keeps the statistics it came with
        count = min(config.recalibrate_bn, len(train))
        if count >= config.batch_size:
            count -= count % config.batch_size  # whole batches: each counts equally in the average
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(mix_seed(config.seed, 7919)))
        recalibration = loader(train.subset(order[:count]))
    return Loaders(train=loader(train, training=True), val=loader(val) if val is not None else None,
                   test=loader(test) if test is not None else None, recalibration=recalibration, feed=feed)


def _progress(state: dict | None, config: RunConfig, device: torch.device,
              dist: Dist) -> tuple[Progress, dict[str, torch.Tensor] | None]:
    """Where the run stands (a fresh start, with the budget plan it was given, or the saved progress) and its best weights."""
    if state is None:
        return Progress(plan=[list(decision) for decision in config.budget_plan]), None
    progress = Progress.from_dict(state["progress"], device)
    if not dist.is_main:  # the saved sums are the whole job's: rank 0 carries them on
        progress.zero_sums()
    return progress, state["best_model"]


def _training(config: RunConfig, model: nn.Module, steps_per_epoch: int, progress: Progress, device: torch.device,
              precision: Precision, dist: Dist) -> Training:
    """The optimisation step's pieces; the schedule reads the run's budget plan (``progress.plan``) as it grows."""
    step_model = wrap_ddp(model, device) if dist.enabled else model
    optimizer = make_optimizer(config, model)
    return Training(
        config=config, model=model, step_model=torch.compile(step_model, mode=config.compile_mode) if config.compile else step_model,
        optimizer=optimizer, scheduler=make_scheduler(config, optimizer, steps_per_epoch, progress.plan),
        criterion=nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
        ema=Ema(model, config.ema_decay) if config.ema_decay else None, device=device,
        precision=precision, distributed=dist.enabled,
    )
