"""contrastlab convert: each project's own key names, and a strict round trip to torchvision.

The source files are built here with the exact names each project writes (no downloads): a
torchvision ResNet with trained-looking weights is wrapped as facebookresearch/moco's main_moco.py,
PyContrast / Feature Transformation, lightly's and solo-learn's Lightning modules would save it.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from contrastlab.checkpoint import load_model, read_checkpoint
from contrastlab.cli import main
from contrastlab.convert import convert_checkpoint, read_encoder

LIGHTLY_CHILD = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6"}
LIGHTLY_CHILD["layer4"] = "7"


def _trained_looking(net: nn.Module, seed: int) -> nn.Module:
    """Random weights and non-default BN statistics: a forgotten tensor changes the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=gen) * 0.05)
    return net.eval()


def _source_net(arch: str = "resnet50", cifar_stem: bool = False, seed: int = 0) -> nn.Module:
    net = getattr(torchvision.models, arch)()
    if cifar_stem:
        net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    return _trained_looking(net, seed)


def _mlp(in_dim: int, hidden: int, dim: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))


def _backbone(net: nn.Module) -> dict:
    return {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}


def _prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


def _lightly_names(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        head, _, rest = k.partition(".")
        out[f"{LIGHTLY_CHILD[head]}.{rest}"] = v
    return out


def source_file(fmt: str, net: nn.Module, head: nn.Module | None, path) -> None:
    """Write ``net`` (+ ``head``) in ``fmt``'s own checkpoint layout."""
    bb = _backbone(net)
    hd = head.state_dict() if head is not None else {}
    if fmt == "moco":  # main_moco.py: DDP-wrapped MoCo; --mlp: fc = Sequential(Linear, ReLU, fc)
        sd = _prefixed(bb, "module.encoder_q.") | _prefixed(hd, "module.encoder_q.fc.")
        sd |= _prefixed(bb, "module.encoder_k.") | _prefixed(hd, "module.encoder_k.fc.")
        dim = head[-1].out_features
        sd["module.queue"] = nn.functional.normalize(torch.randn(dim, 64), dim=0)
        sd["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
        obj = {"epoch": 200, "arch": "resnet50", "state_dict": sd, "optimizer": {}}
    elif fmt == "ft":  # PyContrast ContrastTrainer.save: model under DDP, model_ema not
        model = _prefixed(bb, "module.encoder.") | _prefixed(hd, "module.head.")
        ema = _prefixed(bb, "encoder.") | _prefixed(hd, "head.")
        obj = {"model": model, "model_ema": ema, "contrast": {}, "optimizer": {}, "epoch": 200}
    elif fmt == "lightly":  # backbone = nn.Sequential(*list(resnet.children())[:-1])
        sd = _prefixed(_lightly_names(bb), "backbone.")
        sd |= _prefixed(_lightly_names(bb), "backbone_momentum.")
        sd |= _prefixed(hd, "projection_head.layers.")
        sd |= _prefixed(hd, "projection_head_momentum.layers.")
        obj = {"epoch": 9, "global_step": 100, "state_dict": sd}
    elif fmt == "solo-learn":  # MoCoV2Plus: backbone (fc = Identity), projector, classifier
        sd = _prefixed(bb, "backbone.") | _prefixed(bb, "momentum_backbone.")
        sd |= _prefixed(hd, "projector.") | _prefixed(hd, "momentum_projector.")
        sd["classifier.weight"] = torch.randn(10, net.fc.in_features)
        sd["classifier.bias"] = torch.zeros(10)
        dim = head[-1].out_features
        sd["queue"] = nn.functional.normalize(torch.randn(2, dim, 64), dim=1)
        sd["queue_ptr"] = torch.zeros(1, dtype=torch.long)
        obj = {"epoch": 399, "state_dict": sd}
    else:  # torchvision: the plain state dict, classifier included
        obj = net.state_dict()
    torch.save(obj, path)


FORMATS_WITH_HEAD = ["moco", "ft", "lightly", "solo-learn"]


@pytest.mark.parametrize("fmt", FORMATS_WITH_HEAD + ["torchvision"])
@pytest.mark.parametrize("given", ["named", "auto"])
def test_round_trip_to_torchvision_resnet50_is_exact(tmp_path, fmt, given):
    """convert -> export --format torchvision -> torchvision resnet50 (strict): same features."""
    net = _source_net("resnet50", seed=1)
    head = _mlp(2048, 256, 32, seed=2) if fmt != "torchvision" else None
    src = tmp_path / "src.pth"
    source_file(fmt, net, head, src)
    out = tmp_path / "converted.pt"
    given_fmt = fmt if given == "named" else "auto"
    assert main(["convert", str(src), "--from", given_fmt, "--out", str(out)]) == 0
    assert read_checkpoint(out)["converted"]["format"] == fmt
    exported = tmp_path / "backbone.pt"
    assert main(["export", str(out), "--format", "torchvision", "--out", str(exported)]) == 0

    fresh = torchvision.models.resnet50()
    fresh.fc = nn.Identity()  # the export has no classifier (docs/analysis.md, export.py)
    fresh.load_state_dict(torch.load(exported, weights_only=True), strict=True)
    fresh.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    net.fc = nn.Identity()
    with torch.no_grad():
        reference = net(x)
        assert torch.equal(fresh(x), reference)
        model, cfg = load_model(out)
        assert torch.equal(model.features(x, "backbone"), reference)
        if head is not None:  # the projection head came along: z = normalize(head(backbone))
            z = nn.functional.normalize(head(reference), dim=1)
            torch.testing.assert_close(model.features(x, "z"), z, rtol=0, atol=1e-6)
            assert cfg.model.head == "mlp" and cfg.model.dim == 32 and cfg.model.head_hidden == 256
            assert "z" in model.feature_spaces
        else:
            assert model.feature_spaces == ("backbone",)
    assert cfg.model.backbone == "resnet50" and not cfg.model.cifar_stem
    assert cfg.data.image_size == 224


def test_moco_v1_linear_head_and_queue(tmp_path):
    net = _source_net("resnet18", seed=4)
    torch.manual_seed(5)
    fc = nn.Linear(512, 16)
    bb = _backbone(net)
    queue = nn.functional.normalize(torch.randn(16, 24), dim=0)
    sd = _prefixed(bb, "module.encoder_q.") | {
        "module.encoder_q.fc.weight": fc.weight.detach(),
        "module.encoder_q.fc.bias": fc.bias.detach(),
        "module.queue": queue,
    }
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": sd}, tmp_path / "v1.pth")
    convert_checkpoint(tmp_path / "v1.pth", "auto", tmp_path / "v1.pt")
    model, cfg = load_model(tmp_path / "v1.pt")
    assert cfg.model.head == "linear" and cfg.model.dim == 16 and cfg.augment.recipe == "moco_v1"
    assert torch.equal(model.encoder_q.head.weight, fc.weight)
    # MoCo stores the queue as [dim, K]; contrastlab as [K, dim]
    torch.testing.assert_close(model.queue, queue.T)


def test_cifar_stem_solo_learn_resnet18(tmp_path):
    net = _source_net("resnet18", cifar_stem=True, seed=6)
    source_file("solo-learn", net, _mlp(512, 64, 16, seed=7), tmp_path / "solo.ckpt")
    convert_checkpoint(tmp_path / "solo.ckpt", "auto", tmp_path / "solo.pt")
    model, cfg = load_model(tmp_path / "solo.pt")
    assert cfg.model.cifar_stem and cfg.model.backbone == "resnet18"
    assert cfg.data.name == "cifar10" and cfg.data.image_size == 32
    x = torch.randn(2, 3, 32, 32)
    net.fc = nn.Identity()
    with torch.no_grad():
        assert torch.equal(model.features(x), net(x))


def test_no_head_keeps_backbone_only(tmp_path):
    net = _source_net("resnet18", seed=8)
    source_file("lightly", net, _mlp(512, 64, 16, seed=9), tmp_path / "l.ckpt")
    convert_checkpoint(tmp_path / "l.ckpt", "lightly", tmp_path / "l.pt", keep_head=False)
    model, _ = load_model(tmp_path / "l.pt")
    assert model.feature_spaces == ("backbone",)


def test_a_copied_momentum_encoder_is_stored_once(tmp_path):
    """A source without a momentum encoder: the file holds the backbone once, not twice."""
    net = _source_net("resnet18", seed=10)
    source_file("torchvision", net, None, tmp_path / "r18.pth")
    convert_checkpoint(tmp_path / "r18.pth", "torchvision", tmp_path / "r18.pt")
    backbone_bytes = sum(v.numel() * v.element_size() for v in _backbone(net).values())
    assert (tmp_path / "r18.pt").stat().st_size < 1.3 * backbone_bytes  # twice: >= 2x
    model, _ = load_model(tmp_path / "r18.pt")
    query, key = model.encoder_q.state_dict(), model.encoder_k.state_dict()
    for name, value in _backbone(net).items():
        assert torch.equal(query["backbone." + name], value)
        assert torch.equal(key["backbone." + name], value)
    # the two encoders are separate tensors again once loaded
    assert query["backbone.conv1.weight"].data_ptr() != key["backbone.conv1.weight"].data_ptr()


def test_a_momentum_encoder_of_its_own_is_kept(tmp_path):
    net, momentum = _source_net("resnet18", seed=11), _source_net("resnet18", seed=12)
    sd = _prefixed(_lightly_names(_backbone(net)), "backbone.")
    sd |= _prefixed(_lightly_names(_backbone(momentum)), "backbone_momentum.")
    torch.save({"epoch": 3, "state_dict": sd}, tmp_path / "l.ckpt")
    convert_checkpoint(tmp_path / "l.ckpt", "lightly", tmp_path / "l.pt", keep_head=False)
    model, _ = load_model(tmp_path / "l.pt")
    key = model.encoder_k.state_dict()
    for name, value in _backbone(momentum).items():
        assert torch.equal(key["backbone." + name], value)


def _error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ")
    return err


def test_errors_are_one_line(tmp_path, capsys):
    out = str(tmp_path / "x.pt")
    torch.save({"foo": torch.zeros(1)}, tmp_path / "unknown.pth")
    err = _error(["convert", str(tmp_path / "unknown.pth"), "--out", out], capsys)
    assert "cannot recognize" in err and "foo" in err

    # a named format whose keys are not there
    net = _source_net("resnet18", seed=10)
    torch.save(net.state_dict(), tmp_path / "tv.pth")
    err = _error(["convert", str(tmp_path / "tv.pth"), "--from", "moco", "--out", out], capsys)
    assert "not a moco checkpoint" in err and "state_dict" in err

    # a missing key in the backbone
    sd = net.state_dict()
    del sd["layer2.0.bn1.running_var"]
    torch.save(sd, tmp_path / "missing.pth")
    err = _error(["convert", str(tmp_path / "missing.pth"), "--out", out], capsys)
    assert "layer2.0.bn1.running_var" in err and "Missing" in err

    # a shape mismatch
    sd = net.state_dict()
    sd["layer3.0.conv1.weight"] = torch.zeros(256, 128, 1, 1)
    torch.save(sd, tmp_path / "shape.pth")
    err = _error(["convert", str(tmp_path / "shape.pth"), "--out", out], capsys)
    assert "layer3.0.conv1.weight" in err and "size mismatch" in err

    # an unsupported depth
    torch.save(torchvision.models.resnet101().state_dict(), tmp_path / "r101.pth")
    err = _error(["convert", str(tmp_path / "r101.pth"), "--out", out], capsys)
    assert "[3, 4, 23, 3]" in err

    # a projection head with batch norm (lightly's MoCo v3-style head) cannot become ours
    sd = _prefixed(_lightly_names(_backbone(net)), "backbone.")
    sd |= {
        "projection_head.layers.0.weight": torch.zeros(8, 512),
        "projection_head.layers.1.weight": torch.ones(8),
        "projection_head.layers.3.weight": torch.zeros(4, 8),
    }
    torch.save({"state_dict": sd}, tmp_path / "bn_head.ckpt")
    err = _error(["convert", str(tmp_path / "bn_head.ckpt"), "--out", out], capsys)
    assert "--no-head" in err
    assert main(["convert", str(tmp_path / "bn_head.ckpt"), "--no-head", "--out", out]) == 0

    # objects that weights_only refuses: named, with the way out
    obj = {"state_dict": net.state_dict(), "opt": argparse.Namespace(lr=0.1)}
    torch.save(obj, tmp_path / "ns.pth")
    err = _error(["convert", str(tmp_path / "ns.pth"), "--out", out], capsys)
    assert "Namespace" in err and "weights_only" in err

    err = _error(["convert", str(tmp_path / "nope.pth"), "--out", out], capsys)
    assert "does not exist" in err


def test_read_encoder_strips_nothing_it_should_keep(tmp_path):
    """The ImageNet classifier of a torchvision file and solo-learn's online probe are dropped."""
    net = _source_net("resnet18", seed=11)
    source_file("solo-learn", net, _mlp(512, 32, 8, seed=12), tmp_path / "s.ckpt")
    enc = read_encoder(tmp_path / "s.ckpt")
    assert set(enc.backbone) == set(_backbone(net))
    assert enc.queue.shape == (64, 8)
    torch.save(net.state_dict(), tmp_path / "tv.pth")
    assert not any(k.startswith("fc.") for k in read_encoder(tmp_path / "tv.pth").backbone)


@pytest.mark.parametrize("command", [["eval", "knn"], ["analyze"]])
def test_a_converted_encoder_asks_for_a_dataset(tmp_path, capsys, command):
    """An ImageNet encoder converted from torchvision names no dataset: eval and analyze say
    to pass --dataset, and leave nothing behind."""
    torch.save(_source_net("resnet18", seed=3).state_dict(), tmp_path / "tv.pth")
    out = tmp_path / "tv.pt"
    assert main(["convert", str(tmp_path / "tv.pth"), "--out", str(out)]) == 0
    capsys.readouterr()
    err = _error([*command, str(out)], capsys)
    assert "converted from another project" in err and "--dataset" in err
    assert "not-shipped" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tv.pt", "tv.pth"]
    if command == ["eval", "knn"]:  # --dataset given: only the folder is missing
        err = _error([*command, str(out), "--dataset", "imagefolder"], capsys)
        assert err.endswith("pass --data-path DIR for --dataset imagefolder")


def test_eval_transfer_of_a_converted_encoder_needs_only_its_two_folders(tmp_path):
    """It used to ask for --dataset and --data-path, which it then ignored (it reads
    --train-dir and --test-dir); those two options are now refused."""
    import json

    from PIL import Image

    torch.save(_source_net("resnet18", seed=17).state_dict(), tmp_path / "tv.pth")
    out = tmp_path / "tv.pt"
    argv = ["convert", str(tmp_path / "tv.pth"), "--image-size", "16", "--out", str(out)]
    assert main(argv) == 0
    for c, colour in enumerate([(200, 30, 30), (30, 200, 30)]):
        (tmp_path / "A" / f"class{c}").mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 16), colour).save(tmp_path / "A" / f"class{c}" / f"{i}.png")
    folders = ["--train-dir", str(tmp_path / "A"), "--test-dir", str(tmp_path / "A")]
    small = ["--shots", "1", "--trials", "1", "--episodes", "1", "--workers", "0"]
    result = tmp_path / "transfer.json"
    argv = ["eval", "transfer", str(out), *folders, *small, "--no-progress", "--out", str(result)]
    assert main(argv) == 0
    assert json.loads(result.read_text())["setup"]["dataset"] == "imagefolder"


