"""One typed configuration tree, presets, and ``key=value`` overrides.

A run is configured by a preset (``configs/<name>.yaml`` inside the package) or a YAML file of the
user's, then by ``section.key=value`` overrides from the command line. Every key is declared here
with its type and, for choices, the valid values, so that a typo fails at once with the list of
valid keys instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from contrastlab.errors import UserError, warn

DatasetName = Literal["synthetic", "cifar10", "cifar100", "stl10", "imagefolder"]
AugmentName = Literal["moco_v1", "moco_v2", "none"]
Atomic = Literal["color", "rotation", "texture"]
Granularity = Literal["step", "sample", "element"]
_ATOMIC = set(get_args(Atomic))


@dataclass
class DataConfig:
    """Where the images come from and how they are loaded."""

    name: DatasetName = "synthetic"  # which dataset (see docs/datasets.md)
    path: str | None = None  # dataset root; imagefolder: the folder (see docs/datasets.md)
    download: bool = False  # torchvision datasets: download if missing (needs internet)
    image_size: int = 32  # side of the training crops
    in_memory: bool | None = None  # decoded uint8 images in RAM; None = when <= 96 px
    skip_bad_images: bool = False  # skip (and count) corrupt images instead of failing
    views: Literal["batched", "per_image"] = "batched"  # per batch on the device, or per image
    views_compile: bool = False  # batched views through torch.compile (needs a C++ compiler)
    num_workers: int = 2  # DataLoader workers: decoding large images (and per_image views)
    synthetic_train: int = 5000  # synthetic: number of training images
    synthetic_test: int = 1000  # synthetic: number of held-out images
    synthetic_seed: int = 0  # synthetic: the data set's own seed (not the training seed)
    holdout_fraction: float = 0.1  # imagefolder without a test/ split: fraction held out for kNN


@dataclass
class AugmentConfig:
    """The views of MoCo (v1 or v2 recipe); LooC uses ``looc.augmentations`` on top."""

    recipe: AugmentName = "moco_v2"  # augmentation recipe of each view
    crop_scale_min: float = 0.2  # RandomResizedCrop scale range (min, 1)
    rotation: bool = False  # random 0/90/180/270 rotation of every view ("MoCo + rotation")
    blur: bool | None = None  # None = the recipe's default (v2: yes, except at <= 64 px)
    hue: float | None = None  # hue jitter, <= 0.5 (= any hue); None = recipe's (v1 0.4, v2 0.1)
    grayscale_p: float | None = None  # probability of grayscale; None = the recipe's 0.2


@dataclass
class ModelConfig:
    backbone: Literal["resnet18", "resnet34", "resnet50"] = "resnet18"  # torchvision ResNet
    width: float = 1.0  # channel multiplier of the ResNet stages (1.0 = torchvision's widths)
    cifar_stem: bool = False  # 3x3 stride-1 first conv and no max-pool, for 32-96 px images
    head: Literal["linear", "mlp"] = "mlp"  # projection head: linear (MoCo v1) or MLP (v2)
    head_hidden: int = 2048  # hidden width of the MLP head
    dim: int = 128  # embedding dimension (queue entries have this size)
    bn_splits: int = 1  # split batch norm on one device (the CIFAR reference uses 8); 1 = plain BN
    shuffle_bn: bool = True  # shuffle keys before the key encoder: across processes under DDP, within the batch with split BN


@dataclass
class MocoConfig:
    queue_size: int = 65536  # K, negatives in the queue (any size; wraps around)
    momentum: float = 0.999  # m of the key encoder's moving average
    temperature: float = 0.2  # T of InfoNCE
    symmetric: bool = False  # also the loss with the views swapped (2x cost, faster convergence)


@dataclass
class FTConfig:
    """Feature Transformation (Zhu et al., ICCV 2021); see ``transforms/feature.py``."""

    pos: Literal["none", "extrapolate", "interpolate"] = "none"  # transformation of positive pairs
    neg: Literal["none", "interpolate"] = "none"  # transformation of the negatives
    alpha_pos: float = 2.0  # Beta(a, a) of the positive λ (extrapolation: 1 + Beta)
    alpha_neg: float = 1.6  # Beta(a, a) of the negative λ
    distribution: Literal["beta", "uniform"] = "beta"  # distribution of λ
    granularity: Literal["step", "sample", "element"] = "step"  # one λ per step, sample or element
    renormalize: bool = False  # L2-normalize the transformed features
    start_epoch: int = 0  # first epoch (0-based) with transformations
    granularity_pos: Granularity | None = None  # λ of positives; None = ft.granularity
    granularity_neg: Granularity | None = None  # λ of negatives; None = ft.granularity
    renormalize_negatives: bool = True  # with renormalize: also negatives (postmix_norm: no)


@dataclass
class LoocConfig:
    """Leave-one-out contrastive learning (Xiao et al., ICLR 2021); see ``methods/looc.py``."""

    augmentations: list[str] = field(default_factory=lambda: ["color"])  # each gets a space
    plus_plus: bool = False  # LooC++: each head owns a copy of the last backbone stage
    z0_positives: Literal["all", "k0"] = "all"  # Z_0 positives: all keys (Eq. 2) or k0


@dataclass
class OptimConfig:
    epochs: int = 200  # length of training
    batch_size: int = 256  # global batch, split over processes
    lr: float = 0.03  # for batch_size as given (no automatic scaling)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4  # SGD weight decay
    schedule: Literal["cosine", "step"] = "cosine"  # decay after warm-up
    milestones: list[int] = field(default_factory=lambda: [120, 160])  # step: x0.1 at these
    warmup_epochs: int = 0  # linear warm-up from 0


@dataclass
class TrainConfig:
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = CUDA when available
    amp: bool | None = None  # bf16 autocast; None = CUDA only (true on CPU: ~2x with AVX512-BF16)
    channels_last: bool | None = None  # None = on (NHWC: faster convolutions on CUDA and CPU)
    keep_freed_memory: bool = True  # CPU: malloc reuses freed memory (no page faults per step)
    log_every: int = 20  # steps between metric lines
    checkpoint_every: int = 10  # epochs between checkpoints (the last epoch always saves)
    keep_every: int = 0  # also keep checkpoints/epoch-NNNN.pt every N epochs (0 = never), e.g. to evaluate or analyze the encoder along training
    checkpoint_minutes: float = 30.0  # also checkpoint inside an epoch after this; 0 = off
    knn_every: int = 10  # epochs between kNN monitor runs; 0 = never
    knn_k: int = 200  # neighbours of the kNN monitor
    knn_temperature: float = 0.1  # weights exp(similarity / T) of the kNN monitor
    knn_space: str = "backbone"  # feature space of the monitor's knn_top1: backbone, z (MoCo); backbone, z0, color, ..., concat (LooC)
    knn_val_fraction: float = 0.1  # labelled training images whose kNN against the other training images chooses best.pt; 0 = no best.pt
    max_steps_per_epoch: int | None = None  # cap an epoch (smoke tests, benchmarks)
    resume: str | None = None  # "auto" = latest checkpoint in the run directory, or a path
    overwrite: bool = False  # start afresh even if the run directory already holds checkpoints
    progress: bool = True  # progress bar with loss, lr and images/s


@dataclass
class ScoresConfig:
    record: bool = True  # record pos/neg score statistics every step
    bins: int = 200  # histogram bins of pos/neg scores
    low: float = -1.0  # histogram range (values outside count in the end bins)
    high: float = 1.0  # upper end of the histogram range


@dataclass
class Config:
    method: Literal["moco", "looc"] = "moco"  # the contrastive method
    name: str = "run"  # run name: the run directory is out_dir/name
    out_dir: str = "runs"  # where run directories go
    seed: int = 0  # seeds weights, data order, augmentations and FT draws
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    moco: MocoConfig = field(default_factory=MocoConfig)
    ft: FTConfig = field(default_factory=FTConfig)
    looc: LoocConfig = field(default_factory=LoocConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scores: ScoresConfig = field(default_factory=ScoresConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


# Short names accepted on the command line, and what they stand for.
ALIASES = {"dataset": "data.name", "epochs": "optim.epochs", "batch_size": "optim.batch_size"}


# ----------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------


def preset_names() -> list[str]:
    folder = resources.files("contrastlab") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that rejects a key given twice in one mapping (YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise _DuplicateKey(
                    f"key '{key}' appears twice in one mapping (line {key_node.start_mark.line + 1}); "
                    "keep one of them"
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


class _DuplicateKey(Exception):
    pass


def _read_yaml(text: str, origin: str) -> dict:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except _DuplicateKey as e:
        raise UserError(f"{origin}: {e}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{origin} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"{origin} must hold a mapping of config keys, not {type(data).__name__}")
    return data


def _load_source(name_or_path: str, seen: tuple[str, ...] = ()) -> dict:
    """Read a preset or YAML file, following its optional ``base:`` key (another preset or file)."""
    path = Path(name_or_path)
    # A preset name wins over a folder of the same name in the working directory (runs/demo,
    # ./moco_v2 ...); a YAML file is recognized by its suffix or by being a file.
    is_file = name_or_path.endswith((".yaml", ".yml")) or path.is_file()
    if is_file or (path.exists() and name_or_path not in preset_names()):
        if path.is_dir():
            raise UserError(f"config file {name_or_path} is a folder; give a YAML file or a preset")
        if not path.is_file():
            raise UserError(f"config file {name_or_path} does not exist")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(
                f"config file {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at "
                f"offset {e.start}); save it as UTF-8"
            ) from None
        except OSError as e:
            raise UserError(f"cannot read config file {path}: {e.strerror}") from None
        data = _read_yaml(text, str(path))
    else:
        if name_or_path not in preset_names():
            raise UserError(
                f"unknown preset '{name_or_path}'{_suggest(name_or_path, preset_names())}; "
                f"valid presets: {', '.join(preset_names())} (or a path to a .yaml file)"
            )
        text = (resources.files("contrastlab") / "configs" / f"{name_or_path}.yaml").read_text()
        data = _read_yaml(text, f"preset {name_or_path}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise UserError(
            f"config {name_or_path}: 'base:' must be a preset name or the path of a YAML file, "
            f"not {base!r}"
        )
    if is_file:
        base = _resolve_base(base, path)
    if base in seen:
        raise UserError(f"config {name_or_path} has a circular 'base:' chain through {base}")
    merged = _load_source(base, seen + (name_or_path,))
    _deep_update(merged, data)
    return merged


def _resolve_base(base: str, including: Path) -> str:
    """A relative ``base:`` path in a YAML file names a file next to that file; a path relative
    to the working directory (how earlier files were written) is still accepted, and preset names
    are left alone."""
    if base in preset_names() or Path(base).is_absolute():
        return base
    beside = including.parent / base
    if beside.is_file():
        return str(beside)
    if Path(base).is_file() or not base.endswith((".yaml", ".yml")):
        return base  # a file in the working directory, or an unknown preset (reported as such)
    return str(beside)  # missing: reported with the path next to the including file


def _deep_update(target: dict, source: dict) -> None:
    for key, value in source.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


# ----------------------------------------------------------------------------------------------
# Building and validating
# ----------------------------------------------------------------------------------------------


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _number(value: Any) -> float | None:
    """``value`` as a float if it is a number or a string Python reads as one, else None.

    YAML 1.1 (PyYAML) reads ``5e-4`` and ``1e3`` as strings (it wants ``5.0e-4``); Python's
    ``float()`` reads every form a Python user writes: ``5e-4``, ``1E3``, ``.5``, ``1_000``.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a type hint, converting where the meaning is unambiguous."""
    origin = get_origin(hint)
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            valid = ", ".join(str(c) for c in choices)
            raise UserError(
                f"{key}={value!r} is not valid{_suggest(str(value), map(str, choices))}; "
                f"valid values: {valid}"
            )
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if errors else f"{key} cannot be {value!r}")
    if origin is list:
        (item,) = get_args(hint)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, item, f"{key}[]") for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, str):
            try:
                return int(value.strip())  # exact for any size; "1_000" too
            except ValueError:
                pass
        number = _number(value)
        if number is None or not math.isfinite(number) or int(number) != number:
            raise UserError(f"{key} must be {_expected(key, 'an integer')}, got {value!r}")
        return int(value) if isinstance(value, int) else int(number)
    if hint is float:
        number = _number(value)
        if number is None:
            raise UserError(f"{key} must be {_expected(key, 'a number')}, got {value!r}")
        if not math.isfinite(number):
            raise UserError(f"{key} must be {_expected(key, 'a finite number')}, got {value!r}")
        return number
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UserError(f"{key} must be {_expected(key, 'a string')}, got {value!r}")
        return str(value)
    return value


def _expected(key: str, kind: str) -> str:
    """What ``key`` accepts: its declared range (``VALID``) where it has one, else ``kind``."""
    spec = VALID.get(key)
    return spec.describe() if spec is not None else kind


def _build(cls, data: dict, prefix: str = ""):
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise UserError(
                f"unknown config key '{full}'{_suggest(full, [prefix + n for n in names])}; "
                "valid keys"
                f"{' in ' + prefix[:-1] if prefix else ''}: {', '.join(names)}"
            )
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise UserError(f"'{full}' is a section; set its keys as {full}.KEY=VALUE")
            kwargs[key] = _build(hint, value, f"{full}.")
        else:
            kwargs[key] = _coerce(value, hint, full)
    return cls(**kwargs)


def feature_spaces(cfg: Config) -> tuple[str, ...]:
    """The feature spaces the configured model offers (``model.feature_spaces`` of the method).

    MoCo: the pooled backbone output and the unit-norm projection ``z``; LooC: the backbone, one
    unit-norm space per head (``z0`` and the atomic augmentations) and, for LooC++, ``concat``.
    """
    if cfg.method == "looc":
        extra = ("concat",) if cfg.looc.plus_plus else ()
        return ("backbone", "z0", *cfg.looc.augmentations, *extra)
    return ("backbone", "z")


# ----------------------------------------------------------------------------------------------
# The valid values of every key
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """Numbers from ``low`` to ``high`` (``None``: unbounded; ``open``: the end is excluded)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def ok(self, v) -> bool:
        if not math.isfinite(v):
            return False
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return self.high is None or (v < self.high if self.high_open else v <= self.high)

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{kind} in {left}{_num(self.low)}, {_num(self.high)}{right}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {_num(self.high)}"
        return f"a finite {kind[2:] if kind.startswith('a ') else kind}"

    def bad_values(self) -> list:
        """Values just outside the range, and not-a-number for floats (for tests)."""
        step = 1 if self.integer else 0.5
        out = []
        if self.low is not None:
            out.append(self.low if self.low_open else self.low - step)
        if self.high is not None:
            out.append(self.high if self.high_open else self.high + step)
        if self.integer:
            return [int(v) for v in out]
        return [float(v) for v in out] + [float("nan"), float("inf")]


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


