"""One typed configuration tree, presets, and ``key=value`` overrides.

A run is configured by a preset (``configs/<name>.yaml`` inside the package) or a YAML file of the
user's, then by ``section.key=value`` overrides from the command line. Every key is declared here
with its type and, for choices, the valid values, so that a typo fails at once with the list of
valid keys instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import math
import numbers
import os
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
    path: str | None = None  # root folder; null: ./data (cifar10/100, stl10); imagefolder needs it
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
    start_epoch: int = 0  # first epoch with transformations, from 0: N = the printed epoch N+1
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
    channels_last: bool | None = None  # None = NHWC on CUDA and AVX-512 CPUs, NCHW elsewhere
    keep_freed_memory: bool = True  # CPU: malloc reuses freed memory (no page faults per step)
    threads: int | None = None  # CPU threads per process; None = torch's default (1 per core)
    log_every: int = 20  # steps between metric lines
    checkpoint_every: int = 10  # epochs between checkpoints (the last epoch always saves)
    keep_every: int = 0  # also keep checkpoints/epoch-NNNN.pt every N epochs (0 = never), e.g. to evaluate or analyze the encoder along training
    checkpoint_minutes: float = 30.0  # also checkpoint inside an epoch after this; 0 = off
    knn_every: int = 10  # epochs between kNN monitor runs; 0 = never
    knn_k: int = 200  # neighbours of the kNN monitor
    knn_temperature: float = 0.1  # weights exp(similarity / T) of the kNN monitor
    knn_space: str = "backbone"  # feature space of the monitor's knn_top1: backbone, z (MoCo); backbone, z0, color, ..., concat (LooC)
    knn_val_fraction: float = 0.1  # labelled training images (>= 1 per class of 2+) whose kNN vs the rest picks best.pt; 0 = no best.pt
    max_steps_per_epoch: int | None = None  # cap an epoch (smoke tests, benchmarks)
    resume: str | None = None  # "auto" = latest checkpoint in the run directory, or a path
    overwrite: bool = False  # start afresh even if the run directory already holds checkpoints
    progress: bool = True  # progress bar with loss, lr and images/s (on a terminal)


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
        return Path(self.out_dir).expanduser() / self.name  # ~ as the shell would expand it


# Short names accepted on the command line, and what they stand for.
ALIASES = {"dataset": "data.name", "epochs": "optim.epochs", "batch_size": "optim.batch_size"}

# The sections of the tree (data, augment, model ...): each a mapping of its own keys.
_SECTIONS = frozenset(
    f.name for f in dataclasses.fields(Config) if dataclasses.is_dataclass(f.default_factory)
)


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
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # ``<<: *anchor``: the base class merges it; keys given here win
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


def yaml_problem(error: yaml.YAMLError) -> str:
    """What the YAML parser found and where (1-based line and column), with what it was
    parsing at the time: "line 3, column 6: expected ',' or ']', but got ':' (while parsing a
    flow sequence that starts at line 2, column 7)"."""
    if not isinstance(error, yaml.MarkedYAMLError) or error.problem_mark is None:
        return str(error).splitlines()[0]
    mark = error.problem_mark
    said = f"line {mark.line + 1}, column {mark.column + 1}: {error.problem}"
    if error.context:
        start = error.context_mark
        if start is not None and (start.line, start.column) != (mark.line, mark.column):
            said += f" ({error.context} that starts at line {start.line + 1}, column "
            said += f"{start.column + 1})"
        else:
            said += f" ({error.context})"
    return said


def _read_yaml(text: str, origin: str) -> dict:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as e:
        raise UserError(f"{origin}: {e}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{origin} is not valid YAML: {yaml_problem(e)}") from None
    if data is None:  # empty, or only comments: the defaults would train without a word
        raise UserError(
            f"{origin} holds no settings (it is empty or only comments); write KEY: VALUE "
            "settings in it (e.g. base: demo), or leave --config out to use the defaults"
        )
    if not isinstance(data, dict):
        raise UserError(f"{origin} must hold a mapping of config keys, not {type(data).__name__}")
    misread = next(_misread(yaml.compose(text, Loader=yaml.SafeLoader)), None)
    if misread is not None:
        node, problem = misread
        raise UserError(f"{origin}, line {node.start_mark.line + 1}: {problem}")
    return data


_TAG = "tag:yaml.org,2002:"


def _pairs(node: yaml.MappingNode) -> dict[str, yaml.Node]:
    """{key: value node} of a YAML mapping as it is read: ``<<: *anchor`` merged in, the
    mapping's own keys winning."""
    own = {str(k.value): v for k, v in node.value if k.tag != _TAG + "merge"}
    for k, v in node.value:
        if k.tag == _TAG + "merge":
            for merged in v.value if isinstance(v, yaml.SequenceNode) else [v]:
                if isinstance(merged, yaml.MappingNode):
                    for name, sub in _pairs(merged).items():
                        own.setdefault(name, sub)
    return own


def _misread(node: yaml.Node, key: str = ""):
    """(node, one-line problem) for each plain YAML value under ``node`` (the value of the dotted
    ``key``; "" for a whole file) whose YAML 1.1 reading is not what the key takes as written."""
    if isinstance(node, yaml.MappingNode) and (not key or key in _SECTIONS):
        for name, value in _pairs(node).items():
            yield from _misread(value, f"{key}.{name}" if key else name)
        return
    hint = key_hints().get(key)
    if get_origin(hint) is list and isinstance(node, yaml.SequenceNode):
        (item,) = get_args(hint)
        for i, value in enumerate(node.value):
            problem = _misread_scalar(value, f"{key}[{i}]", item)
            if problem:
                yield value, problem
        return
    problem = _misread_scalar(node, key, hint)
    if problem:
        yield node, problem


# Text keys that are paths, where ~ starts the home folder.
PATH_KEYS = ("out_dir", "data.path", "train.resume")


