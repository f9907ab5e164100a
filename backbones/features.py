"""A backbone's features of a whole data set: what evaluation and deepcluster's clustering use."""
from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from datasets import ImageSet
from datasets.augment import build_augmentation


@torch.no_grad()
def extract_features(backbone: nn.Module, data: ImageSet, device: torch.device,
                     batch_size: int = 256, desc: str = "Features") -> torch.Tensor:
    """Backbone features (N, F) of the un-augmented, normalised images, in eval mode."""
    was_training = backbone.training
    backbone.eval()
    normalise = build_augmentation("none", data.mean, data.std)
    generator = torch.Generator(device=device)
    chunks = []
    for start in tqdm(range(0, len(data), batch_size), desc=desc, leave=False, disable=None):
        images = data.images[start:start + batch_size].to(device)
        chunks.append(backbone(normalise(images, generator)).float())
    backbone.train(was_training)
    return torch.cat(chunks)