@dataclass(frozen=True)
class Text:
    """A string: ``kind`` says which; ``bad`` are examples that must be refused (for tests)."""

    kind: str
    bad: tuple[str, ...] = ("",)

    def ok(self, v) -> bool:
        if not isinstance(v, str) or not v.strip():
            return False
        if self.kind == "run name":
            parts = Path(v).parts
            return (
                not Path(v).is_absolute()
                and not Path(v).anchor
                and bool(parts)
                and not any(part in (".", "..") for part in parts)
                and "\\" not in v
                and v == v.strip()
            )
        return True

    def describe(self) -> str:
        if self.kind == "run name":
            return "a relative folder name inside out_dir (no '..', '.', '/' at the start or '\\')"
        return f"a non-empty {self.kind}"

    def bad_values(self) -> list:
        return list(self.bad)


@dataclass(frozen=True)
class Choices:
    """One of ``values`` (for the items of a list; single keys use a Literal type)."""

    values: tuple[str, ...]

    def ok(self, v) -> bool:
        return v in self.values

    def describe(self) -> str:
        return f"one of {', '.join(self.values)}"

    def bad_values(self) -> list:
        return ["no-such-" + self.values[0]]


@dataclass(frozen=True)
class Items:
    """A list whose items each satisfy ``item``."""

    item: Any

    def ok(self, v) -> bool:
        return all(self.item.ok(x) for x in v)

    def describe(self) -> str:
        return f"a list whose items are each {self.item.describe()}"

    def bad_values(self) -> list:
        return [[x] for x in self.item.bad_values()]