def _misread_scalar(node: yaml.Node, key: str, hint: Any) -> str | None:
    """What is wrong with a plain (unquoted) YAML scalar for a key of type ``hint``, or None.

    A text key written as something YAML 1.1 reads as a number, boolean, date or null: ``name:
    2024``, ``name: yes`` (yes/no/on/off are booleans), ``out_dir: ~`` (null, not the home folder).
    A number in a form that Python's int()/float() reads otherwise or not at all: ``010`` (octal 8
    to YAML 1.1, 10 to Python), ``0x10``, ``0b11``, ``1:30`` (base 60: 90)."""
    if not isinstance(node, yaml.ScalarNode) or node.style is not None:
        return None  # quoted (or a block scalar): text as written
    raw, tag = node.value, node.tag.removeprefix(_TAG)
    if _text_kind(key) is not None:
        what = {"int": "a number", "float": "a number", "timestamp": "a date"}.get(tag)
        if tag == "bool":
            boolean = str(yaml.safe_load(raw)).lower()
            what = f"the boolean {boolean} (YAML 1.1 takes yes, no, on and off as booleans)"
        if tag == "null" and raw == "~":
            # ~ is the home folder only to a path; null is a choice only where the key takes it
            quote = "quote it for the home folder: '~'" if key in PATH_KEYS else "quote it: '~'"
            if _text_kind(key) == "optional":
                return f"{key} is text, but YAML reads ~ alone as null; write null for no value, or {quote}"
            return f"{key} is text, but YAML reads ~ alone as null, which {key} cannot be; {quote}"
        if what:
            return f"{key} is text, but YAML reads {raw} as {what}; quote it: '{raw}'"
        return None
    if hint not in (int, float) and not (
        get_origin(hint) in (typing.Union, types.UnionType) and set(get_args(hint)) & {int, float}
    ):
        return None
    if tag not in ("int", "float"):
        return None
    value = yaml.safe_load(raw)
    if not math.isfinite(value):
        return None  # .inf, .nan: the range check refuses them as not finite
    try:
        python = int(raw) if tag == "int" else float(raw)
    except ValueError:
        return (
            f"{key}: YAML 1.1 reads {raw} as {value}, a form Python's int() and float() do not "
            f"read; write {value}"
        )
    if python != value:
        return (
            f"{key}: YAML 1.1 reads {raw} as the octal number {value} (a leading 0), Python as "
            f"{python}; write the number you mean without the leading 0"
        )
    return None


