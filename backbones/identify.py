"""Which registered backbone a state dict holds, told from its keys and shapes alone: a
checkpoint, or a state dict converted from torchvision without the suite's `stem` key, is
matched with the `--backbone` and `--stem` that rebuild it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from backbones import STEMS, backbone_variants, build_backbone, refuse_stem_without_choice
from utils.errors import UserError


@lru_cache(maxsize=None)
def backbone_state(name: str, stem: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict of a backbone built on the meta device: names, shapes and dtypes only."""
    with torch.device("meta"):
        return build_backbone(name, stem).state_dict()


def _backbone_shapes(name: str, stem: str | None = None) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in backbone_state(name, stem).items()}


def identify_backbone(state_dict: dict) -> tuple[str, str | None] | None:
    """The registered (backbone, stem) whose state-dict keys and shapes match, if any; the stem
    is None for backbones with a single stem."""
    shapes = {key: tuple(value.shape) for key, value in state_dict.items()}
    for name, stem in backbone_variants():
        if _backbone_shapes(name, stem) == shapes:
            return name, stem
    return None


def describe_variant(name: str, stem: str | None) -> str:
    return f"{name} backbone" if stem is None else f"{name} backbone with the {stem} stem"


def check_backbone_identity(state_dict: dict, backbone: str, path: str | Path, stem: str | None = "auto") -> str | None:
    """Refuse, with the fix, the state dict of checkpoint `path` when its backbone is not
    `--backbone` or its stem is not `stem` (the stem the stage builds; 'auto' takes the
    checkpoint's); returns the stem it holds (None for a backbone with a single stem).

    The stem is read from the weights (the shape of `conv1`), which a checkpoint's `stem` key
    records too; so a state dict converted from torchvision, without that key, works."""
    refuse_stem_without_choice(backbone, stem)
    held = identify_backbone(state_dict)
    if held is None:
        raise UserError(
            f"checkpoint {path} holds a backbone this suite does not know "
            f"(its weights match none of the registered backbones)"
        )
    name, held_stem = held
    if name != backbone:
        fix = f"--backbone {name}"
        if held_stem is not None and stem in STEMS and stem != held_stem:
            fix += f" --stem {held_stem}"
        raise UserError(f"checkpoint {path} holds a {describe_variant(name, held_stem)}, not {backbone}: pass {fix}")
    if stem in STEMS and stem != held_stem:
        raise UserError(
            f"checkpoint {path} holds a {describe_variant(name, held_stem)}, not the {stem} stem: "
            f"pass --stem {held_stem}"
        )
    return held_stem