def test_a_converted_encoder_cannot_be_resumed(tmp_path, capsys):
    """Resuming training from a converted encoder says why not, instead of listing the made-up
    settings a head-less conversion records."""
    torch.save(_source_net("resnet18", seed=4).state_dict(), tmp_path / "tv.pth")
    out = tmp_path / "tv.pt"
    assert main(["convert", str(tmp_path / "tv.pth"), "--out", str(out)]) == 0
    capsys.readouterr()
    argv = ["train", "--config", "demo", f"out_dir={tmp_path / 'runs'}", f"train.resume={out}"]
    err = _error(argv, capsys)
    assert "converted from torchvision" in err and "no training state" in err
    assert "comes from a different model" not in err


@pytest.mark.parametrize(
    "option, phrase",
    [
        (["--dataset", "imagenet"], "--dataset imagenet: data.name='imagenet' is not valid"),
        (["--dataset", "cifar1000"], "did you mean 'cifar100'"),
        (["--image-size", "0"], "--image-size 0: data.image_size must be an integer in [8, 4096]"),
    ],
)
def test_data_options_that_no_eval_could_use_are_refused_before_work(
    tmp_path, capsys, option, phrase
):
    """Before, the file was written and every later eval of it failed (or 0 became 224)."""
    torch.save(_source_net("resnet18", seed=5).state_dict(), tmp_path / "tv.pth")
    out = tmp_path / "tv.pt"
    err = _error(["convert", str(tmp_path / "tv.pth"), *option, "--out", str(out)], capsys)
    assert phrase in err
    assert not out.exists()