def _key_lines(text: str) -> dict[str, int]:
    """{dotted key: 1-based line} of the keys of a YAML text (sections' keys as section.key)."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    lines: dict[str, int] = {}
    if not isinstance(root, yaml.MappingNode):
        return lines
    for key_node, value_node in root.value:
        key = str(key_node.value)
        lines[key] = key_node.start_mark.line + 1
        if isinstance(value_node, yaml.MappingNode):
            for sub_node, _ in value_node.value:
                lines[f"{key}.{sub_node.value}"] = sub_node.start_mark.line + 1
    return lines


def config_source(name_or_path: str) -> tuple[bool, str, str]:
    """What ``--config NAME_OR_PATH`` names: (is a YAML file, identity, name to show). A file's
    identity is its resolved path (``a.yaml`` and ``./a.yaml`` are one file), a preset's
    ``preset NAME``. A preset name wins over a folder of the same name in the working directory
    (runs/demo, ./moco_v2 ...); a YAML file is recognized by its suffix or by being a file."""
    name_or_path = os.path.expanduser(name_or_path)
    path = Path(name_or_path)
    is_file = name_or_path.endswith((".yaml", ".yml")) or path.is_file()
    is_file = is_file or (path.exists() and name_or_path not in preset_names())
    if is_file:
        return True, str(path.resolve()), os.path.normpath(name_or_path)
    return False, f"preset {name_or_path}", name_or_path


def _load_source(
    name_or_path: str,
    chain: tuple[tuple[str, str], ...] = (),
    file_keys: set[str] | None = None,
    origins: dict[str, str] | None = None,
) -> dict:
    """Read a preset or YAML file, following its optional ``base:`` key (another preset or file).

    ``chain`` holds (identity, shown name) of the sources that led here: a file's identity is its
    resolved path, so that ``base: ../x/loop.yaml`` inside x/loop.yaml is caught as a cycle
    instead of growing the path until the file system refuses it. The dotted keys that YAML files
    (not presets) set are added to ``file_keys``: the user's own settings, and to ``origins`` with
    where the value in effect was written ("FILE, line N"), for errors about them.
    """
    if not name_or_path.strip():
        raise UserError(
            "the config name is empty (--config ''); give a preset name (contrastlab presets) "
            "or the path of a YAML file, or leave --config out to use the defaults"
        )
    name_or_path = os.path.expanduser(name_or_path)  # load_config("~/x.yaml") from Python
    path = Path(name_or_path)
    is_file, identity, shown = config_source(name_or_path)
    if identity in (i for i, _ in chain):
        names = [s for _, s in chain] + [shown]
        raise UserError(
            f"circular 'base:' chain: {' -> '.join(names)}; make one of these files start from a "
            "preset or another file"
        )
    chain = chain + ((identity, shown),)
    if is_file:
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
        origin = str(path)
        data = _read_yaml(text, origin)
    else:
        if name_or_path not in preset_names():
            raise UserError(
                f"unknown preset '{name_or_path}'{suggest(name_or_path, preset_names())}; "
                f"valid presets: {', '.join(preset_names())} (or a path to a .yaml file)"
            )
        text = (resources.files("contrastlab") / "configs" / f"{name_or_path}.yaml").read_text()
        origin = f"preset {name_or_path}"
        data = _read_yaml(text, origin)
    _check_sections(data, origin)
    base = data.pop("base", None)
    if is_file and file_keys is not None:
        for key, value in data.items():
            if isinstance(value, dict) and key in _SECTIONS:
                file_keys.update(f"{key}.{k}" for k in value)
            else:
                file_keys.add(key)
    if is_file and origins is not None:  # after the base's keys: this file's values win
        lines = {k: f"{origin}, line {n}" for k, n in _key_lines(text).items() if k != "base"}
    else:
        lines = {}
    if base is None:
        if origins is not None:
            origins.update(lines)
        return data
    if not isinstance(base, str) or not base.strip():
        raise UserError(
            f"config {name_or_path}: 'base:' must be a preset name or the path of a YAML file, "
            f"not {_show(base)}"
        )
    if is_file:
        base = _resolve_base(base, path)
    merged = _load_source(base, chain, file_keys, origins)
    _deep_update(merged, data)
    if origins is not None:
        origins.update(lines)
    return merged


def _check_sections(data: dict, origin: str) -> None:
    """A section (``optim:``, ``data:`` ...) of a YAML file must be a mapping of its keys."""
    for key, value in data.items():
        if key in _SECTIONS and not isinstance(value, dict):
            raise UserError(
                f"in {origin}: '{key}' must be a section of KEY: VALUE settings, got "
                f"{_kind(value)}; write it as {key}: {{KEY: VALUE, ...}} or one KEY: VALUE per "
                "indented line"
            )


def _kind(value: Any) -> str:
    """What a YAML value is, in words (for errors)."""
    if value is None:
        return "null (an empty section)"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the text {value!r}"
    return _show(value)


def _show(value: Any) -> str:
    """A value as the user wrote it, for errors: text quoted, everything else as YAML writes it
    (a date read from a YAML file shows as 2024-01-01, not datetime.date(2024, 1, 1))."""
    if _is_numpy(value):  # numpy.float64(32.5) would read as 32.5: say its type
        return f"{value.item()!r} (numpy.{type(value).__name__})"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    try:
        shown = yaml.safe_dump(value, default_flow_style=True, width=10**9)
    except yaml.YAMLError:
        return str(value)
    shown = shown.strip().removesuffix("...").strip()
    if isinstance(value, (datetime.date, datetime.datetime)):
        shown += " (YAML reads it as a date; quote it to keep it as text)"
    return shown


def _resolve_base(base: str, including: Path) -> str:
    """A relative ``base:`` path in a YAML file names a file next to that file; a path relative
    to the working directory (how earlier files were written) is still accepted, and preset names
    are left alone. ``~`` and ``~user`` start the home folder, as in every other path."""
    base = os.path.expanduser(base)
    if base in preset_names() or Path(base).is_absolute():
        return base
    beside = including.parent / base
    if beside.is_file():
        return str(beside)
    if Path(base).is_file() or not base.endswith((".yaml", ".yml")):
        return base  # a file in the working directory, or an unknown preset (reported as such)
    raise UserError(
        f"config file {including}: base: {base} not found; looked next to it ({beside}) and in "
        f"the working directory ({Path.cwd() / base}); a relative base: path is read from the "
        "folder of the file that names it"
    )


def _deep_update(target: dict, source: dict) -> None:
    for key, value in source.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


# ----------------------------------------------------------------------------------------------
# Building and validating
# ----------------------------------------------------------------------------------------------


def suggest(word: str, choices, prefix: str = "") -> str:
    """`` (did you mean 'X'?)`` for the choice closest to a mistyped ``word`` (a config key or
    value, a preset, a command-line flag), or ``""`` when none is close. A ``prefix`` that all
    of them share (``--`` of flags) is left out of the comparison, where it makes any two alike."""
    names = [c.removeprefix(prefix) for c in choices]
    close = difflib.get_close_matches(word.removeprefix(prefix), names, n=1)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def _number(value: Any) -> float | None:
    """``value`` as a float if it is a number or a string Python reads as one, else None.

    YAML 1.1 (PyYAML) reads ``5e-4`` and ``1e3`` as strings (it wants ``5.0e-4``); Python's
    ``float()`` reads every form a Python user writes: ``5e-4``, ``1E3``, ``.5``, ``1_000``.
    """
    if isinstance(value, bool):
        return None
    if _is_numpy(value) and isinstance(value, numbers.Real):
        return float(str(value))  # numpy.float32(0.1) means 0.1, not 0.10000000149011612
    if isinstance(value, numbers.Real):
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
                f"{key}={_show(value)} is not valid{suggest(str(value), map(str, choices))}; "
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
        raise UserError(errors[0] if errors else f"{key} cannot be {_show(value)}")
    if origin is list:
        (item,) = get_args(hint)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key} must be a list, got {_show(value)}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool) or _is_numpy_bool(value):
            return bool(value)
        raise UserError(f"{key} must be true or false, got {_show(value)}")
    if hint is int:
        if isinstance(value, str):
            try:
                return int(value.strip())  # exact for any size; "1_000" too
            except ValueError:
                pass
        number = _number(value)
        if number is None or not math.isfinite(number) or int(number) != number:
            raise UserError(f"{key} must be {_expected(key, 'an integer')}, got {_show(value)}")
        return int(value) if isinstance(value, numbers.Integral) else int(number)
    if hint is float:
        number = _number(value)
        if number is None:
            raise UserError(f"{key} must be {_expected(key, 'a number')}, got {_show(value)}")
        if not math.isfinite(number):
            raise UserError(
                f"{key} must be {_expected(key, 'a finite number')}, got {_show(value)}"
            )
        return number
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UserError(f"{key} must be {_expected(key, 'a string')}, got {_show(value)}")
        return str(value)
    return value


def _expected(key: str, kind: str) -> str:
    """What ``key`` accepts: its declared range (``VALID``) where it has one, else ``kind``; for
    an item of a list (``optim.milestones[1]``), the range of the list's items."""
    spec = VALID.get(key)
    if spec is None and key.endswith("]"):
        spec = getattr(VALID.get(key[: key.rindex("[")]), "item", None)
    return spec.describe() if spec is not None else kind


def _located(message: str, key: str, origins: dict[str, str] | None) -> UserError:
    """The error about ``key``, headed by the file and line that set it where a YAML file did
    (``origins``, from ``_load_source``): in a ``base:`` chain, which file to fix."""
    where = (origins or {}).get(key)
    return UserError(f"{where}: {message}" if where else message)