def _int(low=None, high=None) -> Range:
    return Range(low, high, integer=True)


POSITIVE = Range(0, None, low_open=True)
FRACTION = Range(0, 1)
# A softmax temperature: similarities in [-1, 1] divided by it. Below 0.001 the logits pass
# +-1000 and the loss is float rounding (1e-8 gave a "finite" loss of 41,444); above 10 the
# softmax is flat. Papers use 0.05-1.
TEMPERATURE = Range(0.001, 10)

# Every key whose type is not already a closed set of choices (a Literal or a bool) declares its
# valid values here; a test walks the whole config tree and fails on a key that is missing.
VALID: dict[str, Any] = {
    "name": Text("run name", bad=("", ".", "..", "../x", "/abs", "a/../../b")),
    "out_dir": Text("folder path"),
    "seed": _int(0, 2**32 - 1),
    "data.path": Text("folder path"),
    "data.image_size": _int(8),
    "data.num_workers": _int(0, 1024),
    "data.synthetic_train": _int(1),
    "data.synthetic_test": _int(1),
    "data.synthetic_seed": _int(0, 2**32 - 1),
    "data.holdout_fraction": Range(0, 1, high_open=True),
    "augment.crop_scale_min": Range(0, 1, low_open=True),
    "augment.hue": Range(0, 0.5),
    "augment.grayscale_p": FRACTION,
    "model.width": Range(0, 64, low_open=True),
    "model.head_hidden": _int(1),
    "model.dim": _int(1),
    "model.bn_splits": _int(1),
    "moco.queue_size": _int(1),
    "moco.momentum": FRACTION,
    "moco.temperature": TEMPERATURE,
    "ft.alpha_pos": POSITIVE,
    "ft.alpha_neg": POSITIVE,
    "ft.start_epoch": _int(0),
    "looc.augmentations": Items(Choices(tuple(sorted(_ATOMIC)))),
    "optim.epochs": _int(1),
    "optim.batch_size": _int(1),
    "optim.lr": POSITIVE,
    "optim.momentum": Range(0, 1, high_open=True),
    "optim.weight_decay": Range(0, None),
    "optim.milestones": Items(_int(1)),
    "optim.warmup_epochs": _int(0),
    "train.log_every": _int(1),
    "train.checkpoint_every": _int(1),
    "train.keep_every": _int(0),
    "train.checkpoint_minutes": Range(0, None),
    "train.knn_every": _int(0),
    "train.knn_k": _int(1),
    "train.knn_temperature": TEMPERATURE,
    "train.knn_space": Text("feature space (checked against the model's spaces)"),
    "train.knn_val_fraction": Range(0, 1, high_open=True),
    "train.max_steps_per_epoch": _int(1),
    "train.resume": Text("checkpoint path or 'auto'"),
    "scores.bins": _int(1, 100_000),
    "scores.low": Range(),
    "scores.high": Range(),
}


