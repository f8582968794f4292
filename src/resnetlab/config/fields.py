"""Every field of a run's configuration, declared once: its type, help, base default, choices and checks.

:class:`TrainConfig` is the one declaration: a field per ``resnetlab train`` flag, each None
until the user, a ``--config`` file or a caller gives it. Everything else is derived from it:

- :class:`RunConfig`, the resolved configuration (every field decided, frozen; what a run uses
  and ``config.json`` holds), is built from TrainConfig's fields (``out`` aside);
- the command-line flags (``cli/train.py``: one per field, with its help and choices);
- :func:`validate` (each field's own checks, then the few that relate two fields);
- :data:`BASE_DEFAULTS` (what a field is when neither a preset nor the data decided it);
- ``docs/configuration.md`` (:func:`reference`).

What the unset fields become is the recipe's business (``presets.py``, ``rules.py``,
``resolve.py``). Adding a field is its line here, and the preset or rule that sets it, if any.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..data.feed import FEEDS
from ..errors import ResnetlabError, first_line
from ..util.runtime import DEVICES, PRECISIONS

Check = Callable[[Any], "str | None"]  # a value -> what is wrong with it ("must be at least 1"), or None


def at_least(low: int) -> Check:
    """A check: the value is at least ``low``."""
    return lambda v: None if v >= low else f"must be at least {low}"


def not_negative(v: Any) -> str | None:
    """A check: the value is zero or more."""
    return None if v >= 0 else "must not be negative"


def positive(v: Any) -> str | None:
    """A check: the value is above zero."""
    return None if v > 0 else "must be positive"


def below(high: float, note: str = "") -> Check:
    """A check: the value is below ``high`` (``note`` is said after, e.g. "(0: no EMA)")."""
    return lambda v: None if v < high else f"must be below {high:g}{note}"


def between(low: float, high: float, *, inclusive: bool) -> Check:
    """A check: ``low <= v <= high`` (inclusive) or ``low < v < high``."""
    def check(v: Any) -> str | None:
        inside = low <= v <= high if inclusive else low < v < high
        return None if inside else f"must be between {low:g} and {high:g}"
    return check


def option(help: str, *, base: Any = None, choices: tuple | None = None, check: tuple[Check, ...] = (),  # noqa: A002
           flag: bool = True, none_is_a_value: bool = False, resume: bool = False) -> Any:
    """A field of :class:`TrainConfig`, unset (None) until given.

    ``help``: the text ``--help`` shows. ``base``: the value when neither the preset nor the data
    decide it (the book's ``train_ch6`` where it has one). ``choices`` and ``check``: what
    :func:`validate` accepts. ``flag``: whether it has a command-line flag. ``none_is_a_value``:
    None is a decided value in the resolved config (``limit_train`` None: every image).
    ``resume``: a resumed run may change it (how the run is saved, guarded or fed, not what it computes).
    """
    return field(default=None, metadata=dict(help=help, base=base, choices=choices, check=check, flag=flag,
                                             none_is_a_value=none_is_a_value, resume=resume))


# Named initialisations (anything else is a weight file): the model's own, the book's, torchvision's ImageNet weights.
INIT_SCHEMES = ("default", "xavier", "imagenet", "imagenet-v2")
# torch.compile's modes, the four that PyTorch has long had (``torch._inductor.list_mode_options()``; 2.13 lists "lite" too).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CHANNELS = (1, 3)


class _Fields:
    """What both configurations do with their fields."""

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON-able values."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        """The configuration as indented JSON (what ``config.json`` holds)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"


@dataclass
class TrainConfig(_Fields):
    """Everything that defines a training run, as given. Units: pixels, images, epochs, minutes.

    None means "not given": the recipe decides it (``resolve.py``: the preset, the data, the base default).
    """

    # --- what is trained ---
    preset: str | None = option("the recipe to start from: d2l, cpu, fast, best or folder (default: fast on a CUDA GPU, "
                                "else cpu; folder for a class-folder data set)")
    model: str | None = option("a registered model name (see 'resnetlab models'); default: the preset's, resnet18 for "
                               "class folders", base="d2l_resnet18")
    model_args: dict[str, Any] | None = option('extra builder arguments as JSON, e.g. \'{"stem": "small"}\'; stem "auto": '
                                               "small for images up to 32 px (16 px on the CPU), imagenet above", base={})
    init: str | None = option("default (the model's own init), xavier (the book's Xavier-uniform), imagenet "
                              "(torchvision's IMAGENET1K_V1 weights, downloaded once into $TORCH_HOME; imagenet-v2: "
                              "IMAGENET1K_V2), or a weight file (.safetensors, or .pth read weights-only) to start from",
                              base="default")
    init_non_strict: bool | None = option("with --init FILE: keep the model's own values where the file's do not fit, "
                                          "instead of stopping", base=False)
    freeze_backbone: bool | None = option("train only the classifier head (the backbone's weights and batch-norm "
                                          "statistics stay fixed)", base=False)

    # --- data ---
    data: str | None = option("Fashion-MNIST folder, or a class-folder data set (DIR/train/<class>/*, DIR/val/..., or "
                              "DIR/<class>/*); default: $RESNETLAB_DATA, else Debian's /usr/share/datasets/fashion-mnist",
                              resume=True)
    val_split: int | None = option("Fashion-MNIST: training images held out (seeded) to pick the best epoch; 0: train on "
                                   "all 60,000", base=5000, check=(not_negative,))
    val_fraction: float | None = option("class folders without val/: the share of each class held out (seeded, stratified)",
                                        base=0.2, check=(between(0, 1, inclusive=False),))
    channels: int | None = option("1 or 3: force grayscale or RGB (default: as the data are)", none_is_a_value=True,
                                  check=(lambda v: None if v in CHANNELS else "must be 1 (grayscale) or 3 (RGB)",))
    strict: bool | None = option("class folders: stop on files that are not readable images instead of skipping them "
                                 "with a warning", base=False)
    limit_train: int | None = option("use only the first N training images (quick tries, tests)", none_is_a_value=True,
                                     check=(at_least(1),))
    limit_test: int | None = option("evaluate on only the first N test images", none_is_a_value=True, check=(at_least(1),))
    image_size: int | None = option("side of the square model input (images are resized, bilinear); default: the "
                                    "preset's, for class folders the median side of the images, at most 224", base=28,
                                    check=(at_least(1),))
    normalize: bool | None = option("standardise pixels with the training set's mean and std (else only scale to [0, 1])",
                                    base=True)
    crop_padding: int | None = option("augmentation: random crop after zero-padding by this many pixels (0: off)", base=0,
                                      check=(not_negative,))
    flip: bool | None = option("augmentation: random horizontal flip (right for photos, wrong for digits or text)",
                               base=False)
    erase_prob: float | None = option("augmentation: probability of random erasing of one rectangle", base=0.0,
                                      check=(between(0, 1, inclusive=True),))
    feed: str | None = option("auto (images resident on the device while they take under a quarter of its memory, else "
                              "streamed batch by batch from the folder's memory-mapped cache), resident, or stream; "
                              "the batches are the same", base="auto", choices=FEEDS, resume=True)

    # --- optimisation ---
    epochs: int | None = option("passes over the training images (with --time-budget: the most it may do)", base=10,
                                check=(at_least(1),))
    time_budget: float | None = option("minutes for the whole run, start-up to the last line: the run measures its speed "
                                       "on its first steps and then fixes its number of steps to fit (0: no budget)",
                                       base=0.0, check=(not_negative,))
    budget_plan: list[list[int]] | None = option(
        "the time budget's decisions, [[global step, total steps], ...] (written by the run into config.json; given, as "
        "when a run is repeated with --config from its config.json, the run follows them and measures nothing)",
        base=[], flag=False)  # no command-line flag: it comes from a config file
    batch_size: int | None = option("images per step (the global batch under torchrun)", base=256, check=(at_least(1),))
    optimizer: str | None = option("sgd or adamw", base="sgd", choices=("sgd", "adamw"))
    lr: float | None = option("peak learning rate for the global batch", base=0.05, check=(positive,))
    backbone_lr_scale: float | None = option("the backbone's learning rate as a share of --lr (the classifier head "
                                             "learns at --lr): below 1 for fine-tuning trained weights", base=1.0,
                                             check=(positive, between(0.0, 1.0, inclusive=True)))
    momentum: float | None = option("SGD momentum (0: plain SGD, as the book)", base=0.0, check=(not_negative, below(1)))
    nesterov: bool | None = option("Nesterov momentum (SGD)", base=False)
    weight_decay: float | None = option("L2 penalty (SGD) or decoupled decay (AdamW); not applied to norms and biases",
                                        base=0.0, check=(not_negative,))
    schedule: str | None = option("learning-rate schedule: constant, step, cosine or onecycle", base="constant",
                                  choices=("constant", "step", "cosine", "onecycle"))
    warmup_epochs: float | None = option("linear warm-up from 0 over this many epochs (all schedules)", base=0.0,
                                         check=(not_negative,))
    step_epochs: int | None = option("step schedule: multiply the lr by --step-gamma every this many epochs", base=30,
                                     check=(at_least(1),))
    step_gamma: float | None = option("step schedule: the factor", base=0.1)
    label_smoothing: float | None = option("cross-entropy label smoothing", base=0.0, check=(not_negative, below(1)))
    grad_clip: float | None = option("clip the global gradient norm to this value (0: off; the cpu preset clips at 2, "
                                     "scaled with the batch on subsets)", base=0.0, check=(not_negative,))
    ema_decay: float | None = option("evaluate an exponential moving average of the weights with this decay (0: off)",
                                     base=0.0, check=(not_negative, below(1, " (0: no EMA)")))

    # --- evaluation ---
    recalibrate_bn: int | None = option("before each evaluation, recompute batch-norm statistics from this many training "
                                        "images (0: keep the running averages, as the book does)", base=2048,
                                        check=(not_negative,))
    tta: bool | None = option("test-time augmentation: average the predictions for the image and its mirror", base=False)
    test_each_epoch: bool | None = option("also report test accuracy after every epoch (as the book); never used to choose "
                                          "anything", base=False)

    # --- speed and reproducibility ---
    device: str | None = option("auto (cuda, else mps, else cpu), cpu, cuda or mps", base="auto", choices=DEVICES)
    precision: str | None = option("auto (bf16 on CUDA cards with fast bf16 and CPUs with native bf16, fp16 on older CUDA "
                                   "cards, else fp32), fp32, bf16, fp16 (GPUs, with loss scaling), or fp64 (CPU, to check "
                                   "results)", base="auto", choices=PRECISIONS)
    channels_last: bool | None = option("channels-last memory format for the model and its input", base=True)
    compile: bool | None = option("torch.compile the model (slow start, faster steps on a GPU; no faster on a 2-core CPU)",
                                  base=False)
    compile_mode: str | None = option("with --compile: torch.compile's mode, default, reduce-overhead (CUDA graphs: fewer "
                                      "launches for small steps), max-autotune or max-autotune-no-cudagraphs",
                                      base="default", choices=COMPILE_MODES)
    small_maps: bool | None = option("compute 3x3 convolutions of 1x1 and 2x2 feature maps as matrix products without the "
                                     "padding (default: on the CPU, where the seed's net at 28 px trains 1.4x faster)",
                                     base=False)
    seed: int | None = option("seeds the init, the validation split, the data order and augmentation", base=0)
    sync_bn: bool | None = option("under torchrun: batch-norm statistics over the global batch, not each process's share",
                                  base=False)
    dist_timeout: int | None = option("under torchrun: seconds a collective may wait for the other processes before "
                                      "failing", base=300, check=(at_least(1),))
    deterministic: bool | None = option("use only deterministic algorithms (bit-exact resume on CPU; CUDA warns where it "
                                        "cannot)", base=False)

    # --- saving and safety ---
    out: str | None = option("run folder (default: runs/<date-time>-<model>)")
    save_every: int | None = option("also save train_state.pt every N steps, not only after each epoch (0: epochs only)",
                                    base=0, check=(not_negative,), resume=True)
    tensorboard: bool | None = option("write TensorBoard event files into the run folder's tensorboard/ (needs the "
                                      "tensorboard package: pip install \"resnetlab[tensorboard]\")", base=True, resume=True)
    skip_nonfinite: bool | None = option("skip a batch whose loss or gradients are NaN/inf (counted) instead of stopping "
                                         "with exit 3", base=False, resume=True)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed; unknown names raise :class:`ResnetlabError`."""
        unknown = sorted(set(changes) - set(field_names()))
        if unknown:
            raise ResnetlabError(f"unknown config field(s) {', '.join(unknown)}; valid fields: {', '.join(field_names())}")
        return dataclasses.replace(self, **changes)

    def given(self) -> set[str]:
        """The names of the fields that are set: what the user gave, which nothing may change."""
        return {k for k, v in self.to_dict().items() if v is not None}

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "TrainConfig":
        """Build a configuration from a mapping, checking field names and types."""
        if not isinstance(values, dict):
            raise ResnetlabError(f"{source}: expected a mapping of config fields, got {type(values).__name__}")
        return check_types(cls().replace(**values), source)


_DECLARED = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)
# Where a run's files go is not part of what it computes: a config.json given back repeats the run in a new folder.
NOT_RUN = ("out",)


def field_names() -> list[str]:
    """The names of all :class:`TrainConfig` fields, in declaration order."""
    return list(_DECLARED)


def meta(name: str) -> dict[str, Any]:
    """A field's declaration (help, base, choices, check, flag, none_is_a_value, resume)."""
    return _DECLARED[name].metadata


def field_kind(name: str) -> type:
    """The value type of a field: bool, int, float, str, dict or list (None aside)."""
    args = [a for a in typing.get_args(_HINTS[name]) if a is not type(None)]
    return typing.get_origin(args[0]) or args[0]


def has_flag(name: str) -> bool:
    """Whether the field has a command-line flag (``budget_plan``, which the run writes, has none)."""
    return meta(name)["flag"]


def field_help() -> dict[str, str]:
    """Each field's help text."""
    return {name: meta(name)["help"] for name in _DECLARED}


def choices() -> dict[str, tuple]:
    """The fields with a fixed set of values, and those values."""
    return {name: meta(name)["choices"] for name in _DECLARED if meta(name)["choices"]}


BASE_DEFAULTS: dict[str, Any] = {name: meta(name)["base"] for name in _DECLARED if meta(name)["base"] is not None}
NONE_IS_A_VALUE = tuple(name for name in _DECLARED if meta(name)["none_is_a_value"])
RESUME_OVERRIDES = tuple(name for name in _DECLARED if meta(name)["resume"])


def _run_config_fields() -> list[tuple[str, Any]]:
    """RunConfig's fields: TrainConfig's but ``out``, typed without "| None" unless None is a decided value."""
    fields = []
    for name in _DECLARED:
        if name in NOT_RUN:
            continue
        kind = _HINTS[name]
        if name not in NONE_IS_A_VALUE:
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        fields.append((name, kind))
    return fields


class _Resolved(_Fields):
    """RunConfig's methods (its fields come from :class:`TrainConfig`)."""

    def replace(self, **changes: Any) -> "RunConfig":
        """A copy with some fields changed (``budget_plan`` for the record the run writes)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    @classmethod
    def from_given(cls, config: TrainConfig) -> "RunConfig":
        """The resolved configuration from a :class:`TrainConfig` whose fields are all decided (``resolve``)."""
        values = {name: getattr(config, name) for name in run_field_names()}
        unset = [name for name, value in values.items() if value is None and name not in NONE_IS_A_VALUE]
        if unset:
            raise AssertionError(f"resolve() left field(s) {', '.join(unset)} undecided")  # a bug, not a user error
        return cls(**values)  # type: ignore[call-arg]


RunConfig = dataclasses.make_dataclass("RunConfig", _run_config_fields(), bases=(_Resolved,), frozen=True)
RunConfig.__module__ = __name__
RunConfig.__doc__ = """The configuration a run uses: every :class:`TrainConfig` field decided (``out`` aside), frozen.

Made only by ``resolve()``; written to ``config.json`` and into every weight file's header.
``precision`` is what it resolved to (``bf16``), ``data`` the folder read (an absolute path; a
resumed run may be told where the same files are now), ``model_args`` the stem chosen. Two
fields bind a run to a machine or to its images rather than say what it computes, and stay as
given, so that a run resumes on another machine and a ``config.json`` given back with other
``--data`` reads those as they are: ``device`` (``auto`` unless given: the device used is in the
run's first line and ``results.json``) and ``channels`` (None: as the images are; the weights'
header records what they were); ``feed`` too (how images reach the model, not what is computed).
Three fields hold None as a value, not as "unset": ``channels``, ``limit_train`` and
``limit_test`` (None: every image).
"""


def run_field_names() -> list[str]:
    """The names of all :class:`RunConfig` fields (TrainConfig's but ``out``)."""
    return [f.name for f in dataclasses.fields(RunConfig)]


def flag(name: str) -> str:
    """The command-line flag of a config field (``batch_size`` -> ``--batch-size``)."""
    return "--" + name.replace("_", "-")


def check_types(config: TrainConfig, source: str) -> TrainConfig:
    """Raise :class:`ResnetlabError` naming the field if a value has the wrong type."""
    for name in field_names():
        value = getattr(config, name)
        if value is None:
            continue
        kind = field_kind(name)
        allowed: tuple[type, ...] = (int, float) if kind is float else (kind,)
        if not isinstance(value, allowed) or (kind is not bool and isinstance(value, bool)):
            raise ResnetlabError(f"{source}: field {name!r} must be {kind.__name__} or null, got {value!r}")
    return config


def validate(config: TrainConfig | Any) -> Any:
    """Raise :class:`ResnetlabError` naming the flag for a value out of range; return ``config``.

    Unset fields (None) pass: a partial configuration is checked as far as it goes. Each field's
    own choices and checks first (as declared), then those that relate two fields.
    """
    values = config.to_dict()
    for name, value in values.items():
        if value is None or name not in _DECLARED:
            continue
        allowed = meta(name)["choices"]
        if allowed and value not in allowed:
            raise ResnetlabError(f"{flag(name)} {value!r} is not one of: {', '.join(map(str, allowed))}")
    for name, value in values.items():
        # nan passes no comparison the way it should ("--grad-clip nan must not be negative"), and inf
        # is no setting of any field: both are refused here, once for every number.
        if isinstance(value, float) and not math.isfinite(value) and name in _DECLARED:
            raise ResnetlabError(f"{flag(name)} {value} must be a finite number")
        for check in meta(name)["check"] if value is not None and name in _DECLARED else ():
            problem = check(value)
            if problem:
                raise ResnetlabError(f"{flag(name)} {value} {problem}")
    _check_together(values)
    return config


def _check_together(v: dict[str, Any]) -> None:
    """The checks that relate two fields (each passes while either is unset)."""
    if v["warmup_epochs"] is not None and v["epochs"] is not None and v["warmup_epochs"] > v["epochs"]:
        raise ResnetlabError(f"--warmup-epochs {v['warmup_epochs']} must not exceed --epochs {v['epochs']}")
    if v["nesterov"] and v["momentum"] == 0:
        raise ResnetlabError("--nesterov needs a positive --momentum")
    if v["compile_mode"] is not None and v["compile_mode"] != "default" and v["compile"] is False:
        raise ResnetlabError(f"--compile-mode {v['compile_mode']} needs --compile")
    if v["budget_plan"] is not None and not _is_plan(v["budget_plan"]):
        raise ResnetlabError(f"budget_plan {v['budget_plan']!r} must be a list of [global step, total steps] pairs of "
                             "non-negative integers with rising steps, as a run writes it into config.json")


def _is_plan(plan: Any) -> bool:
    """Whether ``plan`` is a list of ``[step, total]`` integer pairs, steps rising, each total at least its step."""
    pairs = [p for p in plan if isinstance(p, list) and len(p) == 2 and all(type(v) is int and v >= 0 for v in p)]
    return len(pairs) == len(plan) and all(a <= t for a, t in pairs) and all(
        earlier[0] <= later[0] for earlier, later in zip(pairs, pairs[1:]))


def check_init_file(config: TrainConfig) -> TrainConfig:
    """Raise :class:`ResnetlabError` if ``--init`` names a file that is not there; return ``config``.

    Checked when a run starts from the beginning, before any data is read; a resumed run holds
    its weights in its train state and no longer needs the file.
    """
    if config.init is not None and config.init not in INIT_SCHEMES and not Path(config.init).is_file():
        raise no_such_init_file(config.init)
    return config


def no_such_init_file(path: str | os.PathLike[str]) -> ResnetlabError:
    """The one line for an ``--init`` that is neither a named initialisation nor a file (checked early and on reading)."""
    return ResnetlabError(f"--init {path}: no such file; give default, xavier, imagenet, or a .safetensors/.pth weight file")


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON or YAML (``.yaml``/``.yml``) config file into a dict of fields."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ResnetlabError(f"--config {path}: cannot read it ({exc.strerror})") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ResnetlabError(f"--config {path}: YAML needs PyYAML; pip install pyyaml, or use JSON") from None
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ResnetlabError(f"--config {path}: not valid YAML ({first_line(exc)})") from None
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ResnetlabError(f"--config {path}: not valid JSON ({exc})") from None
    if not isinstance(values, dict):
        raise ResnetlabError(f"--config {path}: expected a mapping of config fields")
    return upgrade_recorded(values)


def upgrade_recorded(values: dict[str, Any]) -> dict[str, Any]:
    """A configuration as written by an older resnetlab, in today's terms (the same run).

    Before 2026-12-03 a run wrote ``"grad_clip": null`` for no clipping; null now means "not
    given" (the preset decides, and the ``cpu`` preset clips), and no clipping is 0.
    """
    if "grad_clip" in values and values["grad_clip"] is None:
        values = {**values, "grad_clip": 0.0}
    return values


def reference() -> str:
    """``docs/configuration.md``: every field, its flag, base default and help, generated from the declarations."""
    lines = ["# Configuration fields", "",
             "Generated from `src/resnetlab/config/fields.py` by `python -m resnetlab.config > docs/configuration.md`; a test keeps it current.",
             "Every field is a `resnetlab train` flag (but `budget_plan`), a key of `--config FILE` and of `config.json`, and a",
             "keyword of `resnetlab.train(...)`. Unset fields are decided by the preset, then the data, then the base default",
             "shown here (`src/resnetlab/config/resolve.py`).", "",
             "| field | flag | base default | what it is |", "| --- | --- | --- | --- |"]
    for name in field_names():
        m = meta(name)
        base = "" if m["base"] is None else f"`{json.dumps(m['base'])}`"
        shown = f"`{flag(name)}`" if m["flag"] else "(config file)"
        extra = " May change on `--resume`." if m["resume"] else ""
        lines.append(f"| `{name}` | {shown} | {base} | {m['help'].replace('|', '/')}.{extra} |")
    return "\n".join(lines) + "\n"