def _placed_elsewhere(key: str, prefix: str) -> list[str]:
    """Where a key that is not under ``prefix`` is: the top-level key (``train.out_dir`` ->
    ``out_dir``), or the section's keys of that name (``log_every`` -> ``train.log_every``,
    ``train.lr`` -> ``optim.lr``), or what a command-line shortcut stands for (``dataset`` ->
    ``data.name``)."""
    hints = get_type_hints(Config)
    found = [ALIASES[key]] if key in ALIASES else []
    for f in dataclasses.fields(Config):
        section = hints[f.name]
        if dataclasses.is_dataclass(section):
            keys = {g.name for g in dataclasses.fields(section)}
            if key in keys and f"{f.name}." != prefix and f"{f.name}.{key}" not in found:
                found.append(f"{f.name}.{key}")
        elif f.name == key and prefix:
            found.append(key)
    return found


def _build(cls, data: dict, prefix: str = "", origins: dict[str, str] | None = None):
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            elsewhere = _placed_elsewhere(key, prefix)
            advice = (
                f" (did you mean {' or '.join(repr(k) for k in elsewhere)}?)"
                if elsewhere
                else suggest(full, [prefix + n for n in names])
            )
            raise _located(
                f"unknown config key '{full}'{advice}; "
                "valid keys"
                f"{' in ' + prefix[:-1] if prefix else ''}: {', '.join(names)}",
                full,
                origins,
            )
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise UserError(
                    f"'{full}' is a section; set its keys as {full}.KEY=VALUE or "
                    f"'{full}={{KEY: VALUE, ...}}'"
                )
            kwargs[key] = _build(hint, value, f"{full}.", origins)
        else:
            try:
                kwargs[key] = _coerce(value, hint, full)
            except UserError as e:
                raise _located(str(e), full, origins) from None
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

# Upper ends of sizes that would otherwise fail deep inside PyTorch with a memory traceback
# (inside the documented range "an integer >= 1" before): each is far above any published setting.
MAX_IMAGE_SIZE = 4096  # 8x ImageNet's 224-512 px crops; a batch of 4096 px crops fills any GPU
MAX_QUEUE = 2**22  # 4M negatives, 64x MoCo's 65536 (the queue is dim x K floats on the device)
MAX_FEATURES = 65536  # head_hidden, dim: 32x MoCo v2's 2048-wide head; a 1e9-wide layer is 4 GB+
MAX_SYNTHETIC = 1_000_000  # synthetic images are rendered up front into memory (3 KB each at 32 px)
MAX_WIDTH_FACTOR = 16  # model.width: 16x ResNet's channels is 256x its convolution weights and cost

