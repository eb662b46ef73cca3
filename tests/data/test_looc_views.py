"""LooC views: parameter records, copying exactly one augmentation, deterministic rendering."""

import copy

import pytest
import torch

from contrastlab.config import AugmentConfig, load_config
from contrastlab.data.looc_views import (
    ColorAug,
    LoocViews,
    RotationAug,
    TextureAug,
    build_looc_views,
    params_equal,
)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
ALL = ["color", "rotation", "texture"]


def random_image(seed: int = 0, size: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)


def make(augs, size=32, **aug):
    return LoocViews(augs, size, MEAN, STD, AugmentConfig(**aug))


@pytest.mark.parametrize(
    "augs", [["color"], ["rotation"], ["texture"], ["color", "rotation"], ALL, ["texture", "color"]]
)
def test_views_count_shape_and_order(augs):
    torch.manual_seed(0)
    views = make(augs)(random_image())
    assert len(views) == len(augs) + 2
    for v in views:
        assert v.shape == (3, 32, 32) and v.dtype == torch.float32


def test_key_i_shares_exactly_augmentation_i():
    views = make(ALL, blur=True)
    img = random_image()
    keys = ["crop", "flip", "blur", "color", "rotation", "texture"]
    differs = {(i, key): False for i in range(1, 4) for key in keys}
    for seed in range(20):
        torch.manual_seed(seed)
        q, k0, *ks = views.sample_all(img)
        assert set(q) == set(keys)
        for key in keys:
            # k0 is independent of q in everything (texture weights and colour factors are continuous)
            if key in ("color", "texture"):
                assert not params_equal(q[key], k0[key])
        for i, (name, k) in enumerate(zip(ALL, ks), start=1):
            assert params_equal(k[name], q[name]), f"k_{name} must copy q's {name} record"
            assert k[name] is not q[name] and k[name].__class__ is q[name].__class__
            for key in keys:
                if key != name and not params_equal(k[key], q[key]):
                    differs[(i, key)] = True
    # over 20 seeds every other parameter is redrawn at least once (never copied)
    assert all(differs[(i, key)] for i, name in enumerate(ALL, 1) for key in keys if key != name)


def test_copied_record_is_a_copy_not_an_alias():
    torch.manual_seed(0)
    q, _, k_tex = make(["texture"]).sample_all(random_image())
    assert k_tex["texture"]["weight"].data_ptr() != q["texture"]["weight"].data_ptr()


def test_same_record_gives_identical_pixels():
    views = make(ALL, blur=True)
    img = random_image(1)
    torch.manual_seed(3)
    params = views.sample_all(img)
    for p in params:
        assert torch.equal(views.render(img, p), views.render(img, copy.deepcopy(p)))


def test_k_i_rendered_with_q_other_params_reproduces_q():
    """Replacing everything but augmentation i in k_i's record by q's gives q's pixels exactly."""
    views = make(ALL, blur=True)
    img = random_image(2)
    for seed in range(5):
        torch.manual_seed(seed)
        out, params = views.views_with_params(img)
        q = params[0]
        assert torch.equal(out[0], views.render(img, q))
        for name, k in zip(ALL, params[2:]):
            mixed = {key: (k[key] if key == name else q[key]) for key in q}
            assert torch.equal(views.render(img, mixed), out[0])


def orientation(view: torch.Tensor) -> int:
    """Which side of the image is bright: 0 top, 1 left, 2 bottom, 3 right (rot90 is counter-clockwise)."""
    h = view.shape[-1] // 2
    sides = [
        view[:, :h, :].mean(),
        view[:, :, :h].mean(),
        view[:, h:, :].mean(),
        view[:, :, h:].mean(),
    ]
    return int(torch.stack(sides).argmax())


def test_rotation_view_has_query_orientation():
    img = torch.zeros(3, 32, 32, dtype=torch.uint8)
    img[:, :16] = 255  # top half bright; hflip keeps it, rotation moves it
    views = make(["color", "rotation"], crop_scale_min=1.0)  # scale 1: the crop is the whole image
    k0_differs = False
    for seed in range(12):
        torch.manual_seed(seed)
        out, params = views.views_with_params(img)
        q, k0, _, k_rot = out
        assert orientation(q) == params[0]["rotation"]["k"]
        assert orientation(k_rot) == orientation(q)
        k0_differs |= orientation(k0) != orientation(q)
    assert k0_differs


def test_rotation_op():
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)[:1].expand(3, 3, 4)
    op = RotationAug()
    assert torch.equal(op.apply(x, {"k": 0}), x)
    assert torch.equal(op.apply(x, {"k": 1}), torch.rot90(x, 1, (-2, -1)))
    assert torch.equal(op.apply(op.apply(x, {"k": 1}), {"k": 3}), x)


