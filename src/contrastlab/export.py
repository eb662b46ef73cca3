"""Export a trained backbone for other tools: torchvision, Detectron2, safetensors.

What is exported is the query encoder's backbone (``model.backbone``): a torchvision ``ResNet``
whose classifier is ``nn.Identity``. For LooC++ that is the shared trunk with the invariant head's
copy of ``layer4`` (the Z_0 branch): the other heads' ``layer4`` copies, and so the ``concat``
feature, are not in it. Projection heads, the momentum encoder and the queues are left out.
``contents_note`` says so in one line, which ``contrastlab export`` prints for every format.

* ``torchvision``: ``torch.save`` of a plain state dict with torchvision's key names and **no
  ``fc`` keys** — a self-supervised model has no classifier, and a made-up one would load silently
  and predict nonsense. Load it with::

      net = torchvision.models.resnet18()
      net.fc = torch.nn.Identity()                 # the backbone outputs pooled features
      # CIFAR stem only (model.cifar_stem=true):
      net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False); net.maxpool = torch.nn.Identity()
      net.load_state_dict(torch.load("backbone.pt", weights_only=True), strict=True)

  To fine-tune a classifier instead, load with ``strict=False`` into a model with a new ``fc``
  (then ``missing_keys`` is exactly ``["fc.weight", "fc.bias"]``). A width multiplier other than 1
  changes the channel counts; build the same architecture (``contrastlab.models.build_backbone``).
* ``detectron2``: a pickle of ``{"model": {name: numpy array}, "__author__": "contrastlab",
  "matching_heuristics": True}`` with Detectron2's ResNet names, as MoCo's
  ``convert-pretrain-to-detectron2.py`` produces (``num_batches_tracked`` is dropped). Detectron2's
  ResNet needs ``MODEL.RESNETS.DEPTH`` and, for another width, ``STEM_OUT_CHANNELS`` /
  ``RES2_OUT_CHANNELS`` / ``WIDTH_PER_GROUP`` (R50 only). A backbone it cannot hold (a CIFAR
  stem; another width of a ResNet-18/34; stages that do not double) is refused with a
  ``UserError`` before anything is written (``detectron2_problem``).
* ``safetensors``: the same tensors and names as ``torchvision``, plus string metadata (backbone,
  width, CIFAR stem, method, image size; for an encoder converted from another project, a setting
  its file does not record reads ``unknown (converted from <file>)``); needs the optional extra
  ``pip install safetensors``.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from contrastlab.atomic import write_atomic
from contrastlab.errors import UserError, as_path

FORMATS = ("torchvision", "detectron2", "safetensors")


def backbone_state_dict(backbone: nn.Module) -> dict[str, Tensor]:
    """The backbone's weights and buffers without the classifier, as contiguous CPU tensors."""
    return {
        k: v.detach().cpu().contiguous().clone()
        for k, v in backbone.state_dict().items()
        if not k.startswith("fc.")
    }


def detectron2_key(key: str) -> str:
    """torchvision ResNet name → Detectron2 ResNet name.

    ``layerN`` → ``res{N+1}``, anything outside the stages goes under ``stem.``;
    ``downsample.0`` → ``shortcut``, ``downsample.1`` → ``shortcut.norm``, ``bnI`` → ``convI.norm``.
    """
    head, _, rest = key.partition(".")
    match = re.fullmatch(r"layer(\d+)", head)
    key = f"res{int(match.group(1)) + 1}.{rest}" if match else f"stem.{key}"
    key = key.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
    return re.sub(r"(^|\.)bn(\d+)\.", r"\1conv\2.norm.", key)


def detectron2_dict(state: dict[str, Tensor]) -> dict:
    model = {
        detectron2_key(k): v.numpy()
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }
    return {"model": model, "__author__": "contrastlab", "matching_heuristics": True}


