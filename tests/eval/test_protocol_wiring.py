"""How the evaluation protocols use their pieces, observed from outside against references by hand:
MoCo's linear protocol on a real encoder with batch norm, the fast probe's choice of C, and the
corruption benchmark's per-image seeds and averages.
"""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from helpers import TINY

from contrastlab.config import load_config
from contrastlab.eval.context import EvalContext
from contrastlab.eval.corruption import CorruptedDataset, corrupt_tensor, corruption_eval
from contrastlab.eval.linear import LogisticProbe
from contrastlab.methods import build_method


def _tiny_encoder(tmp_path):
    cfg = load_config("moco_v2_cifar", [*TINY, "data.synthetic_train=64", f"out_dir={tmp_path}"])
    torch.manual_seed(0)
    model = build_method(cfg)
    # BN running statistics away from their initial values, so that a change would be visible
    model.train()
    with torch.no_grad():
        model.encoder_q(torch.randn(16, 3, 32, 32) * 2 + 1)
    return model, cfg


def _eval_view(ctx, split):
    """The evaluation view by hand: uint8 -> [0, 1] -> per-channel normalization (32 px, no resize)."""
    images = ctx.raw(split).images.float() / 255.0
    mean, std = ctx.stats(ctx.raw(split))
    return (images - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def _match_pad_and_crop(received, eval_images, pad):
    """For each received image: (source, top, left, flipped) such that it equals the reflect-padded
    eval image cropped at (top, left), flipped or not (torchvision's functional ops); None if none."""
    size = eval_images.shape[-1]
    padded = TF.pad(eval_images, [pad] * 4, padding_mode="reflect")
    probe = received[:, 0, ::3, ::3].flatten(1)  # a few pixels first; full images to confirm
    found = [None] * len(received)
    for top in range(2 * pad + 1):
        for left in range(2 * pad + 1):
            crops = TF.crop(padded, top, left, size, size)
            for flipped, candidate in ((False, crops), (True, TF.horizontal_flip(crops))):
                cheap = torch.cdist(probe, candidate[:, 0, ::3, ::3].flatten(1), p=float("inf"))
                for i, j in (cheap < 1e-5).nonzero().tolist():
                    if found[i] is None and (received[i] - candidate[j]).abs().max() < 1e-5:
                        found[i] = (j, top, left, flipped)
    return found


def test_linear_protocol_on_a_real_encoder_with_batch_norm(tmp_path, monkeypatch):
    from contrastlab.eval.protocols import run_linear

    model, cfg = _tiny_encoder(tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    original = model.features

    def features(x, space="backbone"):
        bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        calls.append((x.clone(), [m.training for m in bn]))
        return original(x, space)

    monkeypatch.setattr(model, "features", features)
    inits = []
    sgd = torch.optim.SGD

    def recording_sgd(params, *args, **kwargs):
        params = list(params)
        inits.append([p.detach().clone() for p in params])
        return sgd(params, *args, **kwargs)

    monkeypatch.setattr(torch.optim, "SGD", recording_sgd)
    ctx = EvalContext(model, cfg, None, cfg.data, batch_size=32, progress=False)
    res = run_linear(ctx, mode="moco", epochs=2, lr=1.0)

    # the encoder is frozen and in eval mode: no BN module in training mode, nothing changed
    assert calls and all(not any(flags) for _, flags in calls)
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert all(p.grad is None for p in model.parameters())
    # the classifier starts as MoCo's: weights N(0, 0.01), zero bias (torch's default is U(±1/√d))
    assert len(inits) == 1
    weight, bias = inits[0]
    assert weight.shape == (10, 32) and torch.equal(bias, torch.zeros(10))
    assert 0.008 < float(weight.std()) < 0.012 and abs(float(weight.mean())) < 0.002
    # training images: pad-and-crop (reflect, size // 8) and flip of the evaluation view;
    # test images: the evaluation view itself, in order
    images = torch.cat([x for x, _ in calls])
    assert len(images) == 2 * 64 + 48  # two epochs of training images, then the test split
    received = images[:128]
    found = _match_pad_and_crop(received, _eval_view(ctx, "train"), pad=4)
    assert all(f is not None for f in found), "a training image is not a pad-and-crop view"
    offsets = {(t, left) for _, t, left, _ in found}
    assert len(offsets) > 10 and {f for *_, f in found} == {False, True}
    assert sorted(j for j, *_ in found[:64]) == list(range(64))  # each image once per epoch
    torch.testing.assert_close(images[128:], _eval_view(ctx, "test"), rtol=0, atol=1e-5)
    assert res["details"]["mode"] == "moco"


def test_fast_probe_picks_the_best_c_on_its_validation_split(blobs):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    f, y = blobs(30, 3, 16, sep=0.4, seed=2)
    cs = (100.0, 1e-2, 1e-3, 1.0)  # the best is neither the first nor the last
    probe = LogisticProbe(Cs=cs, seed=3).fit(f, y)
    # by hand: standardize, hold out 20 % (stratified, the probe's seed), fit each C from scratch
    x = StandardScaler().fit_transform(f.double().numpy())
    x_tr, x_val, y_tr, y_val = train_test_split(
        x, y.numpy(), test_size=18, random_state=3, stratify=y.numpy()
    )
    val = {
        c: 100.0
        * LogisticRegression(C=c, max_iter=2000, tol=1e-6).fit(x_tr, y_tr).score(x_val, y_val)
        for c in cs
    }
    assert sorted(val.values())[-1] > sorted(val.values())[-2]  # one best C on these features
    best = min(c for c, s in val.items() if s == max(val.values()))
    assert probe.C == best
    assert probe.val_scores == pytest.approx(val, abs=1e-9)


def test_corrupted_images_draw_one_seed_per_image():
    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    raw = [(image.clone(), i % 2) for i in range(6)]  # six copies of one image
    ds = CorruptedDataset(raw, "gaussian_noise", 3, transform=None, seed=100, indices=[4, 1, 5])
    got = [ds[i][0] for i in range(3)]
    for out, index in zip(got, (4, 1, 5)):
        assert torch.equal(out, corrupt_tensor(image, "gaussian_noise", 3, seed=100 + index))
    assert not torch.equal(got[0], got[1]) and not torch.equal(got[1], got[2])
    assert [ds[i][1] for i in range(3)] == [0, 1, 1]


def test_corruption_averages_by_hand(monkeypatch):
    """Mean over severities per corruption, mean of those means, mean per severity."""
    import contrastlab.eval.features as features_module

    hits = {  # correct predictions out of 10 for each (corruption, severity)
        ("clean", 0): 9,
        ("gaussian_noise", 1): 8,
        ("gaussian_noise", 3): 2,
        ("gaussian_noise", 5): 5,
        ("frost", 1): 10,
        ("frost", 3): 1,
        ("frost", 5): 0,
    }

    def fake_extract(model, ds, space, **kwargs):  # features = predicted labels
        labels = torch.zeros(10, dtype=torch.long)
        return (torch.arange(10) >= hits[(ds.name, ds.severity)]).long(), labels

    monkeypatch.setattr(features_module, "extract_features", fake_extract)
    raw = [(torch.zeros(3, 8, 8, dtype=torch.uint8), 0)] * 10
    res = corruption_eval(
        None, lambda f: f, raw, None, corruptions=("gaussian_noise", "frost"), severities=(1, 3, 5)
    )
    acc = {key: 10.0 * n for key, n in hits.items()}
    assert res["clean"] == pytest.approx(90.0)
    gauss = (
        acc[("gaussian_noise", 1)] + acc[("gaussian_noise", 3)] + acc[("gaussian_noise", 5)]
    ) / 3
    frost = (acc[("frost", 1)] + acc[("frost", 3)] + acc[("frost", 5)]) / 3
    assert res["corruptions"]["gaussian_noise"]["mean"] == pytest.approx(gauss)
    assert res["corruptions"]["frost"]["mean"] == pytest.approx(frost)
    assert res["corruptions"]["frost"]["by_severity"] == pytest.approx(
        {"1": 100.0, "3": 10.0, "5": 0.0}
    )
    assert res["mean"] == pytest.approx((gauss + frost) / 2)
    assert res["severity_means"] == pytest.approx({"1": 90.0, "3": 15.0, "5": 25.0})


def _last_monitor(run_dir) -> dict:
    """The last kNN monitor record of a run's metrics.jsonl."""
    import json

    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if '"knn"' in line][-1]


def test_eval_knn_of_a_run_reproduces_its_monitor_with_the_runs_k_and_t(tmp_path, capsys):
    """Without --k / --temperature, ``eval knn`` uses the checkpoint's monitor settings: the demo's
    k 50 is not the protocol's usual 200, and the printed figures must agree."""
    import json

    from contrastlab.cli import main
    from contrastlab.train import Trainer

    cfg = load_config(
        "moco_v2_cifar",
        [
            *TINY,
            f"out_dir={tmp_path}",
            "optim.epochs=1",
            "train.knn_every=1",
            "train.knn_k=7",
            "train.knn_temperature=0.3",
            "train.knn_space=backbone",
        ],
    )
    result = Trainer(cfg).fit()
    monitor = _last_monitor(cfg.run_dir)
    out = tmp_path / "knn.json"
    ckpt = str(result.last_checkpoint)
    assert main(["eval", "knn", ckpt, "--space", "backbone", "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    assert (got["setup"]["k"], got["setup"]["temperature"]) == (7, 0.3)
    assert got["summary"]["top1"] == pytest.approx(monitor["knn_top1"], abs=1e-6)
    # the protocol's usual k, given explicitly, is a different measurement
    assert main(["eval", "knn", ckpt, "--k", "200", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["setup"]["k"] == 200


@pytest.mark.parametrize("preset,space", [("moco_v2_cifar", "z"), ("loocpp_color", "concat")])
def test_eval_knn_without_space_reads_the_space_of_the_runs_monitor(tmp_path, preset, space):
    import json

    from contrastlab.cli import main
    from contrastlab.train import Trainer

    cfg = load_config(
        preset,
        [*TINY, f"out_dir={tmp_path}", "optim.epochs=1", "train.knn_every=1"]
        + [f"train.knn_space={space}"],
    )
    result = Trainer(cfg).fit()
    monitor = _last_monitor(cfg.run_dir)
    assert main(["eval", "knn", str(result.last_checkpoint)]) == 0
    got = json.loads((cfg.run_dir / "eval" / f"knn-{space}.json").read_text())
    assert got["setup"]["space"] == space
    assert got["summary"]["top1"] == pytest.approx(monitor["knn_top1"], abs=1e-6)
    # the other protocols keep the backbone unless told otherwise
    assert main(["eval", "rotation", str(result.last_checkpoint)]) == 0
    assert (cfg.run_dir / "eval" / "rotation.json").is_file()


def test_a_looc_plus_plus_result_is_labelled_looc_plus_plus():
    from contrastlab.eval.context import method_label

    assert method_label(load_config("loocpp_color", TINY)) == "looc++"
    assert method_label(load_config("looc_color", TINY)) == "looc"
    assert method_label(load_config("moco_v2_cifar", TINY)) == "moco"
