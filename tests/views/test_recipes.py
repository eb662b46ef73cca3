"""View recipes: parameter distributions against torchvision's samplers, whole views against
torchvision's functional ops with the same parameters, and LooC's parameter sharing."""

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from scipy import stats
from torchvision.transforms import v2

from contrastlab.config import AugmentConfig
from contrastlab.views.recipes import (
    BatchedViews,
    compiled_render,
    recipe_from_config,
    render,
    sample_params,
)

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
N = 4000
P_MIN = 1e-3  # two-sample tests at a fixed seed: a right sampler passes with a wide margin


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _recipe(**aug):
    return recipe_from_config(AugmentConfig(**aug), 32, MEAN, STD)


@pytest.mark.parametrize("scale_min", [0.08, 0.2])
@pytest.mark.parametrize("shape", [(32, 32), (40, 96)])
def test_crop_boxes_follow_random_resized_crops_distribution(scale_min, shape):
    height, width = shape
    recipe = _recipe(crop_scale_min=scale_min)
    boxes = sample_params(recipe, N, height, width, _gen())["crop"]["boxes"].double()
    torch.manual_seed(0)
    image = torch.zeros(3, height, width)
    ref = torch.tensor(
        [v2.RandomResizedCrop.get_params(image, [scale_min, 1.0], [3 / 4, 4 / 3]) for _ in range(N)]
    ).double()
    for a, b in [
        (boxes[:, 2] * boxes[:, 3], ref[:, 2] * ref[:, 3]),  # area
        (torch.log(boxes[:, 3] / boxes[:, 2]), torch.log(ref[:, 3] / ref[:, 2])),  # aspect
        (boxes[:, 0] / (height - boxes[:, 2] + 1), ref[:, 0] / (height - ref[:, 2] + 1)),  # top
        (boxes[:, 1] / (width - boxes[:, 3] + 1), ref[:, 1] / (width - ref[:, 3] + 1)),  # left
    ]:
        assert stats.ks_2samp(a.numpy(), b.numpy()).pvalue > P_MIN
    inside = (boxes[:, 0] + boxes[:, 2] <= height) & (boxes[:, 1] + boxes[:, 3] <= width)
    assert bool(inside.all()) and bool((boxes[:, :2] >= 0).all())


def test_a_wrong_crop_scale_is_detected_by_the_distribution_test():
    boxes = sample_params(_recipe(crop_scale_min=0.2), N, 32, 32, _gen())["crop"]["boxes"]
    torch.manual_seed(0)
    ref = torch.tensor(
        [
            v2.RandomResizedCrop.get_params(torch.zeros(3, 32, 32), [0.08, 1.0], [3 / 4, 4 / 3])
            for _ in range(N)
        ]
    )
    area, ref_area = (boxes[:, 2] * boxes[:, 3]).numpy(), (ref[:, 2] * ref[:, 3]).numpy()
    assert stats.ks_2samp(area, ref_area).pvalue < P_MIN


@pytest.mark.parametrize("hue", [0.1, 0.4])
def test_jitter_factors_and_orders_follow_colorjitter(hue):
    colour = sample_params(_recipe(hue=hue), N, 32, 32, _gen())["color"]
    torch.manual_seed(0)
    jitter = v2.ColorJitter(0.4, 0.4, 0.4, hue)
    draws = [
        v2.ColorJitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
        for _ in range(N)
    ]
    ref = torch.tensor([d[1:] for d in draws])
    for i in range(4):
        assert stats.ks_2samp(colour["factors"][:, i].numpy(), ref[:, i].numpy()).pvalue > P_MIN
    # each sample its own order: the 24 permutations as frequent as torchvision's, in ONE batch
    code = lambda orders: (orders * torch.tensor([64, 16, 4, 1])).sum(1)  # noqa: E731
    ours = torch.bincount(code(colour["order"]), minlength=256)
    theirs = torch.bincount(code(torch.stack([d[0] for d in draws])), minlength=256)
    used = (ours + theirs) > 0
    assert int(used.sum()) == 24
    table = np.stack([ours[used].numpy(), theirs[used].numpy()])
    assert stats.chi2_contingency(table).pvalue > P_MIN