def declared_choices(hint: Any) -> bool:
    """True when a type hint is itself a closed set of values (Literal, bool, optionally None)."""
    if get_origin(hint) in (typing.Union, types.UnionType):
        return all(a is type(None) or declared_choices(a) for a in get_args(hint))
    return hint is bool or get_origin(hint) is Literal


def key_hints() -> dict[str, Any]:
    """{dotted key: type hint} for every key of the config tree."""
    out = {}

    def walk(cls, prefix: str) -> None:
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")
            else:
                out[f"{prefix}{f.name}"] = hints[f.name]

    walk(Config, "")
    return out


def get_dotted(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _check_ranges(cfg: Config) -> None:
    for key, spec in VALID.items():
        value = get_dotted(cfg, key)
        if value is None:
            continue
        if not spec.ok(value):
            raise UserError(f"{key} must be {spec.describe()}, got {value!r}")


def _validate(cfg: Config) -> None:
    _check_ranges(cfg)
    if cfg.optim.batch_size % cfg.model.bn_splits:
        raise UserError(
            f"optim.batch_size ({cfg.optim.batch_size}) must be divisible by model.bn_splits "
            f"({cfg.model.bn_splits}) so that every split-BN chunk has the same size"
        )
    if cfg.method == "looc" and not cfg.looc.augmentations:
        raise UserError(
            "looc.augmentations is empty; name at least one of color, rotation, texture"
        )
    if len(set(cfg.looc.augmentations)) != len(cfg.looc.augmentations):
        raise UserError(f"looc.augmentations lists an augmentation twice: {cfg.looc.augmentations}")
    if cfg.scores.low >= cfg.scores.high:
        raise UserError("scores.low must be smaller than scores.high")
    spaces = feature_spaces(cfg)
    if cfg.train.knn_space not in spaces:
        raise UserError(
            f"train.knn_space={cfg.train.knn_space!r} is not a feature space of this "
            f"{cfg.method} model{_suggest(cfg.train.knn_space, spaces)}; valid: {', '.join(spaces)}"
        )
    if cfg.data.name == "imagefolder" and not cfg.data.path:
        raise UserError(
            "dataset=imagefolder needs data.path=DIR (a folder of images or class folders)"
        )
    if cfg.data.views_compile and cfg.data.views != "batched":
        raise UserError(
            "data.views_compile=true compiles batched views; it needs data.views=batched "
            f"(got data.views={cfg.data.views})"
        )


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise UserError(f"override '{text}' must look like key=value (e.g. optim.lr=0.1)")
    key, raw = text.split("=", 1)
    key = ALIASES.get(key.strip(), key.strip())
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key, value


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"'{dotted}': '{part}' is not a section")
    node[parts[-1]] = value


