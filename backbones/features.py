"""A backbone's features of a whole data set: what evaluation and deepcluster's clustering use."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from backbones.protocol import Backbone
from datasets import ImageSet
from datasets.augment import NormalisedViews, build_augmentation
from utils.errors import UserError


@torch.no_grad()
def extract_features(
    backbone: Backbone,
    data: ImageSet,
    device: torch.device,
    batch_size: int = 256,
    desc: str = "Features",
    checkpoint: str | Path | None = None,
) -> torch.Tensor:
    """Backbone features (N, F) of the un-augmented, normalised images, in eval mode. With the
    `checkpoint` the weights come from, features that are not finite are refused naming it:
    every score computed from them would be chance."""
    was_training = backbone.training
    backbone.eval()
    normalise = build_augmentation(NormalisedViews(), data.mean, data.std)
    generator = torch.Generator(device=device)
    chunks = []
    for start in tqdm(range(0, len(data), batch_size), desc=desc, leave=False, disable=None):
        images = data.images[start : start + batch_size].to(device)
        chunks.append(backbone(normalise(images, generator)).float())
    backbone.train(was_training)
    features = torch.cat(chunks)
    if checkpoint is not None and not bool(torch.isfinite(features).all()):
        raise UserError(
            f"checkpoint {checkpoint}: its backbone gives non-finite features (NaN or inf) on "
            f"the {data.split} images: its weights are too large for them; use an earlier "
            "checkpoint of the run that wrote it"
        )
    return features