def test_binary_choices_and_rotations_have_their_probabilities():
    recipe = recipe_from_config(AugmentConfig(blur=True, rotation=True), 32, MEAN, STD)
    p = sample_params(recipe, N, 32, 32, _gen())
    for value, prob in [
        (p["crop"]["flip"], 0.5),
        (p["color"]["apply"], 0.8),
        (p["color"]["gray"], 0.2),
        (p["blur"]["apply"], 0.5),
    ]:
        assert stats.binomtest(int(value.sum()), N, prob).pvalue > P_MIN
    assert (
        stats.ks_2samp(
            p["blur"]["sigma"].numpy(), np.random.default_rng(0).uniform(0.1, 2.0, N)
        ).pvalue
        > P_MIN
    )
    counts = torch.bincount(p["rotation"]["k"], minlength=4).numpy()
    assert stats.chisquare(counts).pvalue > P_MIN and counts.sum() == N


def _torchvision_view(img, recipe, p, i):
    """One view rendered with torchvision's functional ops and the sampled parameters of view i."""
    x = TF.to_dtype(img, torch.float32, scale=True)
    top, left, h, w = p["crop"]["boxes"][i].tolist()
    x = TF.resized_crop(x, top, left, h, w, [recipe.image_size] * 2, antialias=True)
    c = p["color"]
    if recipe.gray_first and c["gray"][i]:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if c["apply"][i]:
        fns = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
        for op in c["order"][i].tolist():
            x = fns[op](x, float(c["factors"][i, op]))
    if not recipe.gray_first and c["gray"][i]:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if "blur" in p and p["blur"]["apply"][i]:
        s = float(p["blur"]["sigma"][i])
        x = TF.gaussian_blur(x, [recipe.blur_kernel] * 2, [s, s])
    if p["crop"]["flip"][i]:
        x = TF.horizontal_flip(x)
    if "rotation" in p:
        x = torch.rot90(x, int(p["rotation"]["k"][i]), dims=(-2, -1))
    return TF.normalize(x, list(MEAN), list(STD))


@pytest.mark.parametrize(
    "aug,size,native",
    [
        (dict(recipe="moco_v2"), 32, 32),
        (dict(recipe="moco_v1"), 32, 32),
        (dict(recipe="moco_v2", blur=True, rotation=True), 64, 96),
    ],
)
def test_whole_views_match_torchvision_with_the_same_parameters(aug, size, native):
    recipe = recipe_from_config(AugmentConfig(**aug), size, MEAN, STD)
    images = torch.randint(0, 256, (16, 3, native, native), dtype=torch.uint8, generator=_gen(3))
    p = sample_params(recipe, 16, native, native, _gen(4))
    out = render(recipe, images, p)
    ref = torch.stack([_torchvision_view(img, recipe, p, i) for i, img in enumerate(images)])
    assert (out - ref).abs().max().item() <= 1e-4 * max(1 / s for s in STD)


@pytest.mark.parametrize(
    "atomic", [("color",), ("rotation",), ("texture",), ("color", "rotation", "texture")]
)
def test_looc_keys_share_exactly_one_augmentation_with_the_query(atomic):
    recipe = recipe_from_config(AugmentConfig(), 32, MEAN, STD, atomic)
    views = BatchedViews(recipe, len(atomic) + 2)
    batch = 64
    p = views.params(batch, 32, 32, _gen())
    chunk = lambda value, v: value[v * batch : (v + 1) * batch]  # noqa: E731
    for v in range(1, len(atomic) + 2):
        shared = atomic[v - 2] if v >= 2 else None
        for group, values in p.items():
            for name, value in values.items():
                same = chunk(value, v) == chunk(value, 0)
                if value.numel() == 0:  # crop.source: a shape, not a draw
                    assert value.shape[1:] == (32, 32, 0)
                elif group == shared:
                    assert bool(same.all()), (v, group, name)
                elif value.is_floating_point() and name != "weight":
                    assert not bool(same.any()), (v, group, name)  # drawn anew
                elif name == "weight":
                    assert not torch.equal(chunk(value, v), chunk(value, 0))
                else:
                    assert not bool(same.all()), (v, group, name)


def test_views_are_reproducible_from_the_generator_and_differ_between_views():
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=_gen(5))
    views = BatchedViews(_recipe(), 2)
    a, b = views(images, _gen(7)), views(images, _gen(7))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], a[1])
    c = views(images, _gen(8))
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (32, 3, 32, 32) and a[0].dtype == torch.float32