def export_backbone(
    backbone: nn.Module, fmt: str, out: str | os.PathLike, metadata: dict[str, str] | None = None
) -> Path:
    """Write ``backbone``'s weights to ``out`` in format ``fmt``; returns the path."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}'; valid: {', '.join(FORMATS)}")
    if fmt == "detectron2":
        problem = detectron2_problem(*_architecture(backbone))
        if problem is not None:
            raise _refuse_detectron2(problem)
    state = backbone_state_dict(backbone)
    out = Path(out)
    if fmt == "torchvision":

        def write(f):
            torch.save(state, f)

    elif fmt == "detectron2":

        def write(f):
            pickle.dump(detectron2_dict(state), f)

    else:
        try:
            from safetensors.torch import save
        except ImportError:
            raise UserError(
                "--format safetensors needs the safetensors package: pip install "
                "safetensors (or pip install 'contrastlab[safetensors]')"
            ) from None
        meta = {k: str(v) for k, v in (metadata or {}).items()}

        def write(f):
            f.write(save(state, metadata=meta))

    # a temporary file in the same folder renamed into place; removed on any error, and a full
    # disk is one line (contrastlab.atomic)
    write_atomic(out, write)
    return out


def _stage_widths(width: float) -> list[int]:
    return [max(1, round(c * width)) for c in (64, 128, 256, 512)]


def loading_note(
    backbone: str, width: float, cifar_stem: bool, fmt: str = "torchvision", path: str = "FILE"
) -> str:
    """One line on how the exported backbone loads, for ``contrastlab export`` to print.

    ``torchvision`` and ``safetensors`` (the same tensors): into torchvision's own constructor as
    is (width 1, ImageNet stem), with the CIFAR stem swapped in, or not at all (another width
    changes every layer's channels). ``detectron2``: the settings of Detectron2's ResNet config
    that the file needs, or why Detectron2's ResNet cannot hold it (a CIFAR stem; another width of
    a ResNet-18/34). ``path``: the exported file, as the note names it."""
    if fmt == "detectron2":
        return _detectron2_note(backbone, width, cifar_stem, path)
    if fmt == "safetensors":
        read = f"safetensors.torch.load_file({str(path)!r})"
    else:
        read = f"torch.load({str(path)!r}, weights_only=True)"
    if width != 1:
        stages = "-".join(map(str, _stage_widths(width)))
        # one line of Python that runs as it is printed (tests/eval/test_export.py runs it)
        imports = "import safetensors.torch" if fmt == "safetensors" else "import torch"
        code = (
            f"{imports}; from contrastlab.config import ModelConfig; from contrastlab.models "
            f"import build_backbone; net, _ = build_backbone(ModelConfig(backbone={backbone!r}, "
            f"width={width!r}, cifar_stem={cifar_stem!r})); net.load_state_dict({read})"
        )
        return (
            f"note: this {backbone} has width {width:g} (stage widths {stages}, torchvision's "
            f"are 64-128-256-512), so torchvision.models.{backbone}() cannot load it; build the "
            f"same network with contrastlab and load the file into it: `{code}` "
            "(docs/evaluation.md, export)"
        )
    if cifar_stem:
        return (
            f"note: this {backbone} has the CIFAR stem: load {read} into torchvision.models."
            f"{backbone}() after net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False), "
            "net.maxpool = net.fc = torch.nn.Identity() (docs/evaluation.md, export)"
        )
    return (
        f"load {read} into torchvision.models.{backbone}() after net.fc = torch.nn.Identity() "
        "(docs/evaluation.md, export)"
    )


_DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50}


def detectron2_problem(backbone: str, stages: list[int], cifar_stem: bool) -> str | None:
    """Why Detectron2's ResNet (``build_resnet_backbone``) cannot hold this backbone, or None.

    Its stem is a 7x7 stride-2 conv with max-pool (BasicStem), ``RES2_OUT_CHANNELS`` is fixed at
    64 for R18/R34, and each stage is twice the previous one's width. ``stages``: the output
    width of each stage's first 3x3 (or bottleneck) conv, 64-128-256-512 for torchvision's."""
    if backbone not in _DEPTHS:
        return f"contrastlab knows Detectron2's settings for resnet18/34/50 only, not {backbone}"
    if cifar_stem:
        return (
            f"this {backbone} has the CIFAR stem (3x3 stride-1 conv1, no max-pool), which has no "
            "Detectron2 equivalent (its ResNet stem is a 7x7 stride-2 conv with max-pool)"
        )
    widths = "-".join(map(str, stages))
    if _DEPTHS[backbone] < 50 and stages[0] != 64:
        return (
            f"this {backbone} has stage widths {widths}, and Detectron2 requires "
            "MODEL.RESNETS.RES2_OUT_CHANNELS 64 for R18/R34"
        )
    if not all(b == 2 * a for a, b in zip(stages, stages[1:])):
        return (
            f"this {backbone} has stage widths {widths}, and Detectron2's stages each double the "
            "previous one's width"
        )
    return None


def _refuse_detectron2(problem: str) -> UserError:
    return UserError(
        f"--format detectron2: {problem}, so Detectron2's ResNet cannot load it; nothing was "
        "written; export it with --format torchvision or --format safetensors (their note says "
        "how to load it)"
    )


def _detectron2_note(backbone: str, width: float, cifar_stem: bool, path: str) -> str:
    """The settings of Detectron2's ResNet config that the file needs (``detectron2_problem``:
    why there are none)."""
    stages = _stage_widths(width)
    where = " (docs/evaluation.md, export)"
    problem = detectron2_problem(backbone, stages, cifar_stem)
    if problem is not None:
        return f"note: {problem}: Detectron2's ResNet cannot load it" + where
    depth = _DEPTHS[backbone]
    settings = [f"MODEL.RESNETS.DEPTH {depth}"]
    if depth >= 50:
        settings += [
            f"MODEL.RESNETS.STEM_OUT_CHANNELS {stages[0]}",
            f"MODEL.RESNETS.RES2_OUT_CHANNELS {stages[0] * 4}",
            f"MODEL.RESNETS.WIDTH_PER_GROUP {stages[0]}",
            "MODEL.RESNETS.STRIDE_IN_1X1 False",  # torchvision strides in the 3x3 conv
        ]
    else:
        settings.append("MODEL.RESNETS.RES2_OUT_CHANNELS 64")
    return (
        f"load it into Detectron2's ResNet with MODEL.WEIGHTS {path}, "
        + ", ".join(settings)
        + ", INPUT.FORMAT RGB and MODEL.PIXEL_MEAN / PIXEL_STD the training normalization "
        "x 255" + where
    )


def _architecture(backbone: nn.Module) -> tuple[str, list[int], bool]:
    """(torchvision name, stage widths, CIFAR stem) of a contrastlab / torchvision ResNet."""
    blocks = tuple(len(backbone.get_submodule(f"layer{i}")) for i in range(1, 5))
    first = [backbone.get_submodule(f"layer{i}")[0] for i in range(1, 5)]
    bottleneck = hasattr(first[0], "conv3")
    name = {
        ((2, 2, 2, 2), False): "resnet18",
        ((3, 4, 6, 3), False): "resnet34",
        ((3, 4, 6, 3), True): "resnet50",
    }.get((blocks, bottleneck), f"ResNet with {'-'.join(map(str, blocks))} blocks")
    cifar_stem = tuple(backbone.conv1.kernel_size) == (3, 3)
    return name, [b.conv1.out_channels for b in first], cifar_stem


def contents_note(
    cfg, spaces: tuple[str, ...] | None = None, checkpoint: str = "CHECKPOINT"
) -> str:
    """One line on what an export of this run's checkpoint holds and what it leaves out, for
    ``contrastlab export`` to print whatever the format, and how to get what is left out from the
    checkpoint itself. ``spaces``: the checkpoint's feature spaces
    (``checkpoint.checkpoint_feature_spaces``), by default the config's."""
    from contrastlab.config import feature_spaces

    spaces = tuple(spaces or feature_spaces(cfg))
    heads = [s for s in spaces if s not in ("backbone", "concat")]
    where = " (docs/evaluation.md, export)"
    looc = cfg.method == "looc"
    left = f"the momentum encoder and the queue{'s' if looc else ''}"
    if heads:
        left = f"the projection head{'s' if len(heads) > 1 else ''} ({', '.join(heads)}), {left}"
    if looc and cfg.looc.plus_plus:
        copies = ", ".join(s for s in heads if s != "z0")
        code = (
            f"from contrastlab.checkpoint import load_model; model, _ = load_model({checkpoint!r}); "
            "feats = model.features(images, 'concat')"
        )
        return (
            "the file holds the LooC++ Z_0 branch only: conv1..layer3 (shared) and the Z_0 "
            "head's own layer4, whose output is the space `backbone`, not `concat`; not in it: the "
            f"per-augmentation layer4 copies ({copies}) and so the `concat` feature (the paper's "
            f"LooC++ feature, which the loocpp_* presets evaluate), {left}; for `concat` "
            f"features use the checkpoint: contrastlab eval knn {checkpoint} --space concat, or "
            f"in Python `{code}`" + where
        )
    if looc:
        return (
            "the file holds the LooC backbone that every head shares: its output V is the space "
            f"`backbone` (the paper's LooC feature); not in it: {left}; for a head's space use "
            f"the checkpoint: contrastlab eval knn {checkpoint} --space z0" + where
        )
    return (
        f"the file holds the query encoder's backbone (the space `backbone`); not in it: {left}"
        + where
    )


