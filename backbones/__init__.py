"""Backbone registry: name -> constructor of a feature extractor.

resnet18 and resnet50 are built with a stem (`STEMS`); `resolve_stem` turns the
`--stem` flag and the image size into the stem to build with.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import torch

from backbones.conv4 import Conv4
from backbones.protocol import Backbone
from backbones.resnet_large import STEMS, resnet18, resnet34, resnet50
from backbones.resnet_small import resnet8, resnet32, resnet56
from utils.errors import UserError

__all__ = [
    "BACKBONES",
    "Backbone",
    "CIFAR_STEM_MAX_SIDE",
    "STEMS",
    "STEM_CHOICE",
    "backbone_variants",
    "build_backbone",
    "check_image_side",
    "refuse_stem_without_choice",
    "resolve_stem",
]

BACKBONES: dict[str, Callable[..., Backbone]] = {
    "conv4": Conv4,
    "resnet8": resnet8,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
}

#: Backbones built with either stem (their constructors take `stem`); the others have one.
STEM_CHOICE = ("resnet18", "resnet50")

#: `--stem auto` gives images up to this side the CIFAR stem, larger ones the ImageNet stem.
CIFAR_STEM_MAX_SIDE = 32


def backbone_variants() -> list[tuple[str, str | None]]:
    """Every (name, stem) that can be built: each stem of the backbones with a choice, None
    for the others."""
    return [(name, stem) for name in BACKBONES for stem in (STEMS if name in STEM_CHOICE else (None,))]


def refuse_stem_without_choice(name: str, stem: str | None) -> None:
    """Refuse an explicit `--stem` for a backbone that has a single stem."""
    if stem in STEMS and name not in STEM_CHOICE:
        raise UserError(
            f"--stem {stem}: backbone {name} has a single stem; drop --stem, or pass a "
            f"backbone with a stem choice ({', '.join(STEM_CHOICE)})"
        )


def resolve_stem(name: str, stem: str = "auto", image_size: int | None = None) -> str | None:
    """The stem backbone `name` is built with for `--stem stem` on images of `image_size`
    pixels: None for a backbone with a single stem, an explicit stem as given, and for auto
    the CIFAR stem up to 32 px and the ImageNet stem above."""
    refuse_stem_without_choice(name, stem)
    if name not in STEM_CHOICE:
        return None
    if stem != "auto":
        return stem
    if image_size is None:
        raise UserError(
            f"--stem auto: the image size, which picks the stem of {name}, is unknown before "
            "the images are read: pass --image_size, or --stem cifar or --stem imagenet"
        )
    return "cifar" if image_size <= CIFAR_STEM_MAX_SIDE else "imagenet"


def build_backbone(name: str, stem: str | None = None) -> Backbone:
    """A freshly initialised backbone by name; `stem` ('cifar' or 'imagenet') is required by
    the backbones with a stem choice and refused by the others."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{name}': choose one of {', '.join(BACKBONES)}")
    if name in STEM_CHOICE:
        if stem not in STEMS:
            raise ValueError(f"backbone '{name}' needs a stem, one of {', '.join(STEMS)}; got {stem!r}")
        return BACKBONES[name](stem)
    if stem is not None:
        raise ValueError(f"backbone '{name}' has a single stem; got stem {stem!r}")
    return BACKBONES[name]()


@lru_cache(maxsize=None)
def _shape_only(name: str, stem: str | None) -> Backbone:
    """The backbone on the meta device: it computes output shapes without memory or arithmetic."""
    with torch.device("meta"):
        return build_backbone(name, stem).eval()


def _takes_side(name: str, stem: str | None, side: int) -> bool:
    try:
        _shape_only(name, stem)(torch.zeros(2, 3, side, side, device="meta"))
    except RuntimeError:  # a pooling or convolution output of size 0
        return False
    return True


def check_image_side(name: str, stem: str | None, side: int, what: str = "images") -> None:
    """Refuse, in one line before any training, images (or views) of `side` pixels that
    backbone `name` pools away to nothing (conv4 halves the side four times)."""
    if _takes_side(name, stem, side):
        return
    smallest = next(s for s in range(side + 1, 4097) if _takes_side(name, stem, s))
    raise UserError(
        f"{what} of {side}x{side} px are too small for backbone {name}, which needs at least "
        f"{smallest}x{smallest}: pass a larger --image_size (--dataset folder) or another --backbone"
    )
