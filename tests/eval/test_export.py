import pickle

import pytest
import torch
import torchvision
from torch import nn

from contrastlab.config import ModelConfig
from contrastlab.errors import UserError
from contrastlab.export import detectron2_key, export_backbone
from contrastlab.models.backbones import build_backbone


def _trained_looking(net: nn.Module) -> nn.Module:
    """Non-default BN statistics, so that a forgotten buffer would change the outputs."""
    gen = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return net.eval()


@pytest.mark.parametrize("cifar_stem", [False, True])
def test_torchvision_export_loads_strict_and_matches(tmp_path, cifar_stem):
    ours, dim = build_backbone(ModelConfig(backbone="resnet18", cifar_stem=cifar_stem))
    ours = _trained_looking(ours)
    path = export_backbone(ours, "torchvision", tmp_path / "backbone.pt")
    state = torch.load(path, weights_only=True)
    assert not any(k.startswith("fc.") for k in state)

    net = torchvision.models.resnet18()
    net.fc = nn.Identity()  # as documented: the export has no classifier
    if cifar_stem:
        net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    net.load_state_dict(state, strict=True)
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), ours(x))
    assert net(x).shape == (2, dim)
    # fine-tuning a new classifier: exactly the fc keys are missing
    clf = torchvision.models.resnet18(num_classes=10)
    if cifar_stem:
        clf.conv1, clf.maxpool = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.Identity()
    missing = clf.load_state_dict(state, strict=False)
    assert sorted(missing.missing_keys) == ["fc.bias", "fc.weight"] and not missing.unexpected_keys


def test_detectron2_key_names():
    assert detectron2_key("conv1.weight") == "stem.conv1.weight"
    assert detectron2_key("bn1.running_var") == "stem.conv1.norm.running_var"
    assert detectron2_key("layer1.0.conv2.weight") == "res2.0.conv2.weight"
    assert detectron2_key("layer1.1.bn2.bias") == "res2.1.conv2.norm.bias"
    assert detectron2_key("layer2.0.downsample.0.weight") == "res3.0.shortcut.weight"
    assert (
        detectron2_key("layer4.0.downsample.1.running_mean") == "res5.0.shortcut.norm.running_mean"
    )
    assert detectron2_key("layer3.5.bn3.weight") == "res4.5.conv3.norm.weight"


@pytest.mark.parametrize(
    "arch,blocks,convs", [("resnet18", (2, 2, 2, 2), 2), ("resnet50", (3, 4, 6, 3), 3)]
)
def test_detectron2_file(tmp_path, arch, blocks, convs):
    net = getattr(torchvision.models, arch)()
    net.fc = nn.Identity()
    path = export_backbone(net, "detectron2", tmp_path / "d2.pkl")
    with open(path, "rb") as f:
        data = pickle.load(f)
    assert data["__author__"] == "contrastlab" and data["matching_heuristics"] is True
    names = set(data["model"])
    expected = {
        "stem.conv1.weight",
        "stem.conv1.norm.weight",
        "stem.conv1.norm.bias",
        "stem.conv1.norm.running_mean",
        "stem.conv1.norm.running_var",
    }
    for stage, n in enumerate(blocks, start=2):
        for b in range(n):
            for c in range(1, convs + 1):
                expected |= {
                    f"res{stage}.{b}.conv{c}.weight",
                    f"res{stage}.{b}.conv{c}.norm.weight",
                    f"res{stage}.{b}.conv{c}.norm.bias",
                    f"res{stage}.{b}.conv{c}.norm.running_mean",
                    f"res{stage}.{b}.conv{c}.norm.running_var",
                }
        if stage > 2 or convs == 3:
            expected |= {
                f"res{stage}.0.shortcut.weight",
                f"res{stage}.0.shortcut.norm.weight",
                f"res{stage}.0.shortcut.norm.bias",
                f"res{stage}.0.shortcut.norm.running_mean",
                f"res{stage}.0.shortcut.norm.running_var",
            }
    assert names == expected
    w = data["model"]["res2.0.conv1.weight"]
    assert type(w).__module__ == "numpy" and tuple(w.shape) == tuple(
        net.layer1[0].conv1.weight.shape
    )


def test_safetensors_export(tmp_path):
    """The file loads, strictly, into torchvision's own ResNet-18 and gives the same features."""
    import safetensors.torch as st  # in the ``test`` extra: this test runs, it does not skip

    ours = _trained_looking(build_backbone(ModelConfig(backbone="resnet18", cifar_stem=True))[0])
    path = export_backbone(ours, "safetensors", tmp_path / "b.safetensors", {"cifar_stem": "true"})
    net = torchvision.models.resnet18()
    net.fc = nn.Identity()
    net.conv1, net.maxpool = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.Identity()
    net.load_state_dict(st.load_file(str(path)), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), ours(x))