def test_texture_op_copied_record_same_change():
    torch.manual_seed(0)
    op = TextureAug()
    x = torch.rand(3, 24, 24)
    p = op.sample()
    assert set(p) == {"kernel_size", "weight", "alpha"}
    assert p["weight"].shape == (3, 3, p["kernel_size"], p["kernel_size"])
    y = op.apply(x, p)
    assert torch.equal(y, op.apply(x.clone(), copy.deepcopy(p)))
    assert y.shape == x.shape
    assert y.min() >= x.min() - 1e-6 and y.max() <= x.max() + 1e-6  # stays in the image's range
    other = op.sample()
    assert not torch.allclose(op.apply(x, other), y)
    # alpha 0 leaves the image unchanged
    assert torch.allclose(op.apply(x, {**p, "alpha": 0.0}), x)


def test_color_op_records_and_grayscale():
    torch.manual_seed(0)
    op = ColorAug()
    p = op.sample()
    assert set(p) == {"apply", "brightness", "contrast", "saturation", "hue", "order", "gray"}
    assert sorted(p["order"]) == [0, 1, 2, 3]
    assert 0.6 <= p["brightness"] <= 1.4 and -0.1 <= p["hue"] <= 0.1
    x = torch.rand(3, 8, 8)
    gray = op.apply(x, {**p, "gray": True})
    assert torch.allclose(gray[0], gray[1]) and torch.allclose(gray[1], gray[2])
    assert torch.equal(op.apply(x, {**p, "apply": False, "gray": False}), x)


@pytest.mark.parametrize("gray_first", [False, True])
def test_color_op_applies_its_record_as_torchvision_colorjitter(gray_first):
    """The record's jitter, in the record's order, is torchvision's ColorJitter: from the same
    seed, ``ColorJitter(0.4, 0.4, 0.4, 0.1)`` draws the same order and factors as
    ``ColorAug.sample`` (both through ``ColorJitter.get_params``' draws) and must give the same
    image; the grayscale goes after the jitter (MoCo v2) or before it (MoCo v1)."""
    import torchvision.transforms.v2 as v2
    import torchvision.transforms.v2.functional as TF

    x = torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(1))
    op = ColorAug(p=1.0, p_gray=0.0, gray_first=gray_first)
    orders = set()
    for seed in range(40):
        torch.manual_seed(seed)
        record = op.sample()
        orders.add(record["order"])
        torch.manual_seed(seed)
        expected = v2.ColorJitter(0.4, 0.4, 0.4, 0.1)(x)
        torch.testing.assert_close(op.apply(x, record), expected, atol=1e-6, rtol=0)
        if gray_first:
            torch.manual_seed(seed)
            expected_gray = v2.ColorJitter(0.4, 0.4, 0.4, 0.1)(TF.rgb_to_grayscale(x, 3))
        else:
            expected_gray = TF.rgb_to_grayscale(expected, 3)
        torch.testing.assert_close(
            op.apply(x, {**record, "gray": True}), expected_gray, atol=1e-6, rtol=0
        )
    assert len(orders) >= 15  # many of the 24 orders were exercised


def test_blur_rule_and_base_colour():
    assert not make(["rotation"], size=32).blur  # MoCo v2 rule: no blur at <= 64 px
    assert make(["rotation"], size=96).blur
    assert make(["rotation"], size=32, blur=True).blur
    assert (
        "color" in make(["rotation"]).ops
    )  # colour of the base recipe still runs, without a space
    assert "color" not in make(["rotation"], recipe="none").ops
    assert (
        "rotation" not in make(["color"]).ops and "rotation" in make(["color"], rotation=True).ops
    )


def test_colour_strength_settings_reach_looc_views():
    """augment.hue and augment.grayscale_p act on LooC's views as on MoCo's: hue 0.5 draws any
    hue shift, grayscale_p 0 never greys."""
    torch.manual_seed(0)
    default = [make(["color"]).ops["color"].sample() for _ in range(300)]
    assert max(abs(p["hue"]) for p in default) <= 0.1
    assert any(p["gray"] for p in default)
    wide = make(["color"], hue=0.5, grayscale_p=0.0).ops["color"]
    drawn = [wide.sample() for _ in range(300)]
    assert max(abs(p["hue"]) for p in drawn) > 0.4
    assert not any(p["gray"] for p in drawn)
    assert make(["rotation"], recipe="moco_v1").ops["color"].p == 1.0


def test_pil_input_and_factory():
    from PIL import Image

    cfg = load_config(None, ["method=looc", "looc.augmentations=[color,texture]"])
    views = build_looc_views(cfg, 24, MEAN, STD)
    pil = Image.fromarray(random_image(size=30).permute(1, 2, 0).numpy())
    out = views(pil)
    assert len(out) == 4 and all(v.shape == (3, 24, 24) for v in out)


def test_rejects_unknown_augmentation():
    with pytest.raises(ValueError):
        make(["colour"])