@pytest.mark.parametrize("wrapping", ["state_dict", "model", "module.", "model+module."])
def test_wrapped_torchvision_state_dicts_convert_exactly(tmp_path, wrapping):
    """Training scripts save torchvision weights under 'state_dict' or 'model', often with DDP's
    'module.' prefix; before, each was 'cannot recognize', and --from torchvision failed too."""
    net = _source_net("resnet18", seed=11)
    sd = net.state_dict()
    if "module." in wrapping:
        sd = {f"module.{k}": v for k, v in sd.items()}
    if wrapping.startswith(("state_dict", "model")):
        sd = {wrapping.split("+")[0]: sd, "epoch": 90}
    torch.save(sd, tmp_path / "src.pth")
    out = tmp_path / "c.pt"
    assert main(["convert", str(tmp_path / "src.pth"), "--out", str(out)]) == 0
    model, cfg = load_model(out)
    assert cfg.model.backbone == "resnet18"
    for name, tensor in _backbone(net).items():
        assert torch.equal(model.backbone.state_dict()[name], tensor), name


def test_a_contrastlab_checkpoint_is_named_as_such(tmp_path, capsys):
    net = _source_net("resnet18", seed=12)
    torch.save(net.state_dict(), tmp_path / "tv.pth")
    ours = tmp_path / "ours.pt"
    assert main(["convert", str(tmp_path / "tv.pth"), "--out", str(ours)]) == 0
    capsys.readouterr()
    err = _error(["convert", str(ours), "--out", str(tmp_path / "again.pt")], capsys)
    assert "already a contrastlab checkpoint" in err