def warn_repeated_keys(overrides: list[str] | tuple[str, ...]) -> None:
    """One warning line per key given twice with different values (the last one is used).

    Called by the command line, where a repeat is a likely mistake; scripts that extend a base
    list of overrides rely on the last value winning and get no warning from ``load_config``."""
    seen: dict[str, Any] = {}
    for text in overrides:
        if "=" not in text:
            continue
        key, value = parse_override(text)
        if key in seen and seen[key] != value:
            warn(f"{key} is given twice ({seen[key]!r}, then {value!r}); the last one is used")
        seen[key] = value


def load_config(source: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a validated ``Config`` from a preset name or YAML path plus ``key=value`` overrides."""
    data = _load_source(source) if source else {}
    given: dict[str, Any] = {}
    for text in overrides:
        key, value = parse_override(text)
        given[key] = value
        _set_dotted(data, key, value)
    cfg = _build(Config, data)
    _validate(cfg)
    unused = [k for k in given if k.startswith("looc.")] if cfg.method != "looc" else []
    if unused:  # a LooC setting on a MoCo run would be silently ignored
        raise UserError(
            f"{', '.join(unused)} only apply to method=looc, and this run is method={cfg.method}; "
            "start from a LooC preset (contrastlab presets) or add method=looc"
        )
    return cfg


def config_from_dict(data: dict) -> Config:
    """Rebuild a config saved in a run directory or a checkpoint."""
    cfg = _build(Config, data)
    _validate(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: Path) -> None:
    from contrastlab.atomic import write_text

    write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def all_keys() -> list[tuple[str, str, Any]]:
    """(dotted key, type, default) for every key: the reference table in docs/config.md."""
    out = []

    def walk(cls, prefix: str) -> None:
        hints = get_type_hints(cls)
        default = cls()
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if dataclasses.is_dataclass(hint):
                walk(hint, f"{prefix}{f.name}.")
            else:
                out.append((f"{prefix}{f.name}", _type_name(hint), getattr(default, f.name)))

    walk(Config, "")
    return out


def _type_name(hint: Any) -> str:
    origin = get_origin(hint)
    if origin is Literal:
        return " | ".join(str(a) for a in get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(hint)).replace("NoneType", "null")
    if origin is list:
        return f"list[{_type_name(get_args(hint)[0])}]"
    return getattr(hint, "__name__", str(hint))


def reference_markdown() -> str:
    """The table of every key in docs/config.md, with each field's trailing comment as its meaning.

    A test keeps docs/config.md equal to this, so the reference cannot drift from the code.
    """
    import inspect

    hints = get_type_hints(Config)
    sections = [("", Config)] + [
        (f.name, hints[f.name])
        for f in dataclasses.fields(Config)
        if dataclasses.is_dataclass(hints[f.name])
    ]
    comments = {}
    for prefix, cls in sections:
        for line in inspect.getsource(cls).splitlines():
            body = line[4:]
            if (
                line.startswith("    ")
                and not body.startswith((" ", "#", '"'))
                and ":" in body
                and "#" in body
            ):
                key = body.split(":", 1)[0]
                comments[f"{prefix}.{key}" if prefix else key] = body.split("#", 1)[1].strip()
    rows = ["| key | type | default | valid values | meaning |", "|---|---|---|---|---|"]
    for key, type_name, default in all_keys():
        shown = "null" if default is None else yaml.safe_dump(default, default_flow_style=True)
        shown = shown.strip().removesuffix("...").strip()
        valid = VALID[key].describe() if key in VALID else "see type"
        rows.append(
            f"| `{key}` | {type_name.replace(' | ', ' or ')} | `{shown}` | {valid} "
            f"| {comments.get(key, '')} |"
        )
    return "\n".join(rows) + "\n"