def test_recipe_none_is_the_normalized_image():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=_gen(5))
    recipe = _recipe(recipe="none")
    (view,) = BatchedViews(recipe, 1)(images, _gen())
    expected = TF.normalize(images.float() / 255, list(MEAN), list(STD))
    assert torch.allclose(view, expected, atol=1e-6)
    assert math.isclose(recipe.crop_scale[0], 0.2)


def _per_image_record(p, i):
    """Sample i of a batched parameter tree as a record of ``data/looc_views.LoocViews``."""
    record = {
        "crop": tuple(p["crop"]["boxes"][i].tolist()),
        "flip": bool(p["crop"]["flip"][i]),
        "blur": None,
    }
    if "blur" in p:
        record["blur"] = {
            "apply": bool(p["blur"]["apply"][i]),
            "sigma": float(p["blur"]["sigma"][i]),
        }
    if "color" in p:
        c = p["color"]
        b, con, s, h = c["factors"][i].tolist()
        record["color"] = {
            "apply": bool(c["apply"][i]),
            "brightness": b,
            "contrast": con,
            "saturation": s,
            "hue": h,
            "order": tuple(c["order"][i].tolist()),
            "gray": bool(c["gray"][i]),
        }
    if "rotation" in p:
        record["rotation"] = {"k": int(p["rotation"]["k"][i])}
    if "texture" in p:
        k = int(p["texture"]["size"][i])
        pad = (7 - k) // 2
        weight = p["texture"]["weight"][i][:, :, pad : pad + k, pad : pad + k]
        record["texture"] = {
            "kernel_size": k,
            "weight": weight,
            "alpha": float(p["texture"]["alpha"][i]),
        }
    return record


@pytest.mark.parametrize("recipe", ["moco_v1", "moco_v2"])
@pytest.mark.parametrize("atomic", [("color",), ("color", "rotation", "texture")])
def test_batched_looc_views_equal_the_per_image_looc_views(recipe, atomic):
    from contrastlab.data.looc_views import LoocViews

    aug = AugmentConfig(recipe=recipe, blur=True)
    batched = BatchedViews(recipe_from_config(aug, 32, MEAN, STD, atomic), len(atomic) + 2)
    per_image = LoocViews(atomic, 32, MEAN, STD, aug)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=_gen(2))
    p = batched.params(6, 32, 32, _gen(9))
    stacked = images.repeat(len(atomic) + 2, 1, 1, 1)
    out = render(batched.recipe, stacked, p)
    for i in range(len(stacked)):
        x = stacked[i].float() / 255
        expected = per_image.render(x, _per_image_record(p, i))
        assert (out[i] - expected).abs().max().item() <= 1e-4 / min(STD), i


def _per_image_ops(aug: AugmentConfig, size: int, atomic: tuple) -> dict[str, bool]:
    """Which ops the per-image reference pipeline (``data.views=per_image``) runs."""
    from contrastlab.data.augment import RandomRotation90, build_train_transform
    from contrastlab.data.looc_views import LoocViews

    if atomic:  # LooC: crop and flip always
        looc = LoocViews(atomic, size, MEAN, STD, aug)
        return {
            "center_crop": False,
            "color": "color" in looc.ops,
            "blur": looc.blur,
            "rotation": "rotation" in looc.ops,
            "texture": "texture" in looc.ops,
        }
    steps = build_train_transform(aug, size, MEAN, STD).transforms

    def has(kind):
        inner = [getattr(s, "transforms", [s]) for s in steps]  # RandomApply wraps its op
        return any(isinstance(t, kind) for ts in inner for t in ts)

    return {
        "center_crop": not has(v2.RandomResizedCrop),
        "color": has(v2.ColorJitter),
        "blur": has(v2.GaussianBlur),
        "rotation": has(RandomRotation90),
        "texture": False,
    }


@pytest.mark.parametrize("atomic", [(), ("color",), ("rotation",), ("texture",)])
@pytest.mark.parametrize("recipe", ["moco_v1", "moco_v2", "none"])
@pytest.mark.parametrize("blur", [None, True, False])
@pytest.mark.parametrize("size", [32, 96])
def test_batched_views_run_the_ops_of_the_per_image_pipeline(atomic, recipe, blur, size):
    """``data.views`` changes how views are made, never which ops make them: with LooC and
    ``augment.recipe=none`` the batched views used to take the centre crop and drop the blur."""
    for rotation in (False, True):
        aug = AugmentConfig(recipe=recipe, blur=blur, rotation=rotation)
        batched = recipe_from_config(aug, size, MEAN, STD, atomic)
        made = {k: getattr(batched, k) for k in ("center_crop", "color", "blur", "rotation")}
        made["texture"] = batched.texture
        assert made == _per_image_ops(aug, size, atomic), (aug, atomic)