@pytest.mark.parametrize("kind", ["module", "dict_with_objects", "moco_v2_encoder_q"])
def test_the_advice_for_pickled_objects_works(tmp_path, capsys, kind):
    """The command the error suggests must itself work, for a whole pickled model as well as a
    dict holding other objects, and its output must convert. A pickled MoCo v2 encoder_q (a
    ResNet whose fc is the MLP head) lost its head: the command saved it as a torchvision
    ResNet, whose fc is a classifier."""
    import re
    import subprocess
    import sys

    net = _source_net("resnet18", seed=13)
    if kind == "moco_v2_encoder_q":
        net.fc = _mlp(512, 64, 16, seed=3)
    # numpy's epoch, which weights_only=True refuses as it refuses the Namespace
    obj = {"state_dict": net.state_dict(), "a": argparse.Namespace(), "epoch": np.int64(7)}
    obj = obj if kind == "dict_with_objects" else net
    src = tmp_path / "obj.pth"
    torch.save(obj, src)
    err = _error(["convert", str(src), "--out", str(tmp_path / "c.pt")], capsys)
    command = re.search(r'python -c "(.*)"$', err).group(1)
    subprocess.run([sys.executable, "-c", command], cwd=tmp_path, check=True)
    assert main(["convert", str(tmp_path / "obj-weights.pt"), "--out", str(tmp_path / "c.pt")]) == 0
    model, cfg = load_model(tmp_path / "c.pt")
    if kind == "dict_with_objects":  # the epoch came along, as a number weights_only reads
        assert torch.load(tmp_path / "obj-weights.pt", weights_only=True)["epoch"] == 7
    for name, tensor in _backbone(net).items():
        assert torch.equal(model.backbone.state_dict()[name], tensor), name
    if kind == "moco_v2_encoder_q":  # the head came along
        assert cfg.model.head == "mlp" and cfg.model.dim == 16 and cfg.model.head_hidden == 64
        assert torch.equal(model.encoder_q.head[2].weight, net.fc[2].weight)