def test_safetensors_missing_package_is_a_user_error(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name.startswith("safetensors"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    net = torchvision.models.resnet18()
    with pytest.raises(UserError, match="pip install safetensors"):
        export_backbone(net, "safetensors", tmp_path / "x.safetensors")
    with pytest.raises(UserError, match="unknown export format"):
        export_backbone(net, "onnx", tmp_path / "x.onnx")


@pytest.mark.parametrize("fmt", ["torchvision", "detectron2", "safetensors"])
def test_every_export_format_gets_the_same_file_mode(tmp_path, fmt):
    """An export is a file for other tools and people: the mode a new file of this user gets
    (umask), whatever library wrote it (safetensors' writer alone made it 0600)."""
    import os

    # a backbone that Detectron2's ResNet can hold (a CIFAR stem is refused for detectron2)
    ours = build_backbone(ModelConfig(backbone="resnet50", width=0.25))[0]
    path = export_backbone(ours, fmt, tmp_path / f"b.{fmt}")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("fmt", ["torchvision", "safetensors"])
@pytest.mark.parametrize("width, cifar_stem", [(1.0, False), (1.0, True), (0.5, True)])
def test_the_loading_note_matches_what_torchvision_can_load(tmp_path, width, cifar_stem, fmt):
    """``contrastlab export`` prints this note: it must say "cannot" exactly when torchvision's
    constructor, changed as the note says, refuses the weights, and name the reader of the
    format (torch.load for a torchvision file, safetensors' load_file for a safetensors one)."""
    import safetensors.torch

    from contrastlab.export import loading_note

    ours, _ = build_backbone(ModelConfig(backbone="resnet18", width=width, cifar_stem=cifar_stem))
    path = export_backbone(ours, fmt, tmp_path / f"b.{fmt}")
    note = loading_note("resnet18", width, cifar_stem, fmt, str(path))
    if fmt == "safetensors":
        assert f"safetensors.torch.load_file({str(path)!r})" in note and "torch.load(" not in note
        state = safetensors.torch.load_file(str(path))
    else:
        assert f"torch.load({str(path)!r}, weights_only=True)" in note
        state = torch.load(path, weights_only=True)
    net = torchvision.models.resnet18()
    net.fc = nn.Identity()
    if "net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)" in note:
        net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        assert "net.maxpool = net.fc = torch.nn.Identity()" in note
        net.maxpool = nn.Identity()
    if "cannot load it" in note:
        widths = [ours.get_submodule(f"layer{i}")[0].conv1.out_channels for i in range(1, 5)]
        assert f"stage widths {'-'.join(map(str, widths))}" in note
        with pytest.raises(RuntimeError, match="size mismatch"):
            net.load_state_dict(state, strict=True)
    else:
        net.load_state_dict(state, strict=True)
    assert ("cannot" in note) == (width != 1) and ("CIFAR stem" in note) == (
        cifar_stem and width == 1
    )


@pytest.mark.parametrize(
    "arch, width, cifar_stem",
    [("resnet18", 1.0, False), ("resnet50", 1.0, False), ("resnet50", 0.5, False)],
)
def test_the_detectron2_note_gives_the_config_the_file_needs(tmp_path, arch, width, cifar_stem):
    """The note names Detectron2's ResNet settings, and they agree with the exported tensors:
    depth, stem width, res2 output width, bottleneck width; no torchvision advice."""
    from contrastlab.export import loading_note

    ours, _ = build_backbone(ModelConfig(backbone=arch, width=width, cifar_stem=cifar_stem))
    path = export_backbone(ours, "detectron2", tmp_path / "d2.pkl")
    note = loading_note(arch, width, cifar_stem, "detectron2", str(path))
    assert "torchvision" not in note and "cannot" not in note
    assert f"MODEL.WEIGHTS {path}" in note and f"MODEL.RESNETS.DEPTH {arch[6:]}" in note
    assert "INPUT.FORMAT RGB" in note
    with open(path, "rb") as f:
        model = pickle.load(f)["model"]
    if arch == "resnet50":
        stem = model["stem.conv1.weight"].shape[0]
        assert f"MODEL.RESNETS.STEM_OUT_CHANNELS {stem}," in note
        assert f"RES2_OUT_CHANNELS {model['res2.0.conv3.weight'].shape[0]}," in note
        assert f"WIDTH_PER_GROUP {model['res2.0.conv1.weight'].shape[0]}," in note
        assert "STRIDE_IN_1X1 False" in note
    else:
        assert model["res2.0.conv2.weight"].shape[0] == 64 and "RES2_OUT_CHANNELS 64" in note


@pytest.mark.parametrize(
    "arch, width, cifar_stem, why",
    [
        ("resnet18", 1.0, True, "no Detectron2 equivalent"),
        ("resnet50", 0.5, True, "no Detectron2 equivalent"),
        ("resnet18", 0.5, False, "RES2_OUT_CHANNELS 64 for R18/R34"),
    ],
)
def test_the_detectron2_note_says_what_detectron2_cannot_hold(arch, width, cifar_stem, why):
    """A CIFAR stem has no Detectron2 equivalent; a ResNet-18/34 of another width neither."""
    from contrastlab.export import loading_note

    note = loading_note(arch, width, cifar_stem, "detectron2")
    assert why in note and "cannot load it" in note and "\n" not in note
    assert "torchvision.models" not in note


@pytest.mark.parametrize("fmt", ["torchvision", "safetensors"])
@pytest.mark.parametrize(
    "arch, width, cifar_stem", [("resnet18", 0.25, True), ("resnet50", 0.5, False)]
)
def test_the_note_for_another_width_is_code_that_loads_the_export(
    tmp_path, fmt, arch, width, cifar_stem
):
    """It said "build the same network with contrastlab.models.build_backbone", which takes a
    ModelConfig that neither the note nor the docs named: the note's code, run as printed,
    builds the network and loads the file."""
    from contrastlab.export import loading_note

    ours = _trained_looking(
        build_backbone(ModelConfig(backbone=arch, width=width, cifar_stem=cifar_stem))[0]
    )
    path = export_backbone(ours, fmt, tmp_path / f"b.{fmt}")
    note = loading_note(arch, width, cifar_stem, fmt, str(path))
    call = f"build_backbone(ModelConfig(backbone='{arch}', width={width}, cifar_stem={cifar_stem}))"
    assert call in note and "from contrastlab.config import ModelConfig" in note
    code = note.split("`")[1]  # the one line between backticks
    scope: dict = {}
    exec(code, scope)  # noqa: S102 - the note's own line, as a user would paste it
    net = scope["net"].eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), ours(x))