# -- bad input ----------------------------------------------------------------------------------


def _images(*shape, dtype=torch.uint8):
    return torch.randint(0, 256, shape, generator=_gen(1)).to(dtype)


@pytest.mark.parametrize("make", [render, lambda recipe, x, p: compiled_render(recipe)(x, p)])
@pytest.mark.parametrize(
    "images, message",
    [
        (
            _images(4, 3, 32, 32, dtype=torch.int32),
            r"uint8 \(0-255\) or floating point in \[0, 1\]",
        ),
        (_images(4, 3, 32, 32, dtype=torch.bool), "got torch.bool"),
        (_images(4, 32, 32, 3), r"\[N, 3, H, W\], got shape \(4, 32, 32, 3\)"),
        (_images(3, 32, 32), r"got shape \(3, 32, 32\)"),
        (_images(4, 3, 64, 64), "sampled for images of 32x32, these are 64x64"),
        (_images(4, 3, 32, 48), "these are 32x48; sample them with height=32, width=48"),
        (_images(5, 3, 32, 32), "the parameters hold 4 views but 5 images"),
    ],
)
def test_render_refuses_images_it_cannot_read_and_parameters_of_other_images(make, images, message):
    recipe = recipe_from_config(AugmentConfig(blur=True, rotation=True), 32, MEAN, STD, ("color",))
    p = sample_params(recipe, 4, 32, 32, _gen())
    with pytest.raises(ValueError, match=message):  # checked before compiling: no UserError
        make(recipe, images, p)


def test_render_checks_the_size_of_crops_that_arrive_cropped():
    recipe = recipe_from_config(AugmentConfig(), 32, MEAN, STD, crop=False)
    p = sample_params(recipe, 2, 32, 32, _gen())
    assert render(recipe, _images(2, 3, 32, 32), p).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="sampled for images of 32x32, these are 40x40"):
        render(recipe, _images(2, 3, 40, 40), p)


def test_render_takes_uint8_and_float_images_alike():
    recipe = _recipe(blur=True)
    images = _images(4, 3, 32, 32)
    p = sample_params(recipe, 4, 32, 32, _gen())
    for floats in (images.double() / 255, images.half() / 255):
        assert torch.allclose(render(recipe, floats, p), render(recipe, images, p), atol=0.02)


@pytest.mark.parametrize("atomic, num_views", [((), 1), ((), 2), ((), 3), (("color",), 3)])
@pytest.mark.parametrize("crop", [True, False])
def test_an_empty_batch_gives_num_views_empty_views(atomic, num_views, crop):
    recipe = recipe_from_config(AugmentConfig(), 32, MEAN, STD, atomic, crop=crop)
    views = BatchedViews(recipe, num_views)
    shape = (0, 3, 32, 32) if crop else (0, num_views, 3, 32, 32)
    out = views(torch.zeros(shape, dtype=torch.uint8), _gen())
    assert len(out) == num_views
    assert all(v.shape == (0, 3, 32, 32) and v.dtype == torch.float32 for v in out)
    assert len(views(_images(2, *shape[1:]), _gen())) == num_views


@pytest.mark.parametrize("num_views", [0, -1])
def test_fewer_than_one_view_is_refused(num_views):
    with pytest.raises(ValueError, match=f"num_views must be at least 1, got {num_views}"):
        BatchedViews(_recipe(), num_views)


def test_batched_views_refuse_images_of_the_wrong_layout():
    with pytest.raises(
        ValueError, match=r"images must be \[B, 3, H, W\], got shape \(2, 32, 32, 3\)"
    ):
        BatchedViews(_recipe(), 2)(_images(2, 32, 32, 3), _gen())
    cropped = BatchedViews(recipe_from_config(AugmentConfig(), 32, MEAN, STD, crop=False), 2)
    with pytest.raises(ValueError, match=r"\[B, 2, 3, S, S\] \(a crop per view\)"):
        cropped(_images(4, 3, 3, 32, 32), _gen())
    with pytest.raises(ValueError, match=r"\[B, 2, 3, S, S\]"):
        cropped(_images(4, 3, 32, 32), _gen())