def test_the_converted_encoder_is_named_after_its_source_without_suffixes(tmp_path):
    torch.save(_source_net("resnet18", seed=14).state_dict(), tmp_path / "moco_v2.pth.tar")
    out = tmp_path / "c.pt"
    assert main(["convert", str(tmp_path / "moco_v2.pth.tar"), "--out", str(out)]) == 0
    assert read_checkpoint(out)["config"]["name"] == "moco_v2"  # was "moco_v2.pth"


@pytest.mark.parametrize("fmt", ["torchvision", "lightly"])
def test_eval_names_a_converted_encoder_by_its_source(tmp_path, fmt):
    """A supervised torchvision ResNet was labelled 'moco' in eval results and tables: the
    container's method, not what the encoder is."""
    from contrastlab.eval.context import EvalContext

    net = _source_net("resnet18", cifar_stem=True, seed=15)
    head = _mlp(512, 64, 16, seed=16) if fmt != "torchvision" else None
    source_file(fmt, net, head, tmp_path / "src.pth")
    convert_checkpoint(tmp_path / "src.pth", fmt, tmp_path / "c.pt")
    ctx = EvalContext.from_checkpoint(tmp_path / "c.pt", dataset="synthetic")
    assert ctx.describe()["method"] == f"{fmt} (converted)"


