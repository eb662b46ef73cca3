"""Every preset against the values its paper publishes, key by key.

Sources: ../shared/papers/moco.md (the "Presets" table and the CIFAR-10 reference of the official
MoCo demo), feature-transformation.md ("Defaults used for the published numbers") and looc.md
(τ 0.2, the MoCo v2 MLP head, one queue per space). A preset that changes one of these values
(say ``moco_v2_cifar`` with m 0.999 and T 0.2) fails here with the key's name.
"""

from __future__ import annotations

import pytest

from contrastlab.config import load_config, preset_names

IMAGENET = ["data.path=/data/imagenet"]  # the ImageNet presets validate that a folder is given

# moco.md, "Presets": MoCo v1 and v2 on ImageNet (ResNet-50, batch 256, 200 epochs)
_IMAGENET_SCHEDULE = {
    "optim.batch_size": 256,
    "optim.lr": 0.03,
    "optim.momentum": 0.9,
    "optim.weight_decay": 1e-4,
    "optim.epochs": 200,
    "moco.queue_size": 65536,
    "moco.momentum": 0.999,
    "model.backbone": "resnet50",
    "model.dim": 128,
    "augment.crop_scale_min": 0.2,
    "data.image_size": 224,
}
MOCO_V1 = {
    **_IMAGENET_SCHEDULE,
    "model.head": "linear",
    "moco.temperature": 0.07,
    "augment.recipe": "moco_v1",
    "optim.schedule": "step",
    "optim.milestones": [120, 160],
}
MOCO_V2 = {
    **_IMAGENET_SCHEDULE,
    "model.head": "mlp",
    "model.head_hidden": 2048,
    "moco.temperature": 0.2,
    "augment.recipe": "moco_v2",
    "optim.schedule": "cosine",
}
# moco.md, "Small-scale reference": the official MoCo CIFAR-10 demo
MOCO_CIFAR = {
    "data.name": "cifar10",
    "data.image_size": 32,
    "model.backbone": "resnet18",
    "model.cifar_stem": True,
    "model.head": "linear",
    "model.dim": 128,
    "model.bn_splits": 8,
    "moco.queue_size": 4096,
    "moco.momentum": 0.99,
    "moco.temperature": 0.1,
    "moco.symmetric": False,
    "optim.lr": 0.06,
    "optim.batch_size": 512,
    "optim.weight_decay": 5e-4,
    "optim.momentum": 0.9,
    "optim.schedule": "cosine",
    "optim.epochs": 200,
    "augment.recipe": "moco_v2",  # ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2, flip
    "augment.blur": False,
    "augment.crop_scale_min": 0.08,  # RandomResizedCrop(32) with torchvision's default scale
    "train.knn_k": 200,
    "train.knn_temperature": 0.1,
    "train.knn_space": "z",  # the monitor reads the normalized 128-d output
}
# feature-transformation.md: α_ex 2.0, α_in 1.6, one λ per step, Beta, from the first epoch
FT = {
    "ft.pos": "extrapolate",
    "ft.neg": "interpolate",
    "ft.alpha_pos": 2.0,
    "ft.alpha_neg": 1.6,
    "ft.distribution": "beta",
    "ft.granularity": "step",
    "ft.renormalize": False,
    "ft.start_epoch": 0,
}
# looc.md: MoCo v2 settings (τ 0.2, MLP heads, 128-d) at the CIFAR scale of moco_v2_cifar
LOOC = {
    **{
        k: v
        for k, v in MOCO_CIFAR.items()
        if k not in ("model.head", "moco.temperature", "augment.crop_scale_min", "train.knn_space")
    },
    "augment.crop_scale_min": 0.2,  # MoCo v2's RandomResizedCrop scale (0.2, 1)
    "augment.blur": None,  # MoCo v2's rule: blur above 64 px only
    "method": "looc",
    "model.head": "mlp",
    "moco.temperature": 0.2,
}
LOOC_AUGMENTATIONS = {
    "color": ["color"],
    "rotation": ["rotation"],
    "texture": ["texture"],
    "color_rotation": ["color", "rotation"],
    "all": ["color", "rotation", "texture"],
}

EXPECTED = {
    "moco_v1": MOCO_V1,
    "moco_v2": MOCO_V2,
    "moco_v2_cifar": MOCO_CIFAR,
    "moco_v1_ft": {**MOCO_V1, **FT},
    "moco_v2_ft": {**MOCO_V2, **FT},
    "moco_v2_cifar_ft": {**MOCO_CIFAR, **FT},
}
for _suffix, _augs in LOOC_AUGMENTATIONS.items():
    for _pp in (False, True):
        EXPECTED[f"looc{'pp' if _pp else ''}_{_suffix}"] = {
            **LOOC,
            "looc.augmentations": _augs,
            "looc.plus_plus": _pp,
            # the downstream features: V for LooC, the concatenated layer4 outputs for LooC++
            "train.knn_space": "concat" if _pp else "backbone",
        }
# the CPU-sized demo: the reference's values except its stated changes (width, batch, lr with a
# warm-up, epochs, bf16)
EXPECTED["moco_v2_cifar_cpu"] = {
    **{
        k: v
        for k, v in MOCO_CIFAR.items()
        if k not in ("data.name", "optim.batch_size", "optim.epochs", "optim.lr")
    },
    "data.name": "imagefolder",
    "model.width": 0.25,
    "optim.batch_size": 256,
    "optim.lr": 0.15,
    "optim.warmup_epochs": 1,
    "optim.epochs": 60,
}
# the demo is not a published setting: only what it keeps from moco_v2_cifar is asserted
EXPECTED["demo"] = {
    "data.name": "synthetic",
    "model.cifar_stem": True,
    "model.head": "mlp",
    "moco.temperature": 0.5,  # the demo's own choice (docs/results.md §6)
    "moco.momentum": 0.99,
    "augment.recipe": "moco_v2",
}
PLAIN = {  # FT off and MoCo, unless the preset says otherwise
    "method": "moco",
    "ft.pos": "none",
    "ft.neg": "none",
}


def value(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def test_every_preset_has_published_values():
    assert set(preset_names()) == set(EXPECTED), "add the new preset's published values here"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_matches_its_paper_key_by_key(name):
    cfg = load_config(name, IMAGENET)
    assert cfg.name == name
    expected = {**PLAIN, **EXPECTED[name]}
    wrong = {
        key: (value(cfg, key), want) for key, want in expected.items() if value(cfg, key) != want
    }
    assert not wrong, f"{name}: key: (preset, published) {wrong}"