def export_checkpoint(checkpoint: str | os.PathLike, fmt: str, out: str | os.PathLike) -> Path:
    """Load a contrastlab checkpoint and export its query backbone. A format whose consumer
    cannot load it (``detectron2_problem``) is refused before the model is rebuilt."""
    from contrastlab.checkpoint import (
        dotted_value,
        model_from_state,
        read_checkpoint,
        shown_config,
    )
    from contrastlab.config import config_from_dict

    if fmt not in FORMATS:  # fail before the (slow) model rebuild
        raise UserError(f"unknown export format '{fmt}'; valid: {', '.join(FORMATS)}")
    as_path(out, "out")
    state = read_checkpoint(checkpoint)
    cfg = config_from_dict(state["config"])
    if fmt == "detectron2":
        m = cfg.model
        problem = detectron2_problem(m.backbone, _stage_widths(m.width), m.cifar_stem)
        if problem is not None:
            raise _refuse_detectron2(problem)
    model, cfg, _ = model_from_state(Path(checkpoint), state, "cpu")
    shown = shown_config(state)  # a converted encoder's unknown settings said as such
    meta = {
        "format": "contrastlab-backbone",
        "backbone": cfg.model.backbone,
        "width": str(cfg.model.width),
        "cifar_stem": json.dumps(cfg.model.cifar_stem),
        "method": str(shown["method"]),
        "image_size": str(dotted_value(shown, "data.image_size")),
    }
    return export_backbone(model.backbone, fmt, out, meta)