@pytest.mark.parametrize(
    "arch, kind", [("wide_resnet50_2", "a wide ResNet"), ("resnext50_32x4d", "a ResNeXt")]
)
def test_wide_and_grouped_resnets_are_named_not_misfit(arch, kind):
    """They have ResNet-50's keys and depths; before, the error was a size mismatch deep in
    layer1, which did not say what is unsupported."""
    from contrastlab.convert import infer_model
    from contrastlab.errors import UserError

    with torch.device("meta"):
        state = getattr(torchvision.models, arch)().state_dict()
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    with pytest.raises(UserError, match=f"looks like {kind}.*only plain ResNets"):
        infer_model(backbone)
    with torch.device("meta"):
        plain = torchvision.models.resnet50().state_dict()
    assert infer_model(plain)["backbone"] == "resnet50"


@pytest.mark.parametrize(
    "fmt, epoch, step",
    [("lightly", 9, 100), ("solo-learn", 399, 5), ("moco", 200, None), ("torchvision", None, None)],
)
def test_the_training_state_is_the_sources_or_unknown(tmp_path, capsys, fmt, epoch, step):
    """A lightly file with global_step 100 was recorded as step 0 (and a torchvision state dict,
    which records no training, as epoch 0): made-up counts that eval and analyze show as facts."""
    from contrastlab.eval.context import EvalContext

    net = _source_net("resnet18", cifar_stem=True, seed=17)
    head = _mlp(512, 64, 16, seed=18) if fmt != "torchvision" else None
    source_file(fmt, net, head, tmp_path / "src.pth")
    if fmt == "solo-learn":  # solo-learn's Lightning checkpoint: epoch and global_step
        obj = torch.load(tmp_path / "src.pth", weights_only=True)
        torch.save({**obj, "global_step": 5}, tmp_path / "src.pth")
    out = tmp_path / "c.pt"
    assert main(["convert", str(tmp_path / "src.pth"), "--from", fmt, "--out", str(out)]) == 0
    shown = (
        f"epoch {'unknown' if epoch is None else epoch}, step {'unknown' if step is None else step}"
    )
    assert shown in capsys.readouterr().out
    state = read_checkpoint(out)
    assert (state["epoch"], state["step"]) == (epoch, step)
    setup = EvalContext.from_checkpoint(out, dataset="synthetic").describe()
    assert (setup["epoch"], setup["step"]) == (epoch, step)


def test_eval_all_labels_converted_encoders_by_their_source(tmp_path):
    """eval all's table and bar chart labelled a converted encoder ``<source stem>/<file stem>``
    (``src/c1``): neither says it is a torchvision ResNet. Two of one source are told apart by
    their paths."""
    import json

    net = _source_net("resnet18", cifar_stem=True, seed=19)
    source_file("torchvision", net, None, tmp_path / "src.pth")
    for name in ("c1.pt", "c2.pt"):
        convert_checkpoint(tmp_path / "src.pth", "torchvision", tmp_path / name)
    argv = ["eval", "all", str(tmp_path / "c1.pt"), str(tmp_path / "c2.pt"), "--protocols", "knn"]
    argv += ["--dataset", "synthetic", "--max-train", "32", "--max-test", "16", "--k", "3"]
    argv += ["--workers", "0", "--no-progress", "--no-save", "--out-dir", str(tmp_path / "all")]
    assert main(argv) == 0
    entries = json.loads((tmp_path / "all" / "comparison.json").read_text())["entries"]
    tv = "torchvision (converted)"
    assert [e["label"] for e in entries] == [tv, f"{tv} ({tmp_path / 'c2.pt'})"]


