"""Batched augmentation (datasets/augment*.py) against torchvision, op by op (in distribution:
test_augment_distribution.py)."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.functional as TF

from datasets.augment import (
    AffineEraseViews,
    CropColorAugmentation,
    CropColorViews,
    CropFlipViews,
    NormalisedViews,
    build_augmentation,
    named_views,
)
from datasets.augment_geometric import random_resized_crop_boxes, resized_crop_flip
from datasets.augment_photometric import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    blur_kernel_size,
    gaussian_blur,
)
from tests.helpers import SHARED_CIFAR10

CIFAR10_BATCH = SHARED_CIFAR10 / "data_batch_1"
MEAN, STD = (0.491, 0.482, 0.447), (0.247, 0.243, 0.262)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _random_images(n, height, width, seed=0):
    return torch.randint(0, 256, (n, 3, height, width), generator=_gen(seed), dtype=torch.uint8)


# The views of every method but the supervised STL-10 baseline's (which needs a cutout scale).
VIEWS = {
    "relationnet": CropColorViews(),
    "relic_global": CropColorViews(crop_scale=(0.1, 1.0), blur_p=1.0, solarize_p=0.2),
    "relic_local": CropColorViews(crop_scale=(0.05, 1.0), blur_p=1.0),
    "byol_first": CropColorViews(jitter=(0.4, 0.4, 0.2, 0.1), blur_p=1.0),
    "byol_second": CropColorViews(jitter=(0.4, 0.4, 0.2, 0.1), blur_p=0.1, solarize_p=0.2),
    "simsiam": CropColorViews(jitter=(0.4, 0.4, 0.4, 0.1), blur_p=0.5),
    "pad_crop_flip": CropFlipViews(),
    "flip": CropFlipViews(padded=False),
    "none": NormalisedViews(),
}


def _unnormalise(x):
    return x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)


# --- API, shapes, determinism ----------------------------------------------------------


@pytest.mark.parametrize("kind", VIEWS)
@pytest.mark.parametrize("size", [(32, 32), (64, 64), (24, 40)])
def test_shape_dtype_device(kind, size):
    images = _random_images(20, *size)
    out = build_augmentation(VIEWS[kind], MEAN, STD, padding=4)(images, _gen(0))
    assert out.shape == images.shape and out.dtype == torch.float32
    assert out.device == images.device and out.is_contiguous()
    assert torch.isfinite(out).all()
    raw = _unnormalise(out)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5


@pytest.mark.parametrize("kind", VIEWS)
def test_same_seed_same_output(kind):
    images = _random_images(64, 32, 32)
    aug = build_augmentation(VIEWS[kind], MEAN, STD, padding=4)
    first, again = aug(images, _gen(7)), aug(images, _gen(7))
    assert torch.equal(first, again)
    if kind != "none":
        assert not torch.equal(first, aug(images, _gen(8)))


def test_empty_batch():
    out = build_augmentation(CropColorViews(), MEAN, STD)(_random_images(0, 32, 32), _gen(0))
    assert out.shape == (0, 3, 32, 32)


def test_chunk_size_does_not_change_output():
    images = _random_images(300, 32, 32)
    outs = [CropColorAugmentation(MEAN, STD, chunk_size=c)(images, _gen(3)) for c in (7, 64, None, 1000)]
    # Equal up to float rounding, not bit for bit: a kernel may vectorise 7 images otherwise
    # than 300 (some CPUs' kernels do). A value comes from about a dozen float32 ops on pixels
    # in [0, 1] (interpolation, four jitter ops with per-image means, grayscale), each off by at
    # most half an ulp of 1, and each jitter factor (at most 1.8) scales the error before it:
    # under 32 ulps of 1 in all. Twice that, divided by the smallest std, is the tolerance
    # (3e-5); a chunking fault (an image given another's parameters) moves values by 0.1 or more.
    atol = 64 * torch.finfo(torch.float32).eps / min(STD)
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=0, atol=atol)


def test_unknown_kind_and_bad_input():
    with pytest.raises(ValueError, match="unknown augmentation 'simclr2'; valid: pad_crop_flip, .*, standard, none"):
        named_views("simclr2")
    aug = build_augmentation(CropFlipViews(), MEAN, STD, padding=4)
    for bad in (
        torch.zeros(2, 3, 8, 8),
        torch.zeros(3, 8, 8, dtype=torch.uint8),
        torch.zeros(2, 1, 8, 8, dtype=torch.uint8),
        torch.zeros(2, 4, 8, 8, dtype=torch.uint8),
    ):
        with pytest.raises(ValueError, match="uint8 tensor"):
            aug(bad, _gen(0))
    with pytest.raises(ValueError):
        build_augmentation(NormalisedViews(), MEAN[:2], STD)


def test_views_refuse_impossible_parameters():
    for bad in ({"blur_p": 1.5}, {"gray_p": -0.1}, {"crop_scale": (0.0, 1.0)}, {"size": 13, "size_ratio": 0.5}):
        with pytest.raises(ValueError):
            CropColorViews(**bad)
    assert CropColorViews(size_ratio=3 / 7).side(32) == 13 and CropFlipViews().side(32) is None


def test_none_is_exact_normalisation():
    images = _random_images(16, 32, 32)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    expected = (images.float() / 255 - mean) / std
    assert torch.equal(build_augmentation(NormalisedViews(), MEAN, STD)(images, _gen(0)), expected)


# --- standard and flip: exact crops ----------------------------------------------------


def _match_candidates(out, candidates):
    """Index of the candidate each output equals exactly (asserts there is one)."""
    index = torch.cdist(out.flatten(1).double(), candidates.flatten(1).double()).argmin(1)
    assert torch.equal(out, candidates[index])
    return index


def test_standard_is_a_padded_random_crop_with_flip():
    height, width, pad, n = 10, 14, 3, 3000
    image = _random_images(1, height, width, seed=1)
    norm = build_augmentation(NormalisedViews(), MEAN, STD)
    padded = F.pad(image, (pad, pad, pad, pad))
    crops = [padded[..., i : i + height, j : j + width] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]
    candidates = norm(torch.cat(crops + [c.flip(-1) for c in crops]), _gen(0))
    standard = build_augmentation(CropFlipViews(), MEAN, STD, padding=pad)
    out = standard(image.expand(n, -1, -1, -1), _gen(0))
    index = _match_candidates(out, candidates)
    flipped = (index >= len(crops)).double().mean().item()
    assert abs(flipped - 0.5) < 4 * math.sqrt(0.25 / n)  # binomial, 4 standard errors
    # 49 offsets, ~61 draws each: all occur (P(one missing) < 49 * exp(-61)).
    assert set((index % len(crops)).tolist()) == set(range(len(crops)))


def test_flip_mirrors_about_half():
    n, image = 2000, _random_images(1, 12, 9, seed=2)
    candidates = build_augmentation(NormalisedViews(), MEAN, STD)(torch.cat([image, image.flip(-1)]), _gen(0))
    out = build_augmentation(CropFlipViews(padded=False), MEAN, STD)(image.expand(n, -1, -1, -1), _gen(0))
    flipped = _match_candidates(out, candidates).double().mean().item()
    assert abs(flipped - 0.5) < 4 * math.sqrt(0.25 / n)


# --- relationnet ops against torchvision ----------------------------------------------


def _float_images(n, seed, quantised):
    x = torch.rand(n, 3, 16, 16, generator=_gen(seed))
    # Quantised values make ties (two channels equal to the max, grey pixels) common,
    # which exercises the red > green > blue branch priority of rgb -> hsv.
    return (x * 7).round() / 7 if quantised else x


@pytest.mark.parametrize("quantised", [False, True])
def test_hue_matches_torchvision(quantised):
    x = _float_images(32, 0, quantised)
    for factor in (-0.5, -0.31, -0.2, -0.05, 0.0, 0.013, 0.2, 0.37, 0.5):
        ours = adjust_hue(x, torch.full((len(x),), factor))
        torch.testing.assert_close(ours, TF.adjust_hue(x, factor), atol=1e-5, rtol=0)
    factors = torch.linspace(-0.5, 0.5, len(x))
    expected = torch.stack([TF.adjust_hue(img, f.item()) for img, f in zip(x, factors)])
    torch.testing.assert_close(adjust_hue(x, factors), expected, atol=1e-5, rtol=0)


def test_brightness_contrast_saturation_match_torchvision():
    x = _float_images(24, 1, False)
    factors = torch.linspace(0.2, 1.8, len(x))
    for ours, theirs in (
        (adjust_brightness, TF.adjust_brightness),
        (adjust_contrast, TF.adjust_contrast),
        (adjust_saturation, TF.adjust_saturation),
    ):
        expected = torch.stack([theirs(img, f.item()) for img, f in zip(x, factors)])
        torch.testing.assert_close(ours(x, factors), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_resized_crop_flip_matches_torchvision(size):
    height, width = size
    x = _float_images(1, 2, False)
    x = F.interpolate(x, size=size, mode="bilinear").expand(8, -1, -1, -1).contiguous()
    boxes = torch.tensor(
        [
            [0, 0, height, width],
            [3, 5, 10, 12],
            [0, 7, 5, 4],
            [height - 9, width - 9, 9, 9],
            [1, 2, height - 3, width - 4],
            [4, 0, 1, 1],
            [2, 3, 17, 6],
            [5, 6, 7, 20],
        ]
    )
    flip = torch.tensor([False, True] * 4)
    out = resized_crop_flip(x, boxes, flip)
    for k, (top, left, h, w) in enumerate(boxes.tolist()):
        expected = TF.resized_crop(x[k], top, left, h, w, [height, width], antialias=True)
        expected = expected.flip(-1) if flip[k] else expected
        torch.testing.assert_close(out[k], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(32, 32), (20, 48)])
def test_crop_boxes_follow_torchvision_rule(size):
    """Valid boxes, distributed as RandomResizedCrop.get_params draws them.

    At (20, 48) most tries are too tall, so many boxes span the full height and ~1% take
    the central fallback.
    """
    height, width = size
    n = 20000
    ours = random_resized_crop_boxes(n, height, width, _gen(0)).double()
    top, left, h, w = ours.unbind(1)
    assert (h >= 1).all() and (w >= 1).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        image = torch.empty(3, height, width)
        theirs = torch.tensor(
            [T.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)], dtype=torch.float64
        )

    def features(b):  # top, left, h, w, area, full height
        area, full_height = b[:, 2] * b[:, 3], (b[:, 2] == height).double()
        return torch.cat([b, area[:, None], full_height[:, None]], 1)

    a, b = features(ours), features(theirs)
    # Each difference of two independent means must lie within 4.5 standard errors.
    se = ((a.var(0) + b.var(0)) / n).sqrt()
    assert ((a.mean(0) - b.mean(0)).abs() <= 4.5 * se).all(), (a.mean(0), b.mean(0), se)


@pytest.mark.parametrize("size", [(1, 64), (64, 1)])
def test_crop_boxes_fallback_is_torchvision_centre_crop(size):
    """No try can fit a 1-pixel-high (or -wide) image: every box is the central fallback."""
    height, width = size
    boxes = random_resized_crop_boxes(50, height, width, _gen(0))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        expected = T.RandomResizedCrop.get_params(torch.empty(3, height, width), [0.08, 1.0], [3 / 4, 4 / 3])
    assert (boxes == torch.tensor(expected)).all()


@pytest.mark.parametrize("views", [CropColorViews(), AffineEraseViews()])
def test_the_gpu_way_of_applying_ops_to_some_images_gives_the_cpu_values(views, monkeypatch):
    """On a GPU, grayscale, hue and the affine warp are computed for the whole batch and
    blended (no `nonzero`, which waits for the device); the values must not change."""
    from datasets import augment

    images = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pipeline = augment.build_augmentation(views, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), cutout=0.5)
    subsets = pipeline(images, torch.Generator().manual_seed(1))
    monkeypatch.setattr(augment, "_computes_subsets", lambda device: False)
    blended = pipeline(images, torch.Generator().manual_seed(1))
    assert torch.allclose(subsets, blended, atol=1e-5), (subsets - blended).abs().max()


def test_blur_kernel_and_gaussian_blur_match_torchvision():
    assert [blur_kernel_size(side) for side in (32, 64, 96)] == [5, 7, 11]
    x = torch.rand(4, 3, 13, 13, generator=_gen(1))
    sigma = torch.tensor([0.1, 0.7, 1.3, 2.0])
    expected = torch.stack([TF.gaussian_blur(image, [5, 5], [s.item(), s.item()]) for image, s in zip(x, sigma)])
    torch.testing.assert_close(gaussian_blur(x, 5, sigma), expected, rtol=1e-5, atol=1e-6)


def test_blur_probability_blurs_that_share_of_the_images():
    """BYOL's views blur with p 1 and 0.1: with p 0 the pipeline gives the unblurred views
    (the blur draws come after every other one), with p 0.5 about half of them change."""
    images = torch.randint(0, 256, (200, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    plain = CropColorAugmentation(MEAN, STD)(images, _gen(0))
    assert torch.equal(CropColorAugmentation(MEAN, STD, CropColorViews(blur_p=0.0))(images, _gen(0)), plain)
    half = CropColorAugmentation(MEAN, STD, CropColorViews(blur_p=0.5))(images, _gen(0))
    assert 0.35 < (half != plain).flatten(1).any(dim=1).float().mean() < 0.65
