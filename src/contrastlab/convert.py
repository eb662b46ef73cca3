"""Published encoders in: MoCo, Feature Transformation, lightly, solo-learn and torchvision files.

``convert_checkpoint(src, fmt, out)`` reads another project's checkpoint with
``torch.load(weights_only=True)``, renames its ResNet backbone to torchvision's names and its
projection head (when there is one, and it is MoCo's linear layer or Linear-ReLU-Linear MLP) to
contrastlab's, and writes a contrastlab checkpoint that ``eval``, ``export`` and ``analyze`` accept.

Layouts, as each project writes them (read in its own code):

* ``moco`` (facebookresearch/moco ``main_moco.py``): ``{"epoch", "arch", "state_dict",
  "optimizer"}``; the model is wrapped in DistributedDataParallel, so ``state_dict`` has
  ``module.encoder_q.<torchvision ResNet>``, the head as ``module.encoder_q.fc.weight`` (v1, a
  linear layer to 128-d) or ``module.encoder_q.fc.0.*`` / ``fc.2.*`` (v2, ``--mlp``), the key
  encoder ``module.encoder_k.*`` and ``module.queue`` ``[dim, K]``. ``main_lincls.py`` reads the
  same names.
* ``ft`` (the Feature Transformation release, DTennant/CL-Visualizing-Feature-Transformation, which
  uses PyContrast's trainer, HobbitLong/PyContrast): ``{"model", "model_ema", "contrast",
  "optimizer", "epoch"}``; ``model`` is ``RGBSingleHead`` under DDP: ``module.encoder.<ResNet
  without fc>`` and ``module.head.0.*`` (linear) or ``module.head.0.*`` / ``module.head.2.*``
  (MLP, then a parameter-free Normalize); ``model_ema`` has the same names without ``module.``.
* ``lightly`` (a LightningModule as in lightly's MoCo examples): ``{"state_dict": ...}`` with
  ``backbone = nn.Sequential(*list(resnet.children())[:-1])``, i.e. ``backbone.0`` = conv1,
  ``backbone.1`` = bn1, ``backbone.4`` .. ``backbone.7`` = layer1 .. layer4, and
  ``projection_head.layers.0`` / ``layers.2`` (``MoCoProjectionHead``); momentum copies
  ``backbone_momentum.*`` and ``projection_head_momentum.*``.
* ``solo-learn`` (``solo.methods.MoCoV2Plus``, a LightningModule): ``{"state_dict": ...}`` with
  ``backbone.<torchvision ResNet, fc = Identity>``, ``projector.0`` / ``projector.2``,
  ``momentum_backbone.*``, ``momentum_projector.*``, ``classifier.*`` (the online linear probe,
  dropped) and ``queue`` ``[2, dim, K]``.
* ``torchvision``: a plain ResNet state dict (``conv1.weight``, ..., ``fc.*``); the ImageNet
  classifier ``fc`` is dropped: it is not a projection head.

The architecture (resnet18/34/50, width, CIFAR stem) is read from the tensor shapes. Every problem
(an unknown layout, a missing key, a shape mismatch, a file that pickles objects) is one
``UserError`` line saying what was expected and what was found.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from contrastlab.checkpoint import FORMAT as CHECKPOINT_FORMAT
from contrastlab.checkpoint import load_torch_file
from contrastlab.errors import UserError, as_path
from contrastlab.eval.results import checkpoint_stem

FORMATS = ("moco", "ft", "lightly", "solo-learn", "torchvision")
# data.path of an encoder converted from ImageNet: evaluate it with --dataset / --data-path
NOT_SHIPPED = "training-images-not-shipped--give-dataset-and-data-path"

# lightly: nn.Sequential(*list(resnet.children())[:-1]) numbers the children of a torchvision ResNet
_LIGHTLY_CHILDREN = {
    "0": "conv1",
    "1": "bn1",
    "4": "layer1",
    "5": "layer2",
    "6": "layer3",
    "7": "layer4",
}
_ARCHS = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
}


@dataclass
class Encoder:
    """What a converted file provides, in torchvision / contrastlab names.

    ``backbone``: torchvision ResNet keys without ``fc``; ``head``: ``{"weight", "bias"}`` (linear)
    or ``{"0.weight", "0.bias", "2.weight", "2.bias"}`` (MLP), or None; the momentum copies in the
    same names when the file has them; ``queue`` ``[K, dim]`` unit rows, or None. ``epoch`` and
    ``step``: the training state the source records (MoCo's and PyContrast's ``epoch``, the
    completed epochs; Lightning's ``epoch`` and ``global_step``), None where it records none (a
    torchvision state dict; MoCo and PyContrast save no step).
    """

    fmt: str
    backbone: dict[str, Tensor]
    head: dict[str, Tensor] | None = None
    momentum_backbone: dict[str, Tensor] | None = None
    momentum_head: dict[str, Tensor] | None = None
    queue: Tensor | None = None
    epoch: int | None = None  # as the source records it; None: the format records none
    step: int | None = None  # the optimizer steps (Lightning's global_step); None: not recorded
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


def read_source(path: str | Path) -> object:
    """``torch.load(path, weights_only=True)`` with one-line errors (``load_torch_file``)."""
    path = as_path(path, "source")

    def pickled(name: str) -> str:
        # The command keeps the whole state dict. A pickled MoCo v2 encoder_q (a ResNet whose fc
        # is the MLP head, fc.0 / fc.2) gets MoCo's key names, or its head would be read as a
        # torchvision classifier and dropped; a whole MoCo model has them already. The epoch
        # becomes a Python int: a numpy one would be refused by weights_only=True again.
        return (
            f"{path} pickles a Python object{f' ({name})' if name else ''} that weights_only=True "
            "refuses to load; if you trust the file, save its tensors alone first: "
            f"python -c \"import torch; c = torch.load('{path}', weights_only=False); "
            "m = isinstance(c, torch.nn.Module); w = c.state_dict() if m else c['state_dict']; "
            "w = {'encoder_q.' + k: v for k, v in w.items()} if 'fc.0.weight' in w else w; "
            "e = None if m else c.get('epoch'); "
            "torch.save({'state_dict': w, 'epoch': None if e is None else int(e)}, "
            f"'{path.stem}-weights.pt')\""
        )

    return load_torch_file(path, "checkpoint", pickled, foreign=True)


def _tensors(obj: object, what: str) -> dict[str, Tensor]:
    if not isinstance(obj, dict) or not obj:
        raise UserError(f"expected {what} to be a dict of tensors, found {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}


def _take(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Entries under ``prefix`` with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _strip_module(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """DistributedDataParallel's ``module.`` prefix, when every key has it."""
    if state and all(k.startswith("module.") for k in state):
        return _take(state, "module.")
    return state


