"""Colour and blur ops on batches of float images in [0, 1], with one parameter per image.

Each op computes what torchvision's op of the same name computes for one image, for a whole
batch (N, 3, H, W) at once: the colour jitter's four adjustments, grayscale and Gaussian blur.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from utils.tensors import tensor_sum

# torchvision's rgb_to_grayscale weights, used by its ColorJitter and RandomGrayscale.
_LUMA = (0.2989, 0.587, 0.114)


@functools.lru_cache(maxsize=None)
def device_constant(values: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A small constant tensor, made once per device: building it from Python values for
    every batch would be a host-to-device copy that waits for the GPU."""
    return torch.tensor(values, dtype=dtype, device=device)


def grayscale_rgb(x: torch.Tensor) -> torch.Tensor:
    return _grayscale(x).expand(-1, 3, -1, -1)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma (N, 1, H, W) of float RGB images."""
    return (x[:, 0:1] * _LUMA[0]).add_(x[:, 1:2], alpha=_LUMA[1]).add_(x[:, 2:3], alpha=_LUMA[2])


def _per_image(factor: torch.Tensor) -> torch.Tensor:
    return factor.view(-1, 1, 1, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Torchvision adjust_brightness with one factor per image; float input in [0, 1]."""
    return x.mul(_per_image(factor)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Torchvision adjust_contrast (blend with the mean luma) with one factor per image."""
    # The mean luma is linear in the channel means, which are much cheaper to reduce.
    luma = x.mean(dim=(2, 3)) @ device_constant(_LUMA, x.device, x.dtype)
    factor = _per_image(factor)
    return x.mul(factor).add_(_per_image(luma) * (1.0 - factor)).clamp_(0.0, 1.0)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Torchvision adjust_saturation (blend with the per-pixel luma) with one factor per image."""
    factor = _per_image(factor)
    return x.mul(factor).add_(_grayscale(x).mul_(1.0 - factor)).clamp_(0.0, 1.0)


# Hue of red, green and blue in sextants, shifted by 3 for the triangle wave below.
_HUE_OFFSETS = (0.0 - 3.0, 4.0 - 3.0, 2.0 - 3.0)


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Torchvision adjust_hue with one factor in [-0.5, 0.5] per image; float input in [0, 1].

    A closed form of RGB -> HSV -> shift -> RGB: with chroma c = max - min and the shifted
    hue H in sextants, channel k is min + c * clamp(|(H + o_k) mod 6 - 3| - 1, 0, 1) with
    o = (0, 4, 2) for (R, G, B).
    It needs neither torchvision's six sector masks nor its einsum and agrees with it to ~1e-6.
    """
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    chroma = maxc - minc
    # Hue numerator (scaled by the chroma, so one division serves all cases) for a max in
    # blue, switched to red's and then green's where those hold the max. For values in
    # [0, 1], floor(v - max) + 1 is 1 where v is the max and 0 elsewhere: an arithmetic
    # select, 2.5x faster than torch.where on boolean masks. Where channels tie for the max
    # their numerators are equal (or 6 sextants apart), so torchvision's priority among them
    # needs no care. Where the chroma is 0 so is the numerator: every channel becomes grey.
    hue = (r - g).add_(chroma, alpha=4.0)
    hue.add_((r - maxc).floor_().add_(1.0).mul_(g - b - hue))
    hue.add_((g - maxc).floor_().add_(1.0).mul_((b - r).add_(chroma, alpha=2.0) - hue))
    hue.div_(chroma.clamp_min(1e-12)).add_(factor.view(-1, 1, 1), alpha=6.0)
    # hue is in [-4, 8], so t = hue + offset - 3 is in [-7, 9], where |(t + 3) mod 6 - 3|
    # equals the fold 3 - |3 - ||t| - 6||; this avoids torch.remainder, the slowest op here.
    wave = hue.unsqueeze(1) + device_constant(_HUE_OFFSETS, x.device, x.dtype).view(1, 3, 1, 1)
    wave.abs_().sub_(6.0).abs_().sub_(3.0).abs_().sub_(1.0).clamp_(0.0, 1.0)
    return wave.mul_(chroma.unsqueeze(1).neg()).add_(maxc.unsqueeze(1))


def blur_kernel_size(side: int) -> int:
    """The odd Gaussian-blur kernel of relic-pytorch for images of `side` pixels: ceil(0.1 side)
    rounded up to odd (5 on CIFAR, 11 on STL-10)."""
    return math.ceil(0.1 * side) // 2 * 2 + 1


def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: torch.Tensor) -> torch.Tensor:
    """Torchvision gaussian_blur (reflect padding, separable kernel) with one sigma per image.

    The kernel is small (5 to 11 taps), so each direction is a weighted sum of shifted slices
    of the padded batch rather than a grouped convolution with a kernel per image.
    """
    half = (kernel_size - 1) / 2
    taps = torch.linspace(-half, half, kernel_size, device=x.device, dtype=x.dtype)
    weights = torch.exp(-0.5 * (taps / sigma.to(x.dtype)[:, None]).square())
    weights = (weights / weights.sum(dim=1, keepdim=True)).view(-1, 1, 1, 1, kernel_size)
    pad = kernel_size // 2
    height, width = x.shape[-2:]
    padded = F.pad(x, (pad, pad, 0, 0), mode="reflect")
    x = tensor_sum(weights[..., k] * padded[..., k : k + width] for k in range(kernel_size))
    padded = F.pad(x, (0, 0, pad, pad), mode="reflect")
    return tensor_sum(weights[..., k] * padded[..., k : k + height, :] for k in range(kernel_size))
