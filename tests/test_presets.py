"""Presets say what they mean: the MoCo CIFAR-10 demo's settings, LooC's augmentation at every
resolution, the plain-BN warning, and every `contrastlab train` command the docs show."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest

from contrastlab.config import load_config
from contrastlab.data.datasets import dataset_stats
from contrastlab.train import Trainer, plain_bn_warning

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# -- the official MoCo CIFAR-10 demo (moco_v2_cifar) --------------------------------------------


def test_moco_v2_cifar_is_the_official_demo():
    """The settings of the demo notebook (docs: /work/shared/papers/moco.md, 'CIFAR-10 demo')."""
    cfg = load_config("moco_v2_cifar")
    assert (cfg.model.backbone, cfg.model.cifar_stem, cfg.model.head, cfg.model.dim) == (
        "resnet18",
        True,
        "linear",
        128,
    )
    assert cfg.model.bn_splits == 8
    assert (cfg.moco.queue_size, cfg.moco.momentum, cfg.moco.temperature) == (4096, 0.99, 0.1)
    o = cfg.optim
    assert (o.epochs, o.batch_size, o.lr, o.weight_decay, o.schedule) == (
        200,
        512,
        0.06,
        5e-4,
        "cosine",
    )
    # RandomResizedCrop(32): torchvision's default scale (0.08, 1); no blur
    assert cfg.augment.crop_scale_min == 0.08 and cfg.augment.blur is False
    # the monitor: k 200, T 0.1, on the normalized 128-d output of the encoder
    assert (cfg.train.knn_k, cfg.train.knn_temperature, cfg.train.knn_space) == (200, 0.1, "z")
    demo_stats = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    assert dataset_stats("cifar10") == demo_stats
    assert dataset_stats("imagefolder", 32) == demo_stats  # CIFAR-10 as image files


def test_the_demo_keeps_the_recipe_it_was_tuned_with():
    cfg = load_config("demo")
    assert cfg.augment.crop_scale_min == 0.2 and cfg.train.knn_space == "backbone"


# -- blur at every resolution ------------------------------------------------------------------


def _blurs(cfg) -> bool:
    """Whether the training views of ``cfg`` apply Gaussian blur, read off both view pipelines
    (batched recipe and per-image transforms), which must agree."""
    from contrastlab.views.pipeline import per_image_transform
    from contrastlab.views.recipes import recipe_from_config

    atomic = cfg.looc.augmentations if cfg.method == "looc" else ()
    stats = ((0.5,) * 3, (0.25,) * 3)
    batched = recipe_from_config(cfg.augment, cfg.data.image_size, *stats, atomic).blur
    images = SimpleNamespace(mean=stats[0], std=stats[1], image_size=cfg.data.image_size)
    text = repr(per_image_transform(cfg, images, 2))
    per_image = "GaussianBlur" in text or "blur=True" in text
    assert batched == per_image, text
    return batched


@pytest.mark.parametrize("preset", ["looc_color", "looc_all", "loocpp_color_rotation"])
def test_looc_follows_moco_v2s_blur_rule(preset):
    small = load_config(preset)
    large = load_config(preset, ["data.image_size=224", "model.cifar_stem=false"])
    assert not _blurs(small) and _blurs(large)
    assert small.augment.crop_scale_min == 0.2  # MoCo v2's crop, on which the paper builds


# -- documented commands ---------------------------------------------------------------------


def _code_blocks(text: str) -> list[str]:
    """Fenced blocks and 4-space-indented blocks of a markdown file."""
    blocks = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
    indented, current = [], []
    for line in re.sub(r"```.*?```", "", text, flags=re.S).splitlines():
        if line.startswith("    ") or (current and not line.strip()):
            current.append(line[4:])
        elif current:
            indented.append("\n".join(current))
            current = []
    if current:
        indented.append("\n".join(current))
    return blocks + indented


def documented_train_commands() -> list[tuple[str, bool, list[str]]]:
    """(where, under torchrun, arguments after 'train') of every documented training command."""
    found = []
    for doc in DOCS:
        for block in _code_blocks(doc.read_text()):
            joined = block.replace("\\\n", " ")
            for line in joined.splitlines():
                if "contrastlab train" not in line:
                    continue
                line = line.split(";", 1)[1] if line.strip().startswith("for ") else line
                line = line.split("; done")[0].replace("$m", "0.99")  # the momentum loop
                words = shlex.split(line)
                starts = [
                    i
                    for i, w in enumerate(words[:-1])
                    if w == "contrastlab" and words[i + 1] == "train"
                ]
                if not starts:  # "contrastlab train" inside a quoted string, not a command
                    continue
                args = words[starts[0] + 2 :]
                found.append((f"{doc.name}: {line.strip()}", "torchrun" in words, args))
    return found


def _resolve(args: list[str]):
    source, overrides, i = None, [], 0
    while i < len(args):
        if args[i] in ("--config", "-c"):
            source, i = args[i + 1], i + 2
            continue
        overrides.append(args[i])
        i += 1
    if source and source.endswith(".yaml"):
        source = str(ROOT / source)
    return load_config(source, overrides)


COMMANDS = documented_train_commands()


def test_the_docs_show_train_commands():
    where = " ".join(w for w, _, _ in COMMANDS)
    assert len(COMMANDS) >= 10 and "looc.md" in where and "README.md" in where


@pytest.mark.parametrize("where,torchrun,args", COMMANDS, ids=[w for w, _, _ in COMMANDS])
def test_every_documented_train_command_resolves_to_what_its_doc_says(where, torchrun, args):
    cfg = _resolve(args)
    # MoCo v2's blur is on above 64 px (docs/datasets.md, docs/looc.md say so)
    if cfg.augment.recipe == "moco_v2" and cfg.data.image_size > 64:
        assert _blurs(cfg), f"{where}: MoCo v2 at {cfg.data.image_size} px without blur"
    # a single-process command never trains without shuffle BN silently
    if not torchrun:
        assert plain_bn_warning(cfg, 1) is None, f"{where}: plain BN on one process"


def test_the_looc_imagenet100_command_is_the_papers_protocol():
    (cmd,) = [a for w, _, a in COMMANDS if "looc.md" in w and "IN100" in w]
    cfg = _resolve(cmd)
    assert _blurs(cfg) and cfg.augment.crop_scale_min == 0.2
    assert (cfg.model.backbone, cfg.data.image_size, cfg.moco.queue_size) == (
        "resnet50",
        224,
        16384,
    )
    assert (cfg.optim.epochs, cfg.optim.milestones, cfg.moco.momentum) == (500, [300, 400], 0.999)


# -- plain batch norm on one process -----------------------------------------------------------


def test_one_process_with_plain_bn_warns_on_stderr_and_in_the_log(tiny_config, capsys):
    assert plain_bn_warning(load_config("moco_v2", ["data.path=/x"]), 1) is not None
    assert plain_bn_warning(load_config("moco_v2", ["data.path=/x"]), 8) is None
    assert (
        plain_bn_warning(load_config("moco_v2", ["data.path=/x", "model.bn_splits=8"]), 1) is None
    )
    assert (
        plain_bn_warning(load_config("moco_v2", ["data.path=/x", "model.shuffle_bn=false"]), 1)
        is None
    )
    cfg = tiny_config("model.bn_splits=1", "optim.epochs=1", "train.knn_every=0")
    Trainer(cfg).fit()
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(err) == 1 and "model.bn_splits=8" in err[0]
    assert '"event": "warning"' in (cfg.run_dir / "metrics.jsonl").read_text()
