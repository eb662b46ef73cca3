"""View transforms: what the training loop and the evaluation protocols rely on."""

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from contrastlab.config import AugmentConfig
from contrastlab.data.augment import (
    MultiView,
    blur_kernel_size,
    build_eval_transform,
    build_train_transform,
)

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _image(size=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=gen)


def _normalized(img):
    return (img.float() / 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[
        :, None, None
    ]


def _has(transform, kind) -> bool:
    def walk(t):
        if isinstance(t, kind):
            return True
        return any(walk(c) for c in getattr(t, "transforms", []))

    return walk(transform)


@pytest.mark.parametrize("recipe", ["moco_v1", "moco_v2", "none"])
@pytest.mark.parametrize("as_pil", [False, True])
def test_views_are_normalized_float_tensors_of_the_crop_size(recipe, as_pil):
    img = _image(48)
    if as_pil:
        img = Image.fromarray(img.permute(1, 2, 0).numpy())
    out = build_train_transform(AugmentConfig(recipe=recipe), 32, MEAN, STD)(img)
    assert type(out) is torch.Tensor and out.dtype == torch.float32 and out.shape == (3, 32, 32)


def test_two_views_differ_and_seeding_reproduces_them():
    views = MultiView(build_train_transform(AugmentConfig(recipe="moco_v2"), 32, MEAN, STD), n=2)
    img = _image()
    torch.manual_seed(0)
    a = views(img)
    torch.manual_seed(0)
    b = views(img)
    assert len(a) == 2 and not torch.equal(a[0], a[1])
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_recipe_none_only_normalizes_an_image_of_the_right_size():
    img = _image()
    out = build_train_transform(AugmentConfig(recipe="none"), 32, MEAN, STD)(img)
    assert torch.allclose(out, _normalized(img), atol=1e-5)


def test_rotation_option_turns_views_by_multiples_of_90_degrees():
    img = torch.zeros(3, 32, 32, dtype=torch.uint8)
    img[0, :8, :16] = 255  # a red bar at the top left: every rotation looks different
    tf = build_train_transform(AugmentConfig(recipe="none", rotation=True), 32, MEAN, STD)
    turned = [_normalized(torch.rot90(img, k, dims=(1, 2))) for k in range(4)]
    seen = set()
    torch.manual_seed(0)
    for _ in range(40):
        out = tf(img)
        matches = [k for k in range(4) if torch.allclose(out, turned[k], atol=1e-5)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == {0, 1, 2, 3}


def test_blur_follows_the_recipe_and_the_image_size():
    v2_cfg = AugmentConfig(recipe="moco_v2")
    assert not _has(
        build_train_transform(v2_cfg, 32, MEAN, STD), v2.GaussianBlur
    )  # CIFAR reference
    assert _has(build_train_transform(v2_cfg, 96, MEAN, STD), v2.GaussianBlur)
    assert _has(build_train_transform(AugmentConfig(blur=True), 32, MEAN, STD), v2.GaussianBlur)
    assert not _has(
        build_train_transform(AugmentConfig(blur=False), 224, MEAN, STD), v2.GaussianBlur
    )
    v1_cfg = AugmentConfig(recipe="moco_v1")
    assert not _has(build_train_transform(v1_cfg, 224, MEAN, STD), v2.GaussianBlur)
    assert (
        blur_kernel_size(224) == 23 and blur_kernel_size(32) == 3 and blur_kernel_size(96) % 2 == 1
    )


def test_eval_transform_is_deterministic_and_keeps_small_images_whole():
    img = _image()
    tf = build_eval_transform(32, MEAN, STD, native_size=32)
    assert torch.equal(tf(img), tf(img))
    assert torch.allclose(tf(img), _normalized(img), atol=1e-5)


def test_eval_transform_of_large_images_resizes_then_centre_crops():
    photo = Image.fromarray(torch.randint(0, 256, (300, 400, 3), dtype=torch.uint8).numpy())
    tf = build_eval_transform(224, MEAN, STD, native_size=None)
    out = tf(photo)
    assert out.shape == (3, 224, 224) and torch.equal(out, tf(photo))
    assert _has(tf, v2.Resize) and [t.size for t in tf.transforms if isinstance(t, v2.Resize)] == [
        [256]
    ]