@pytest.mark.parametrize("damage", ["cut", "empty", "folder"])
def test_a_damaged_source_is_advised_as_another_projects_file(tmp_path, capsys, damage):
    """A truncated source was told to 'use another checkpoint of the run (<run>/checkpoints/)':
    a contrastlab run's remedy, meaningless for a file another project saved."""
    src = tmp_path / "moco_v2_800ep.pth.tar"
    if damage == "folder":
        src.mkdir()
    else:
        source_file("torchvision", _source_net("resnet18", seed=20), None, src)
        data = src.read_bytes()
        src.write_bytes(data[: len(data) // 2] if damage == "cut" else b"")
    err = _error(["convert", str(src), "--out", str(tmp_path / "c.pt")], capsys)
    assert "<run>/checkpoints" not in err and "of the run" not in err
    assert (
        "the other project's checkpoint file" if damage == "folder" else "download it again"
    ) in err


def test_a_damaged_checkpoint_outside_a_run_is_not_sent_to_the_run(tmp_path, capsys):
    """A damaged converted checkpoint (no run around it) was told to use another checkpoint of
    the run; a damaged one in a run still is."""
    torch.save(_source_net("resnet18", seed=21).state_dict(), tmp_path / "tv.pth")
    for folder in (tmp_path, tmp_path / "run" / "checkpoints"):
        folder.mkdir(parents=True, exist_ok=True)
        out = folder / "c.pt"
        assert main(["convert", str(tmp_path / "tv.pth"), "--out", str(out)]) == 0
        out.write_bytes(out.read_bytes()[:1000])
        err = _error(["eval", "knn", str(out), "--dataset", "synthetic"], capsys)
        in_run = folder.name == "checkpoints"
        assert ("another checkpoint of the run" in err) == in_run
        assert ("write it again (contrastlab train, convert or export)" in err) != in_run


def _unknown(source: str) -> str:
    return f"unknown (converted from {source})"


@pytest.mark.parametrize("options", [[], ["--dataset", "cifar10", "--image-size", "32"]])
def test_a_converted_checkpoint_knows_only_what_its_source_records(tmp_path, options):
    """A converted checkpoint held a whole config, the settings its source does not record at
    contrastlab's defaults (moco.temperature 0.2, optim.lr 0.03), which every command showed as
    the encoder's own. It records which settings it knows."""
    from contrastlab.checkpoint import known_settings, shown_config, unknown_settings

    net = _source_net("resnet18", cifar_stem=True, seed=20)
    source_file("moco", net, _mlp(512, 64, 16, seed=21), tmp_path / "moco_r18.pth.tar")
    out = tmp_path / "c.pt"
    assert main(["convert", str(tmp_path / "moco_r18.pth.tar"), "--out", str(out), *options]) == 0
    state = read_checkpoint(out)
    known = ["name", "method", "model.backbone", "model.width", "model.cifar_stem", "model.head"]
    known += ["model.head_hidden", "model.dim", "moco.queue_size"]  # the head's, the queue's
    given = ["data.name", "data.image_size"] if options else []
    assert sorted(known_settings(state)) == sorted(known + given)
    unknown = unknown_settings(state)
    assert {"moco.temperature", "optim.lr", "augment.recipe", "seed"} <= set(unknown)
    assert ("data.image_size" in unknown) is not bool(options)
    shown = shown_config(state)
    assert shown["moco"]["temperature"] == shown["optim"]["lr"] == _unknown("moco_r18.pth.tar")
    assert (shown["model"]["dim"], shown["moco"]["queue_size"]) == (16, 64)
    assert shown["data"]["image_size"] == (32 if options else _unknown("moco_r18.pth.tar"))


def test_a_checkpoint_converted_before_the_record_knows_what_its_weights_show(tmp_path):
    """A file converted by an older version has no list of what it knows: only what its tensors
    show is taken as known (a kept head's sizes), not the queue length or the method."""
    from contrastlab.checkpoint import known_settings, save_checkpoint, unknown_settings

    net = _source_net("resnet18", cifar_stem=True, seed=22)
    source_file("moco", net, _mlp(512, 64, 16, seed=23), tmp_path / "src.pth")
    out = tmp_path / "c.pt"
    convert_checkpoint(tmp_path / "src.pth", "moco", out)
    state = read_checkpoint(out)
    del state["converted"]["known"]
    save_checkpoint(out, state)
    state = read_checkpoint(out)
    assert sorted(known_settings(state)) == sorted(
        ["name", "model.backbone", "model.width", "model.cifar_stem"]
        + ["model.head", "model.head_hidden", "model.dim"]
    )
    assert {"method", "moco.queue_size", "data.image_size"} <= set(unknown_settings(state))
    # a checkpoint trained here knows every setting
    from contrastlab.checkpoint import make_state
    from contrastlab.config import load_config
    from contrastlab.methods import build_method

    cfg = load_config("demo", ["data.synthetic_train=64"])
    assert unknown_settings(make_state(cfg, build_method(cfg), None, 0, 0, None)) == []


def test_eval_and_export_say_a_converted_encoders_unknown_settings(tmp_path):
    """An eval result of a torchvision ResNet said nothing of its image size being convert's
    default, and its safetensors export named its method "moco" (the container's)."""
    from safetensors import safe_open

    from contrastlab.eval.context import EvalContext
    from contrastlab.export import export_checkpoint

    torch.save(_source_net("resnet18", cifar_stem=True, seed=24).state_dict(), tmp_path / "tv.pth")
    out = tmp_path / "tv.pt"
    assert main(["convert", str(tmp_path / "tv.pth"), "--out", str(out)]) == 0
    setup = EvalContext.from_checkpoint(out, dataset="synthetic").describe()
    unknown = _unknown("tv.pth")
    assert setup["trained_with"] == {
        "method": unknown,
        "data.name": unknown,
        "data.image_size": unknown,
    }
    assert setup["image_size"] == 32  # the size it was evaluated at: a fact of the evaluation
    # the report's table of results: its epoch is unknown, not "not recorded (an older result)"
    from contrastlab.eval.results import write_json

    (tmp_path / "config.yaml").write_text("method: moco\n")
    write_json(
        {"protocol": "knn", "summary": {"top1": 10.0}, "setup": setup},
        tmp_path / "eval" / "knn.json",
    )
    assert main(["report", str(tmp_path)]) == 0
    assert f"<td>epoch {unknown}</td>" in (tmp_path / "report.html").read_text()
    export_checkpoint(out, "safetensors", tmp_path / "tv.safetensors")
    with safe_open(tmp_path / "tv.safetensors", "pt") as f:
        meta = f.metadata()
    assert (meta["method"], meta["image_size"], meta["backbone"]) == (unknown, unknown, "resnet18")
    # given when converting: known
    given = tmp_path / "given.pt"
    argv = ["convert", str(tmp_path / "tv.pth"), "--out", str(given), "--image-size", "32"]
    assert main(argv) == 0
    setup = EvalContext.from_checkpoint(given, dataset="synthetic").describe()
    assert setup["trained_with"]["data.image_size"] == 32


def test_eval_all_evaluates_a_converted_encoder_on_the_test_images_of_the_runs_beside_it(
    tmp_path, capsys
):
    """A converted encoder's synthetic settings are unknown; eval all built its test set from
    contrastlab's defaults (1,000 images) beside a run of 64, and called the rows not comparable,
    with no way to make them so. Now the unknown settings are the trained run's, said in one line."""
    import json

    from helpers import EVAL_COMMON, TINY_EVAL, trained_checkpoint

    run = trained_checkpoint(tmp_path / "runs", TINY_EVAL)
    torch.save(_source_net("resnet18", cifar_stem=True, seed=25).state_dict(), tmp_path / "tv.pth")
    conv = tmp_path / "tv.pt"
    assert (
        main(["convert", str(tmp_path / "tv.pth"), "--out", str(conv), "--dataset", "synthetic"])
        == 0
    )
    argv = ["eval", "all", str(run), str(conv), *EVAL_COMMON, "--protocols", "knn", "--k", "3"]
    capsys.readouterr()
    assert main([*argv, "--no-save", "--out-dir", str(tmp_path / "all")]) == 0
    out, err = capsys.readouterr()
    assert f"{conv}: its data settings are unknown" in out and "not comparable" not in err
    data = json.loads((tmp_path / "all" / "comparison.json").read_text())
    assert data["comparable"] is True
    assert [e["num_test"] for e in data["entries"]] == [64, 64]