# Every key whose type is not already a closed set of choices (a Literal or a bool) declares its
# valid values here; a test walks the whole config tree and fails on a key that is missing.
VALID: dict[str, Any] = {
    "name": Text("run name", bad=("", ".", "..", "../x", "/abs", "a/../../b")),
    "out_dir": Text("folder path"),
    "seed": _int(0, 2**32 - 1),
    "data.path": Text("folder path"),
    "data.image_size": _int(8, MAX_IMAGE_SIZE),
    "data.num_workers": _int(0, 1024),
    "data.synthetic_train": _int(1, MAX_SYNTHETIC),
    "data.synthetic_test": _int(1, MAX_SYNTHETIC),
    "data.synthetic_seed": _int(0, 2**32 - 1),
    "data.holdout_fraction": Range(0, 1, high_open=True),
    "augment.crop_scale_min": Range(0, 1, low_open=True),
    "augment.hue": Range(0, 0.5),
    "augment.grayscale_p": FRACTION,
    "model.width": Range(0, MAX_WIDTH_FACTOR, low_open=True),
    "model.head_hidden": _int(1, MAX_FEATURES),
    "model.dim": _int(1, MAX_FEATURES),
    "model.bn_splits": _int(1),
    "moco.queue_size": _int(1, MAX_QUEUE),
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
    "train.threads": _int(1, 1024),
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


def _check_ranges(cfg: Any, origins: dict[str, str] | None = None, section: str = "") -> None:
    """Every value of ``VALID`` in its range: of a whole ``Config``, or with ``section``
    ("augment") of that section alone."""
    prefix = f"{section}." if section else ""
    for key, spec in VALID.items():
        if not key.startswith(prefix):
            continue
        value = get_dotted(cfg, key.removeprefix(prefix))
        if value is None:
            continue
        if not spec.ok(value):
            where = ""
            if isinstance(spec, Items):  # which item: optim.milestones[1]=0, 'colour'
                i, wrong = next((i, x) for i, x in enumerate(value) if not spec.item.ok(x))
                where = f": {key}[{i}] is {wrong!r}"
                if isinstance(spec.item, Choices):
                    where += suggest(str(wrong), spec.item.values)
            raise _located(f"{key} must be {spec.describe()}, got {value!r}{where}", key, origins)


def _validate(
    cfg: Config, need_data_path: bool = True, origins: dict[str, str] | None = None
) -> None:
    """Every value in its range, and the keys consistent; ``origins`` names the file and line of
    a single bad key that a YAML file set."""
    _check_ranges(cfg, origins)
    if cfg.optim.batch_size % cfg.model.bn_splits:
        raise UserError(
            f"optim.batch_size ({cfg.optim.batch_size}) must be divisible by model.bn_splits "
            f"({cfg.model.bn_splits}) so that every split-BN chunk has the same size"
        )
    if cfg.optim.batch_size // cfg.model.bn_splits < 2:
        # batch norm divides by the variance of each group: one sample has none, and PyTorch
        # stops in the first step ("Expected more than 1 value per channel"); the trainer checks
        # the per-process batch under torchrun the same way
        raise UserError(
            f"optim.batch_size={cfg.optim.batch_size} with model.bn_splits={cfg.model.bn_splits} "
            f"gives batch norm {cfg.optim.batch_size // cfg.model.bn_splits} sample per group; it "
            "needs at least 2: raise optim.batch_size to at least "
            f"{2 * cfg.model.bn_splits} or lower model.bn_splits"
        )
    if cfg.data.name == "synthetic" and cfg.data.image_size < SYNTHETIC_MIN_SIZE:
        raise UserError(
            f"data.image_size={cfg.data.image_size} is too small for the synthetic dataset, whose "
            f"glyphs need at least {SYNTHETIC_MIN_SIZE} px; use data.image_size >= "
            f"{SYNTHETIC_MIN_SIZE} (32 is its default)"
        )
    if cfg.method == "looc" and not cfg.looc.augmentations:
        raise _located(
            "looc.augmentations is empty; name at least one of color, rotation, texture",
            "looc.augmentations",
            origins,
        )
    if cfg.method == "looc" and cfg.moco.symmetric:
        raise _located(
            "moco.symmetric=true is not defined for LooC (the keys k_i are tied to the "
            "query view); set moco.symmetric=false",
            "moco.symmetric",
            origins,
        )
    if cfg.train.resume is not None and cfg.train.overwrite:
        # resume would win in silence: a run meant to start afresh would continue the old one
        raise UserError(
            f"train.resume={cfg.train.resume} and train.overwrite=true contradict each other: "
            "resume continues the run's training, overwrite clears the run directory and "
            "starts again; keep one of them"
        )
    if len(set(cfg.looc.augmentations)) != len(cfg.looc.augmentations):
        raise _located(
            f"looc.augmentations lists an augmentation twice: {cfg.looc.augmentations}",
            "looc.augmentations",
            origins,
        )
    if cfg.scores.low >= cfg.scores.high:
        raise UserError("scores.low must be smaller than scores.high")
    spaces = feature_spaces(cfg)
    if cfg.train.knn_space not in spaces:
        raise _located(
            f"train.knn_space={cfg.train.knn_space!r} is not a feature space of this "
            f"{cfg.method} model{suggest(cfg.train.knn_space, spaces)}; valid: {', '.join(spaces)}",
            "train.knn_space",
            origins,
        )
    if cfg.data.name == "imagefolder" and not cfg.data.path and need_data_path:
        raise UserError(
            "dataset=imagefolder needs data.path=DIR (a folder of images or class folders)"
        )
    if cfg.data.views_compile and cfg.data.views != "batched":
        raise UserError(
            "data.views_compile=true compiles batched views; it needs data.views=batched "
            f"(got data.views={cfg.data.views})"
        )


def check_milestones(cfg: Config, origins: dict[str, str] | None = None) -> None:
    """``optim.milestones`` in increasing order, each epoch once; else a one-line ``UserError``.

    The step schedule counts the milestones passed, so [160, 120] is [120, 160] and [120, 120]
    divides the learning rate by 100 at epoch 120: a typo either way. Only a new training is
    checked (``load_config``, and ``train`` where the run does not continue a checkpoint with
    the same milestones): a run trained with such milestones is still read, evaluated and resumed
    as it was trained."""
    given = cfg.optim.milestones
    if given != sorted(set(given)):
        raise _located(
            f"optim.milestones={given} must list each epoch once, in increasing order; write "
            f"{sorted(set(given))}",
            "optim.milestones",
            origins,
        )


# data.synthetic.make_synthetic draws its glyphs at 16 px and up (the documented range of
# data.image_size, >= 8, is that of the other datasets); it checks against this same constant
SYNTHETIC_MIN_SIZE = 16


def _text_kind(key: str) -> str | None:
    """'str' or 'optional' for keys whose value is text (str, or str | None), else None."""
    hint = key_hints().get(key)
    if hint is str:
        return "str"
    if get_origin(hint) in (typing.Union, types.UnionType) and set(get_args(hint)) == {
        str,
        type(None),
    }:
        return "optional"
    return None


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value``: the value read as YAML, except for text keys (run name, paths ...), which
    keep the text as typed: name=2024-01-01 is not a date, name=010 not the octal 8, name=0.10
    not 0.1; in YAML quotes (name="'x'") the text inside them. A text key that may be null takes
    null or nothing for null (~ stays the home folder). A number that YAML 1.1 reads otherwise
    than Python (optim.epochs=010, 0x10) is a ``UserError``, as in a YAML file."""
    if "=" not in text:
        raise UserError(f"override '{text}' must look like key=value (e.g. optim.lr=0.1)")
    key, raw = text.split("=", 1)
    key = ALIASES.get(key.strip(), key.strip())
    kind = _text_kind(key)
    if kind is not None and len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return key, _unquoted(raw)  # name="'2024'": quoted as in a YAML file, the text inside
    if kind == "str":
        if raw == "":
            _refuse_empty(key)
        return key, raw
    if kind == "optional":
        return key, None if raw in ("", "null", "Null", "NULL") else raw
    if not raw.strip():
        _refuse_empty(key)
    try:
        node = yaml.compose(raw, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return key, raw
    misread = next(_misread(node, key), None) if node is not None else None
    if misread is not None:
        raise UserError(misread[1])
    return key, yaml.safe_load(raw) if raw != "" else None


def _refuse_empty(key: str) -> None:
    """``key=`` with nothing after it, for a key that does not take null: one line with what the
    key takes (YAML would read the empty text as null, and the error said "got null", which was
    not typed). Keys that take null read ``key=`` as null; unknown keys are left to the check
    that names them."""
    hint = key_hints().get(key)
    if hint is None or (
        get_origin(hint) in (typing.Union, types.UnionType) and type(None) in get_args(hint)
    ):
        return
    if get_origin(hint) is Literal:
        takes = "one of " + ", ".join(str(c) for c in get_args(hint))
    elif hint is bool:
        takes = "true or false"
    elif get_origin(hint) is list:
        takes = "a list, e.g. [a, b] or a,b"
    else:
        takes = _expected(key, "a value")
    raise UserError(f"{key}= has no value; give {takes}")


def _unquoted(raw: str) -> str:
    """The text inside YAML quotes (``'it''s'`` -> ``it's``); ``raw`` as typed if it is not one
    quoted YAML string."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return value if isinstance(value, str) else raw


def _dotted_items(key: str, value: Any) -> list[tuple[str, Any]]:
    """The (dotted key, value) pairs one override sets: a mapping for a whole section
    (``optim={lr: 0.1}``) sets each of its keys and leaves the section's others as they were, as
    that section of a YAML file does over its ``base:``."""
    if key in _SECTIONS and isinstance(value, dict):
        return [(f"{key}.{k}", v) for k, v in value.items()]
    return [(key, value)]


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
        for key, value in _dotted_items(*parse_override(text)):
            if key in seen and seen[key] != value:
                warn(f"{key} is given twice ({seen[key]!r}, then {value!r}); the last one is used")
            seen[key] = value


def load_config(
    source: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    warn_unused: bool = False,
    need_data_path: bool = True,
) -> Config:
    """Build a validated ``Config`` from a preset name or YAML path plus ``key=value`` overrides.

    ``looc.*`` overrides on a run whose method is not LooC are refused: they would have no
    effect. ``warn_unused`` (the command line) adds one warning line per other setting of the
    user's (an override, or a key of a YAML file other than a preset) that has no effect.
    ``need_data_path=False`` lets an image-folder config without ``data.path`` through (to be
    shown; training refuses it).
    """
    file_keys: set[str] = set()
    origins: dict[str, str] = {}  # where a YAML file set a key: "FILE, line N"
    data = _load_source(source, file_keys=file_keys, origins=origins) if source is not None else {}
    given: dict[str, Any] = {}
    for text in overrides:
        for key, value in _dotted_items(*parse_override(text)):
            given[key] = value
            _set_dotted(data, key, value)
            origins.pop(key, None)  # the override's value is the one in effect
    cfg = _build(Config, data, origins=origins)
    _validate(cfg, need_data_path, origins)
    if cfg.train.resume is None:  # a resume is checked by train, against its checkpoint's
        check_milestones(cfg, origins)
    # A saved config.yaml used as a file names every key, most at its default: keys of files
    # count as the user's where they differ from the default; typed overrides always count.
    default, hints = Config(), key_hints()
    explicit = set(given) | {
        k for k in file_keys if k in hints and get_dotted(cfg, k) != get_dotted(default, k)
    }
    unused = [k for k in given if k.startswith("looc.")] if cfg.method != "looc" else []
    if unused:  # a LooC setting on a MoCo run would be silently ignored
        verb = "apply" if len(unused) > 1 else "applies"
        raise UserError(
            f"{', '.join(unused)} only {verb} to method=looc, and this run is "
            f"method={cfg.method}; start from a LooC preset (contrastlab presets) or add method=looc"
        )
    if warn_unused:
        for message in unused_settings(cfg, explicit, file_sets_method="method" in file_keys):
            warn(message)
    return cfg


def effective_defaults(cfg: Config) -> dict[str, str]:
    """What the keys whose value ``null`` means "decided from the rest" come to for ``cfg``:
    ``{dotted key: "= value: why"}`` (``contrastlab config`` prints them as comments)."""
    out = {}
    aug, looc = cfg.augment, cfg.method == "looc"
    whole = aug.recipe == "none" and not looc
    if aug.blur is None:
        on = aug.recipe == "moco_v2" and cfg.data.image_size > 64
        out["augment.blur"] = (
            "= false: augment.recipe=none takes the whole image"
            if whole
            else f"= {str(on).lower()}: {aug.recipe} blurs only above 64 px"
            if aug.recipe == "moco_v2"
            else f"= false: {aug.recipe} does not blur unless augment.blur=true"
        )
    colour = aug.recipe != "none" or (looc and "color" in cfg.looc.augmentations)
    if aug.hue is None:
        out["augment.hue"] = (
            f"= {0.4 if aug.recipe == 'moco_v1' else 0.1}: the recipe's hue jitter"
            if colour
            else "no colour jitter in these views"
        )
    if aug.grayscale_p is None:
        out["augment.grayscale_p"] = (
            "= 0.2: the recipe's grayscale probability" if colour else "no grayscale in these views"
        )
    for side in ("pos", "neg"):
        if get_dotted(cfg, f"ft.granularity_{side}") is None:
            out[f"ft.granularity_{side}"] = f"= {cfg.ft.granularity}: ft.granularity"
    if cfg.train.amp is None:
        out["train.amp"] = "= true on CUDA, false on the CPU"
    if cfg.train.channels_last is None:
        out["train.channels_last"] = (
            "= true on CUDA and on CPUs with AVX-512, false on other CPUs (oneDNN's AVX2 "
            "channels-last convolution backward hung there)"
        )
    if cfg.train.threads is None:
        out["train.threads"] = "= torch's default: one per core (OMP_NUM_THREADS where set)"
    if cfg.data.in_memory is None and cfg.data.name == "imagefolder":
        out["data.in_memory"] = "= true for images of at most 96 px, else loaded lazily"
    return out


def unused_settings(cfg: Config, explicit: set[str], file_sets_method: bool = True) -> list[str]:
    """One line per key of ``explicit`` (the user's settings) that has no effect on this run.

    ``file_sets_method``: the user's YAML files name the method themselves; a file that leaves it
    to the command line may serve MoCo and LooC runs alike, and its ``looc.*`` keys are for the
    LooC ones (experiments/cifar_cpu.yaml), so they are not warned about."""
    out = []

    default = Config()

    def unused(key: str, why: str, fix: str) -> None:
        # key=null (or key=) where null is the default sets nothing: nothing to warn about
        if key in explicit and not (get_dotted(cfg, key) is None is get_dotted(default, key)):
            value = get_dotted(cfg, key)
            shown = value if isinstance(value, str) else _show(value)
            out.append(f"{key}={shown} has no effect: {why}; {fix}")

    if cfg.method != "looc" and file_sets_method:
        # looc.* of a YAML file that sets another method: a warning, not the overrides' refusal
        for key in sorted(k for k in explicit if k.startswith("looc.")):
            unused(
                key,
                f"it only applies to method=looc, and this run is method={cfg.method}",
                "add method=looc, or leave it out of the config file",
            )
    ft_on = cfg.ft.pos != "none" or cfg.ft.neg != "none"
    for side, keys in (
        ("pos", ("ft.alpha_pos", "ft.granularity_pos")),
        ("neg", ("ft.alpha_neg", "ft.granularity_neg")),
    ):
        if get_dotted(cfg, f"ft.{side}") == "none":
            what = "positives" if side == "pos" else "negatives"
            for key in keys:
                unused(
                    key,
                    f"ft.{side}=none transforms no {what}",
                    f"set ft.{side} to a transformation or leave {key} out",
                )
    if not ft_on:
        for key in ("ft.distribution", "ft.granularity", "ft.renormalize", "ft.start_epoch"):
            unused(
                key,
                "Feature Transformation is off (ft.pos=none, ft.neg=none)",
                f"set ft.pos or ft.neg, or leave {key} out",
            )
    elif cfg.ft.start_epoch >= cfg.optim.epochs:
        unused(
            "ft.start_epoch",
            f"ft.start_epoch counts from 0, so Feature Transformation would start in epoch "
            f"{cfg.ft.start_epoch + 1}, and the run ends with epoch {cfg.optim.epochs}",
            "lower ft.start_epoch or raise optim.epochs",
        )
    if ft_on:
        if not cfg.ft.renormalize or cfg.ft.neg == "none":
            why = "ft.renormalize=false" if not cfg.ft.renormalize else "ft.neg=none mixes none"
            unused(
                "ft.renormalize_negatives",
                f"{why}, so no mixed negatives are put back on the sphere",
                "add ft.renormalize=true and ft.neg=interpolate, or leave it out",
            )
        if cfg.ft.distribution == "uniform":
            for key in ("ft.alpha_pos", "ft.alpha_neg"):
                unused(
                    key,
                    "ft.distribution=uniform draws λ without a shape parameter",
                    f"use ft.distribution=beta, or leave {key} out",
                )
        own = [
            get_dotted(cfg, f"ft.granularity_{side}") is not None
            for side in ("pos", "neg")
            if get_dotted(cfg, f"ft.{side}") != "none"
        ]
        if all(own):
            unused(
                "ft.granularity",
                "every transformed side has its own (ft.granularity_pos / ft.granularity_neg)",
                "leave ft.granularity out, or one of the per-side keys",
            )
    _unused_augmentations(cfg, unused)
    if not cfg.train.knn_every:
        unused(
            "train.knn_val_fraction",
            "train.knn_every=0 runs no kNN monitor, so no best.pt is chosen",
            "set train.knn_every to a number of epochs, or leave it out",
        )
    if not cfg.scores.record:
        for key in ("scores.bins", "scores.low", "scores.high"):
            unused(
                key,
                "scores.record=false records no score histograms",
                f"add scores.record=true, or leave {key} out",
            )
    if cfg.optim.schedule == "cosine":
        unused(
            "optim.milestones",
            "the cosine schedule has no milestones",
            "add optim.schedule=step to decay at them, or leave optim.milestones out",
        )
    elif not any(m < cfg.optim.epochs for m in cfg.optim.milestones):
        why = (
            "optim.milestones is empty"
            if not cfg.optim.milestones
            else f"every milestone of {cfg.optim.milestones} is >= optim.epochs={cfg.optim.epochs}"
        )
        for key in ("optim.schedule", "optim.milestones"):
            unused(
                key,
                f"{why}, so the step schedule never lowers the learning rate",
                "give milestones below optim.epochs, or use optim.schedule=cosine",
            )
            if key in explicit:
                break  # one line for the pair
    if cfg.optim.warmup_epochs >= cfg.optim.epochs and "optim.warmup_epochs" in explicit:
        out.append(
            f"optim.warmup_epochs={cfg.optim.warmup_epochs} >= optim.epochs={cfg.optim.epochs}: "
            f"the run ends inside the warm-up, so the learning rate never reaches optim.lr="
            f"{cfg.optim.lr:g} and the {cfg.optim.schedule} schedule never starts; fine for a "
            "short test run, otherwise lower optim.warmup_epochs"
        )
    if cfg.model.head == "linear":
        unused(
            "model.head_hidden",
            "model.head=linear has no hidden layer",
            "add model.head=mlp, or leave model.head_hidden out",
        )
    if cfg.data.name == "synthetic":
        unused(
            "data.path",
            "data.name=synthetic renders its images and reads no folder",
            "set dataset=imagefolder (or cifar10, cifar100, stl10) to train on the folder",
        )
    if cfg.data.name != "imagefolder":
        unused(
            "data.holdout_fraction",
            f"only data.name=imagefolder without a test/ folder holds images out, and this run "
            f"is data.name={cfg.data.name}",
            "leave data.holdout_fraction out",
        )
    if cfg.data.name != "imagefolder":
        for key in ("data.in_memory", "data.skip_bad_images"):
            unused(
                key,
                f"only data.name=imagefolder decodes image files, and this run is data.name="
                f"{cfg.data.name}",
                f"leave {key} out",
            )
    if cfg.data.name in ("synthetic", "imagefolder"):
        unused(
            "data.download",
            f"data.name={cfg.data.name} downloads nothing (only cifar10, cifar100, stl10 do)",
            "leave data.download out",
        )
    if cfg.data.name != "synthetic":  # imagefolder too, not only the downloaded sets
        for key in ("data.synthetic_train", "data.synthetic_test", "data.synthetic_seed"):
            unused(
                key,
                f"it sets the synthetic dataset, and this run is data.name={cfg.data.name}",
                f"add dataset=synthetic, or leave {key} out",
            )
    return out


def _unused_augmentations(cfg: Config, unused) -> None:
    """``augment.*`` keys that the views of this run never use (``views/recipes.py``)."""
    atomic = cfg.looc.augmentations if cfg.method == "looc" else ()
    if cfg.augment.recipe == "none" and not atomic:  # MoCo's whole image: nothing is drawn
        for key in ("augment.crop_scale_min", "augment.blur", "augment.hue", "augment.grayscale_p"):
            unused(
                key,
                "augment.recipe=none takes the whole image (no crop, colour jitter or blur)",
                f"choose augment.recipe=moco_v1 or moco_v2, or leave {key} out",
            )
    elif cfg.augment.recipe == "none" and "color" not in atomic:
        for key in ("augment.hue", "augment.grayscale_p"):
            unused(
                key,
                "augment.recipe=none has no colour jitter, and color is not one of "
                "looc.augmentations",
                f"choose augment.recipe=moco_v1 or moco_v2, add color to looc.augmentations, "
                f"or leave {key} out",
            )
    if "rotation" in atomic:
        unused(
            "augment.rotation",
            "rotation is one of looc.augmentations, so every view is rotated already",
            "leave augment.rotation out",
        )


def _same_value(given: Any, checked: Any) -> bool:
    """Whether ``given`` (a value set in Python) is ``checked`` (what ``_build`` made of it) as it
    stands, not only after a conversion: 5.0 is no queue size, "0.1" no learning rate."""
    if isinstance(checked, list):
        return (
            isinstance(given, (list, tuple))
            and len(given) == len(checked)
            and all(_same_value(a, b) for a, b in zip(given, checked))
        )
    if isinstance(checked, bool):
        return given is checked or (_is_numpy_bool(given) and bool(given) is checked)
    if checked is None:
        return given is checked
    if isinstance(given, bool):
        return False
    if isinstance(checked, int):
        return isinstance(given, numbers.Integral) and given == checked
    if isinstance(checked, float):
        return isinstance(given, numbers.Real) and given == checked
    if isinstance(checked, str):  # numpy.str_ is a str
        return isinstance(given, str) and given == checked
    return type(given) is type(checked) and given == checked


def validate(cfg: Config, need_data_path: bool = True) -> None:
    """Check a ``Config`` built or changed in Python as a loaded one is checked.

    The checks of ``load_config`` and ``config_from_dict``: each value of its type (and one of the
    choices where the key has a closed set of them), in its range, and the keys consistent with
    each other. Raises ``UserError`` with one line that names the key. ``build_method``, the
    methods' classes and ``train`` call it, so a bad value fails before any work starts.
    ``need_data_path=False`` lets an image-folder config without ``data.path`` through (a model
    needs no data). Numbers of other types than Python's (numpy's ``int64``, ``float32``) are
    accepted where they hold a valid value, and replaced in ``cfg`` by Python's int or float.
    """
    if not isinstance(cfg, Config):
        raise UserError(f"expected a contrastlab.config.Config, got {type(cfg).__name__}")
    hints = get_type_hints(Config)
    for name in sorted(_SECTIONS):
        section = getattr(cfg, name)
        if not isinstance(section, hints[name]):
            raise UserError(
                f"config section '{name}' must be a {hints[name].__name__}, got "
                f"{type(section).__name__}"
            )
    checked = _build(Config, dataclasses.asdict(cfg))
    for key, hint in key_hints().items():
        given = get_dotted(cfg, key)
        _check_given(key, hint, given, get_dotted(checked, key))
        if _foreign_number(given):  # config.yaml and checkpoints hold Python's numbers
            section, _, name = key.rpartition(".")
            setattr(get_dotted(cfg, section) if section else cfg, name, get_dotted(checked, key))
    _validate(checked, need_data_path)


def _foreign_number(value: Any) -> bool:
    """A number or truth value that is not Python's own (``numpy.int64(32)``), or a list
    holding one."""
    if isinstance(value, (list, tuple)):
        return any(map(_foreign_number, value))
    return (
        _is_numpy_bool(value)
        or (isinstance(value, numbers.Number) and type(value) not in (int, float, bool))
        or (isinstance(value, str) and type(value) is not str)  # numpy.str_
    )


def _is_numpy(value: Any) -> bool:
    return type(value).__module__ == "numpy"


def _is_numpy_bool(value: Any) -> bool:
    """numpy's truth value (``numpy.bool_``, e.g. from ``array.any()``), which is no ``bool``."""
    return _is_numpy(value) and type(value).__name__ in ("bool", "bool_")


def _check_given(key: str, hint: Any, given: Any, checked: Any) -> None:
    """A ``UserError`` unless the value given in Python is the value it was checked as (an int
    where an int is due, not a string a conversion would turn into one); a list names the item."""
    if _same_value(given, checked):
        return
    if get_origin(hint) is list and isinstance(given, (list, tuple)):
        (item,) = get_args(hint)
        for i, (g, c) in enumerate(zip(given, checked)):
            _check_given(f"{key}[{i}]", item, g, c)
    kind = {int: "an integer", float: "a number", str: "a string"}.get(hint, "a list")
    if get_origin(hint) in (typing.Union, types.UnionType):
        kind = {int: "an integer or None", float: "a number or None"}.get(
            next(a for a in get_args(hint) if a is not type(None)), "a string or None"
        )
    shown = _show(given) if _is_numpy(given) else f"{given!r} ({type(given).__name__})"
    raise UserError(f"{key} must be {_expected(key, kind)}, got {shown}")


def check_section(section: Any, name: str) -> None:
    """``validate`` for one section of a config built in Python (``check_section(aug,
    "augment")``): the section's type, and each of its values of its type, one of its choices
    and in its range. Raises the same one-line ``UserError`` as ``validate``, naming the key."""
    hint = get_type_hints(Config).get(name)
    if not dataclasses.is_dataclass(hint):
        raise ValueError(f"no config section named {name!r}")
    if not isinstance(section, hint):
        raise UserError(f"{name} must be a {hint.__name__}, got {type(section).__name__}")
    checked = _build(hint, dataclasses.asdict(section), f"{name}.")
    for key, key_hint in get_type_hints(hint).items():
        _check_given(f"{name}.{key}", key_hint, getattr(section, key), getattr(checked, key))
    _check_ranges(checked, section=name)


def config_from_dict(data: dict) -> Config:
    """Rebuild a config saved in a run directory or a checkpoint."""
    cfg = _build(Config, data)
    _validate(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: Path, comments: typing.Sequence[str] = ()) -> None:
    """Write ``cfg`` as YAML to ``path``, after ``comments`` as ``#`` lines (YAML ignores them)."""
    from contrastlab.atomic import write_text

    header = "".join(f"# {line}\n" for line in comments)
    write_text(path, header + yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


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