def test_calling_batched_views_is_documented():
    doc = BatchedViews.__call__.__doc__ or ""
    assert "[B, 3, S, S]" in doc and "[q, k0, k_1..k_n]" in doc and "empty batch" in doc


# ----------------------------------------------------------------------------------------------
# Inputs given in Python: one clear ValueError each
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "aug, size, message",
    [
        # before: taken silently, and "v2" ran as a moco_v2-like recipe
        ({"recipe": "v2"}, 32, r"augment.recipe='v2' is not valid.*valid values: moco_v1"),
        ({"crop_scale_min": 0.0}, 32, r"augment.crop_scale_min must be a number in \(0, 1\]"),
        ({"hue": 0.7}, 32, r"augment.hue must be a number in \[0, 0.5\]"),
        ({"grayscale_p": "0.2"}, 32, r"augment.grayscale_p must be .*got '0.2' \(str\)"),
        ({"blur": "yes"}, 32, "augment.blur must be true or false"),
        ({}, 0, r"image_size must be an integer in \[8, 4096\], got 0"),
        ({}, 32.0, r"image_size must be an integer in \[8, 4096\], got 32.0"),
    ],
)
def test_recipe_from_config_checks_the_augment_config_and_the_size(aug, size, message):
    with pytest.raises(ValueError, match=message):
        recipe_from_config(AugmentConfig(**aug), size, MEAN, STD)


@pytest.mark.parametrize(
    "mean, std, atomic, message",
    [
        (MEAN, (0.2, 0.0, 0.3), (), r"std must be 3 numbers > 0"),  # before: inf/NaN views
        (MEAN, (0.2, 0.3), (), r"std must be 3 finite numbers"),
        ((0.5, math.nan, 0.5), STD, (), r"mean must be 3 finite numbers"),
        (MEAN, STD, ("colour",), "atomic must list each of color, rotation, texture at most"),
        (MEAN, STD, ("color", "color"), "at most once"),
    ],
)
def test_a_recipe_that_would_render_non_finite_or_unknown_views_is_refused(
    mean, std, atomic, message
):
    with pytest.raises(ValueError, match=message):
        recipe_from_config(AugmentConfig(), 32, mean, std, atomic)


@pytest.mark.parametrize(
    "args, message",
    [
        ({"gen": None}, r"gen must be a torch.Generator .*got NoneType"),  # before: AttributeError
        ({"height": 0}, "height must be an integer >= 1, got 0"),  # before: ZeroDivisionError
        ({"width": 2.5}, "width must be an integer >= 1, got 2.5"),
        ({"n": -1}, "n must be an integer >= 0, got -1"),  # before: a RuntimeError of torch.rand
        ({"recipe": AugmentConfig()}, "recipe must be a ViewRecipe"),
    ],
)
def test_sample_params_refuses_wrong_arguments(args, message):
    call = {"recipe": _recipe(), "n": 4, "height": 32, "width": 32, "gen": _gen()} | args
    with pytest.raises(ValueError, match=message):
        sample_params(**call)


def _without(p, group):
    return {g: v for g, v in p.items() if g != group}


@pytest.mark.parametrize("make", [render, lambda recipe, x, p: compiled_render(recipe)(x, p)])
@pytest.mark.parametrize(
    "images, params, message",
    [
        # before: "got shape (4, 3, 32, 32)", a blank number of views, KeyError: 'crop'
        (lambda x: x.numpy(), None, r"images must be a torch tensor .*got ndarray"),
        (None, lambda p: {}, r"p must be the parameters that sample_params returns .*got a dict"),
        (None, lambda p: _without(p, "crop"), r"'crop' among them\), got a dict of \['blur'"),
        (None, lambda p: [p], r"p must be the parameters .*got list"),
        (None, lambda p: _without(p, "color"), r"the parameters hold \['blur', 'crop', 'rot"),
    ],
)
def test_render_refuses_parameters_that_sample_params_did_not_give(make, images, params, message):
    recipe = recipe_from_config(AugmentConfig(blur=True, rotation=True), 32, MEAN, STD)
    x, p = _images(4, 3, 32, 32), sample_params(recipe, 4, 32, 32, _gen())
    x, p = (images or (lambda x: x))(x), (params or (lambda p: p))(p)
    with pytest.raises(ValueError, match=message):
        make(recipe, x, p)