# ----------------------------------------------------------------------------------------------
# contrastlab export: what the file holds, and formats whose consumer cannot load it
# ----------------------------------------------------------------------------------------------

# a backbone that every format's consumer can load: Detectron2's R50 settings exist for it
FITS_ALL = ("model.backbone=resnet50", "model.cifar_stem=false", "data.image_size=32")


def _export(argv, capsys) -> tuple[int, list[str], str]:
    from contrastlab.cli import main

    capsys.readouterr()
    code = main(["export", *argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.strip()


@pytest.mark.parametrize("fmt", ["torchvision", "detectron2", "safetensors"])
@pytest.mark.parametrize("preset", ["loocpp_color_rotation", "looc_color", "moco_v2_cifar"])
def test_the_export_says_what_the_file_holds_and_what_it_leaves_out(tmp_path, capsys, preset, fmt):
    """A LooC++ export is the Z_0 branch only, while its presets evaluate `concat`: the command
    said nothing of it (only docs/looc.md did). Every format prints what is in the file, what is
    not, and how to get the rest from the checkpoint; the Python line it gives runs as printed."""
    from helpers import untrained_checkpoint

    from contrastlab.checkpoint import load_model

    ckpt = untrained_checkpoint(tmp_path / "c.pt", *FITS_ALL, preset=preset)
    code, lines, err = _export([str(ckpt), "--format", fmt, "--out", str(tmp_path / "b")], capsys)
    assert code == 0, err
    assert len(lines) == 3 and lines[0].startswith("backbone written to")
    note = lines[1]
    assert note.startswith("the file holds") and "; not in it: " in note
    assert "momentum encoder" in note
    model, _ = load_model(ckpt)
    if preset.startswith("loocpp"):
        assert "Z_0 branch only" in note and "not `concat`" in note
        assert "layer4 copies (color, rotation)" in note and "heads (z0, color, rotation)" in note
        assert f"contrastlab eval knn {ckpt} --space concat" in note
        images = torch.randn(2, 3, 32, 32)
        scope: dict = {"images": images}
        exec(note.split("`")[-2], scope)  # noqa: S102 - the note's own line, as printed
        with torch.no_grad():
            assert torch.equal(scope["feats"], model.features(images, "concat"))
    elif preset.startswith("looc"):
        assert "every head shares" in note and "heads (z0, color)" in note
        assert "concat" not in note and f"eval knn {ckpt} --space z0" in note
    else:
        assert "query encoder's backbone" in note and "projection head (z)" in note


@pytest.mark.parametrize(
    "overrides, why",
    [
        (("model.cifar_stem=true",), "CIFAR stem"),
        (("model.cifar_stem=false", "model.width=0.5"), "RES2_OUT_CHANNELS 64 for R18/R34"),
        (
            ("model.cifar_stem=false", "model.backbone=resnet50", "model.width=0.3"),
            "stages each double",
        ),
    ],
)
def test_detectron2_export_of_a_backbone_detectron2_cannot_hold_is_refused(
    tmp_path, capsys, overrides, why
):
    """It wrote the file and exited 0 while its own note said Detectron2 cannot load it: now one
    line, exit 2, nothing written, and the formats that fit are named."""
    from helpers import temporary_files, untrained_checkpoint

    ckpt = untrained_checkpoint(tmp_path / "c.pt", *overrides)
    out = tmp_path / "d2.pkl"
    code, lines, err = _export([str(ckpt), "--format", "detectron2", "--out", str(out)], capsys)
    assert code == 2 and lines == [] and len(err.splitlines()) == 1, err
    assert why in err and "cannot load it" in err
    assert "--format torchvision" in err and "--format safetensors" in err
    assert not out.exists() and temporary_files(tmp_path) == []
    # the library's own function refuses it too
    from contrastlab.checkpoint import load_model

    model, _ = load_model(ckpt)
    with pytest.raises(UserError, match=why):
        export_backbone(model.backbone, "detectron2", out)
    assert not out.exists()