def _without_fc(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def _mlp_head(
    state: dict[str, Tensor], where: str, allow_linear: bool, heads: bool = True
) -> dict[str, Tensor] | None:
    """contrastlab head names from ``0.*``/``2.*`` (Linear-ReLU-Linear) or ``0.*`` alone (linear);
    None when there is none or ``heads`` is false (``--no-head``: any head layout is accepted)."""
    if not state or not heads:
        return None
    keys = set(state)
    if keys == {"0.weight", "0.bias", "2.weight", "2.bias"}:
        return dict(state)
    if allow_linear and keys == {"0.weight", "0.bias"}:
        return {"weight": state["0.weight"], "bias": state["0.bias"]}
    raise UserError(
        f"the projection head {where} has keys {sorted(keys)}; expected a Linear-ReLU-Linear MLP "
        "(0.weight, 0.bias, 2.weight, 2.bias) as in MoCo v2; convert with --no-head to keep "
        "the backbone only"
    )


def _moco_head(state: dict[str, Tensor], where: str, heads: bool) -> dict[str, Tensor] | None:
    """MoCo v1's ``fc`` (a linear layer) or v2's ``fc.0`` / ``fc.2`` (``--mlp``)."""
    if heads and set(state) == {"weight", "bias"}:
        return dict(state)
    return _mlp_head(state, where, allow_linear=False, heads=heads)


def _moco(obj, heads: bool = True) -> Encoder:
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise UserError(
            _expected("moco", "a dict with 'state_dict' (main_moco.py's checkpoint)", obj)
        )
    state = _strip_module(_tensors(obj["state_dict"], "'state_dict'"))
    q = _take(state, "encoder_q.")
    if not q:
        raise UserError(_expected("moco", "keys module.encoder_q.* in 'state_dict'", state))
    k = _take(state, "encoder_k.")
    queue = state.get("queue")
    return Encoder(
        fmt="moco",
        backbone=_without_fc(q),
        head=_moco_head(_take(q, "fc."), "module.encoder_q.fc", heads),
        momentum_backbone=_without_fc(k) or None,
        momentum_head=_moco_head(_take(k, "fc."), "module.encoder_k.fc", heads),
        queue=queue.T.contiguous() if queue is not None and queue.ndim == 2 else None,
        epoch=_recorded(obj, "epoch"),
    )


def _ft(obj, heads: bool = True) -> Encoder:
    if not isinstance(obj, dict) or "model" not in obj:
        raise UserError(
            _expected("ft", "a dict with 'model' (PyContrast's ContrastTrainer.save)", obj)
        )
    model = _strip_module(_tensors(obj["model"], "'model'"))
    backbone = _take(model, "encoder.")
    if not backbone:
        raise UserError(_expected("ft", "keys module.encoder.* in 'model'", model))
    ema = _strip_module(_tensors(obj["model_ema"], "'model_ema'")) if "model_ema" in obj else {}
    return Encoder(
        fmt="ft",
        backbone=_without_fc(backbone),
        head=_mlp_head(_take(model, "head."), "module.head", True, heads),
        momentum_backbone=_without_fc(_take(ema, "encoder.")) or None,
        momentum_head=_mlp_head(_take(ema, "head."), "model_ema head", True, heads),
        epoch=_recorded(obj, "epoch"),
    )


def _recorded(obj, key: str) -> int | None:
    """The source's own ``obj[key]`` (an epoch or step count), None where it has none: a
    made-up 0 would read as a fact in eval results and analyze's tables."""
    value = obj.get(key) if isinstance(obj, dict) else None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return None
    return int(value)


def _lightning_state(obj, fmt: str) -> dict[str, Tensor]:
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise UserError(_expected(fmt, "a Lightning checkpoint (a dict with 'state_dict')", obj))
    return _tensors(obj["state_dict"], "'state_dict'")


def _lightly_backbone(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        index, _, rest = key.partition(".")
        if index not in _LIGHTLY_CHILDREN:
            raise UserError(
                f"lightly backbone key backbone.{key}: expected the children of a torchvision "
                f"ResNet (backbone.0, .1, .4-.7), found child {index}"
            )
        out[f"{_LIGHTLY_CHILDREN[index]}.{rest}"] = value
    return out


def _lightly(obj, heads: bool = True) -> Encoder:
    state = _lightning_state(obj, "lightly")
    backbone = _take(state, "backbone.")
    if not backbone:
        raise UserError(_expected("lightly", "keys backbone.0.* .. backbone.7.*", state))
    momentum = _take(state, "backbone_momentum.")
    return Encoder(
        fmt="lightly",
        backbone=_lightly_backbone(backbone),
        head=_mlp_head(_take(state, "projection_head.layers."), "projection_head", False, heads),
        momentum_backbone=_lightly_backbone(momentum) if momentum else None,
        momentum_head=_mlp_head(
            _take(state, "projection_head_momentum.layers."), "momentum head", False, heads
        ),
        epoch=_recorded(obj, "epoch"),
        step=_recorded(obj, "global_step"),
    )


def _solo(obj, heads: bool = True) -> Encoder:
    state = _lightning_state(obj, "solo-learn")
    backbone = _take(state, "backbone.")
    if not backbone:
        raise UserError(_expected("solo-learn", "keys backbone.conv1.weight, ...", state))
    queue = state.get("queue")
    return Encoder(
        fmt="solo-learn",
        backbone=_without_fc(backbone),
        head=_mlp_head(_take(state, "projector."), "projector", False, heads),
        momentum_backbone=_without_fc(_take(state, "momentum_backbone.")) or None,
        momentum_head=_mlp_head(
            _take(state, "momentum_projector."), "momentum_projector", False, heads
        ),
        # solo-learn keeps one queue per view: [2, dim, K]; the first is as good as the other
        queue=queue[0].T.contiguous() if queue is not None and queue.ndim == 3 else None,
        epoch=_recorded(obj, "epoch"),
        step=_recorded(obj, "global_step"),
    )


def _plain_resnet_state(obj) -> dict | None:
    """A torchvision ResNet state dict, as saved directly or in the common wrappers: under
    ``state_dict`` or ``model`` (training scripts), with DDP's ``module.`` prefix; else None."""
    if not isinstance(obj, dict):
        return None
    for candidate in (obj, obj.get("state_dict"), obj.get("model")):
        if not isinstance(candidate, dict):
            continue
        if "module.conv1.weight" in candidate:
            candidate = {k.removeprefix("module."): v for k, v in candidate.items()}
        if isinstance(candidate.get("conv1.weight"), Tensor):
            return candidate
    return None


def _torchvision(obj, heads: bool = True) -> Encoder:
    state = _plain_resnet_state(obj)
    if state is None:
        raise UserError(_expected("torchvision", "a ResNet state dict (conv1.weight, ...)", obj))
    return Encoder(fmt="torchvision", backbone=_without_fc(_tensors(state, "the file")))


_READERS = {
    "moco": _moco,
    "ft": _ft,
    "lightly": _lightly,
    "solo-learn": _solo,
    "torchvision": _torchvision,
}


def _expected(fmt: str, what: str, found) -> str:
    if isinstance(found, dict):
        keys = list(found)[:4]
        shown = ", ".join(map(str, keys)) + (", ..." if len(found) > 4 else "")
        got = f"keys {shown}" if keys else "an empty dict"
    else:
        got = type(found).__name__
    return f"not a {fmt} checkpoint: expected {what}, found {got}"


def detect_format(obj) -> str:
    """The source format recognized from the keys (``--from auto``)."""
    if isinstance(obj, dict):
        if isinstance(obj.get("state_dict"), dict):
            keys = list(obj["state_dict"])
            if any(re.match(r"(module\.)?encoder_q\.", k) for k in keys):
                return "moco"
            if any(k.startswith("backbone.0.") for k in keys):
                return "lightly"
            if any(k.startswith("backbone.conv1.") for k in keys):
                return "solo-learn"
        if isinstance(obj.get("model"), dict) and any(
            re.match(r"(module\.)?encoder\.conv1\.", k) for k in obj["model"]
        ):
            return "ft"
        if _plain_resnet_state(obj) is not None:
            return "torchvision"
        if obj.get("format") == CHECKPOINT_FORMAT:
            raise UserError(
                "this is already a contrastlab checkpoint: evaluate, export or analyze it as it "
                "is; convert reads checkpoints of other projects"
            )
    top = ", ".join(map(str, list(obj)[:5])) if isinstance(obj, dict) else type(obj).__name__
    raise UserError(
        f"cannot recognize the checkpoint layout (top-level: {top}); expected one of: moco "
        "(state_dict with module.encoder_q.*), ft (model with module.encoder.*), lightly "
        "(state_dict with backbone.0.*), solo-learn (state_dict with backbone.conv1.*), "
        "torchvision (conv1.weight, ..., possibly under state_dict or model); if the file is one "
        "of these with other key names, rename its keys in Python and save the state dict"
    )


def read_encoder(path: str | Path, fmt: str = "auto", heads: bool = True) -> Encoder:
    """Read ``path`` in format ``fmt`` (one of ``FORMATS`` or ``"auto"``); ``heads=False`` skips
    the projection heads."""
    if fmt != "auto" and fmt not in FORMATS:
        raise UserError(f"unknown source format '{fmt}'; valid: auto, {', '.join(FORMATS)}")
    obj = read_source(path)
    if fmt == "auto":
        fmt = detect_format(obj)
    return _READERS[fmt](obj, heads)


# ----------------------------------------------------------------------------------------------
# Architecture from shapes, and the contrastlab checkpoint
# ----------------------------------------------------------------------------------------------


def infer_model(backbone: dict[str, Tensor]) -> dict:
    """``model.*`` config values (backbone, width, cifar_stem) read from the tensor shapes."""
    conv1 = backbone.get("conv1.weight")
    if conv1 is None or conv1.ndim != 4:
        raise UserError("the backbone has no conv1.weight [C, 3, k, k]; is it a ResNet?")
    block = "bottleneck" if "layer1.0.conv3.weight" in backbone else "basic"
    depths = []
    for stage in range(1, 5):
        ids = {int(m.group(1)) for k in backbone if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        depths.append(max(ids) + 1 if ids else 0)
    arch = _ARCHS.get((block, tuple(depths)))
    if arch is None:
        raise UserError(
            f"backbone with {block} blocks {depths} per stage is not supported; expected "
            "resnet18 (basic [2, 2, 2, 2]), resnet34 (basic [3, 4, 6, 3]) or resnet50 "
            "(bottleneck [3, 4, 6, 3])"
        )
    inner = backbone.get("layer1.0.conv2.weight")  # the first block's 3x3 convolution
    if inner is not None and (inner.shape[0] != conv1.shape[0] or inner.shape[1] != inner.shape[0]):
        kind = (
            "a ResNeXt (grouped 3x3 convolutions)"
            if inner.shape[1] != inner.shape[0]
            else f"a wide ResNet (blocks {inner.shape[0]} channels wide where conv1 has "
            f"{conv1.shape[0]})"
        )
        raise UserError(
            f"the backbone looks like {kind}; only plain ResNets are supported: resnet18, "
            "resnet34 and resnet50, at any width of conv1 (model.width)"
        )
    return {
        "backbone": arch,
        "width": conv1.shape[0] / 64,
        "cifar_stem": conv1.shape[-1] == 3,
    }


def _head_config(head: dict[str, Tensor] | None) -> dict:
    if head is None:
        return {}
    if "weight" in head:
        return {"head": "linear", "dim": int(head["weight"].shape[0])}
    return {
        "head": "mlp",
        "head_hidden": int(head["0.weight"].shape[0]),
        "dim": int(head["2.weight"].shape[0]),
    }


def _load(module: torch.nn.Module, state: dict[str, Tensor], what: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = "; ".join(lines[1:3]) if len(lines) > 1 else lines[0]
        raise UserError(
            f"the {what} does not fit a torchvision ResNet of the shape its conv1 and stage "
            f"depths imply (keys named after removing the source's prefixes): {detail}"
        ) from None


def build_checkpoint(
    enc: Encoder,
    source: str,
    keep_head: bool = True,
    dataset: str | None = None,
    image_size: int | None = None,
) -> dict:
    """A contrastlab checkpoint dict (``contrastlab.checkpoint.FORMAT``) holding ``enc``."""
    from contrastlab.checkpoint import make_state
    from contrastlab.config import Config, ModelConfig
    from contrastlab.methods import build_method

    model_values = infer_model(enc.backbone)
    head = enc.head if keep_head else None
    model_values.update(_head_config(head))
    if head is None:
        # a placeholder head (never used: the z space is switched off), as small as possible
        model_values.update(head="linear", dim=8)
    stem = model_values["cifar_stem"]
    cfg = Config(name=checkpoint_stem(Path(source).name), method="moco")
    cfg.model = dataclasses.replace(ModelConfig(), **model_values)
    name = dataset or ("cifar10" if stem else "imagefolder")
    cfg.data = dataclasses.replace(
        cfg.data,
        name=name,
        # imagefolder needs a path; ImageNet's is not known here (normalization: ImageNet's)
        path=NOT_SHIPPED if name == "imagefolder" else None,
        image_size=image_size or (32 if stem else 224),
    )
    cfg.augment = dataclasses.replace(
        cfg.augment, recipe="moco_v1" if model_values["head"] == "linear" else "moco_v2"
    )
    queue = enc.queue if head is not None else None
    if queue is not None and queue.shape[1] != cfg.model.dim:
        queue = None
    cfg.moco = dataclasses.replace(
        cfg.moco, queue_size=int(queue.shape[0]) if queue is not None else 4096
    )
    torch.manual_seed(0)
    model = build_method(cfg)
    _load(model.encoder_q.backbone, enc.backbone, "backbone")
    if head is not None:
        _load(model.encoder_q.head, head, "projection head")
    model.encoder_k.load_state_dict(model.encoder_q.state_dict())
    if enc.momentum_backbone is not None:
        _load(model.encoder_k.backbone, enc.momentum_backbone, "momentum backbone")
    if head is not None and enc.momentum_head is not None:
        _load(model.encoder_k.head, enc.momentum_head, "momentum projection head")
    if queue is not None:
        model.queue.copy_(torch.nn.functional.normalize(queue.float(), dim=1))
    state = make_state(cfg, model, None, epoch=enc.epoch, step=enc.step, best_metric=None)
    _share_momentum_copies(state["model"])
    state["converted"] = {
        "source": str(source),
        "format": enc.fmt,
        "head": head is not None,
        # the settings the source shows or the user gave; the others are defaults, not facts
        "known": _known_settings(enc, head, queue, dataset, image_size),
    }
    return state


def _known_settings(enc: Encoder, head, queue, dataset, image_size) -> list[str]:
    """The dotted config keys a converted checkpoint knows (``checkpoint.known_settings``): the
    architecture from the tensor shapes, the head's when one is kept, the queue's length when
    its queue is, the method where the format is MoCo's own, and ``--dataset`` /
    ``--image-size`` when given; the name comes from the source file."""
    known = ["name", "model.backbone", "model.width", "model.cifar_stem"]
    if head is not None:
        known += [f"model.{key}" for key in _head_config(head)]
    if queue is not None:
        known.append("moco.queue_size")
    if enc.fmt == "moco":  # facebookresearch/moco: MoCo, whatever its other settings were
        known.append("method")
    if dataset is not None:
        known.append("data.name")
    if image_size is not None:
        known.append("data.image_size")
    return known


def _share_momentum_copies(weights: dict[str, Tensor]) -> None:
    """Point each momentum-encoder entry that equals its query-encoder twin at that same tensor.

    A source without a momentum encoder gets one copied from the query encoder; torch.save writes
    a shared tensor once, so the file holds those weights once instead of twice (a converted
    ResNet-18 backbone: about the source's size, not double). Loading copies them into both.
    """
    for key, value in weights.items():
        if not key.startswith("encoder_k."):
            continue
        twin = weights.get("encoder_q." + key.removeprefix("encoder_k."))
        if (
            twin is not None
            and twin.dtype == value.dtype
            and twin.shape == value.shape
            and torch.equal(twin, value)
        ):
            weights[key] = twin


def _check_data_options(dataset: str | None, image_size: int | None) -> None:
    """``--dataset`` and ``--image-size`` go into the converted checkpoint's ``data.*``: refuse
    before any work what no command could later evaluate with (the config's own rules)."""
    from contrastlab.config import load_config

    for flag, key, value in (
        ("--dataset", "data.name", dataset),
        ("--image-size", "data.image_size", image_size),
    ):
        if value is None:
            continue
        try:
            load_config("moco_v2_cifar", [f"{key}={value}", "data.path=."])
        except UserError as e:
            raise UserError(f"{flag} {value}: {e}") from None


def convert_checkpoint(
    src: str | Path,
    fmt: str,
    out: str | Path,
    keep_head: bool = True,
    dataset: str | None = None,
    image_size: int | None = None,
) -> tuple[Path, dict]:
    """Convert ``src`` (format ``fmt`` or ``"auto"``) to a contrastlab checkpoint at ``out``.

    Returns the path and the ``converted`` record (source, format, whether a head was kept), with
    the model config and the source's ``epoch`` and ``step`` (None: not recorded).
    """
    from contrastlab.checkpoint import save_checkpoint

    _check_data_options(dataset, image_size)
    enc = read_encoder(src, fmt, keep_head)
    state = build_checkpoint(enc, str(src), keep_head, dataset, image_size)
    out = Path(out)
    save_checkpoint(out, state)
    return out, {
        **state["converted"],
        "model": state["config"]["model"],
        "epoch": state["epoch"],
        "step": state["step"],
    }
