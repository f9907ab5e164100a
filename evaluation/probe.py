"""The online linear probe: a linear classifier trained during pretraining on the detached
features of the backbone that stage 2 evaluates, as solo-learn and LightlySSL report their
accuracies, so that a run can be compared with their published numbers like with like.

The probe never changes the training of the backbone:

* it reads the backbone under `torch.no_grad` in the mode the method's step reads it (batch
  statistics, as solo-learn's probe sees the features of the training forward pass), puts
  back every buffer that forward changes (batch norm's running statistics) and draws any
  random number it needs (dropout) from a copy of the generators;
* its weights are drawn from a generator of its own, seeded from the run's seed, and nothing
  else it does draws random numbers, so the global random streams the training uses are
  untouched;
* it has its own optimizer.

Its defaults are solo-learn's online classifier's: learning rate 0.1, no weight decay, SGD
with momentum 0.9, a linear warm-up over 10 epochs from 3e-5 then a cosine to 0, stepped
every optimizer step (`warmup_cosine_lr`). It sees the first view of the method's first view
group (the un-augmented labels of the batch), which every method has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from backbones import Backbone
from backbones.features import extract_features
from datasets import ImageSet
from engine.plan import PROBE_KEY
from evaluation.linear import score_logits
from methods.optimizers import warmup_cosine_lr
from utils.checkpoint_fields import check_module_entry, check_optimizer_state, field_error
from utils.seeds import SeedPurpose, derived_seed


@dataclass(frozen=True)
class ProbeSettings:
    lr: float = 0.1
    weight_decay: float = 0.0
    momentum: float = 0.9
    warmup_epochs: int = 10


class OnlineProbe:
    """A linear classifier of `num_classes` classes on `feature_size` features, trained step
    by step (`train_step`) and scored on `evaluation` (`scores`), whose columns are
    `<split>_probe_accuracy` and `<split>_probe_top5` (`split`: `val` or `test`)."""

    def __init__(
        self,
        feature_size: int,
        num_classes: int,
        settings: ProbeSettings,
        seed: int,
        evaluation: ImageSet,
        split: str,
        device: torch.device,
    ):
        self.settings = settings
        self.device = device
        self.evaluation = evaluation
        self.evaluation_labels = evaluation.labels.to(device)
        self.columns = (f"{split}_probe_accuracy", f"{split}_probe_top5")
        # Built without initialising (nn.Linear's own initialisation draws from the global
        # generator), then drawn from the probe's own generator as nn.Linear draws them.
        self.classifier = nn.utils.skip_init(nn.Linear, feature_size, num_classes)
        generator = torch.Generator().manual_seed(derived_seed(seed, 0, SeedPurpose.ONLINE_PROBE))
        bound = 1 / math.sqrt(feature_size)
        with torch.no_grad():
            self.classifier.weight.uniform_(-bound, bound, generator=generator)
            self.classifier.bias.uniform_(-bound, bound, generator=generator)
        self.classifier.to(device)
        self.optimizer = torch.optim.SGD(
            self.classifier.parameters(),
            lr=settings.lr,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
        )

    def train_step(
        self,
        backbone: Backbone,
        images: torch.Tensor,
        labels: torch.Tensor,
        step: int,
        total_steps: int,
        epoch_steps: int,
    ) -> None:
        """One step of the probe on the backbone's features of the normalised views `images`
        (B, C, H, W) with their `labels` (-1 where unlabelled: left out); `step` is the run's
        0-based optimizer step, of `total_steps` in all and `epoch_steps` an epoch."""
        labelled = labels >= 0
        features = self.features(backbone, images)
        lr = warmup_cosine_lr(step, total_steps, self.settings.warmup_epochs * epoch_steps, self.settings.lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.classifier.train()
        with torch.autocast(features.device.type, enabled=False):
            # A batch without labels gives a zero loss (and the momentum steps on, as it would).
            logits = self.classifier(features)
            loss = F.cross_entropy(logits, labels.clamp(min=0), reduction="none").mul(labelled).sum()
            loss = loss / labelled.sum().clamp(min=1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    @staticmethod
    @torch.no_grad()
    def features(backbone: Backbone, images: torch.Tensor) -> torch.Tensor:
        """The backbone's features of `images` in its training mode, as the method's step sees
        them (batch statistics), with every buffer it changes (batch norm's running statistics)
        put back and any random number it draws (dropout) drawn from a copy of the generators."""
        buffers = [buffer.clone() for buffer in backbone.buffers()]
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=images.device.type):
            features = backbone(images).float()
        for buffer, saved in zip(backbone.buffers(), buffers, strict=True):
            buffer.copy_(saved)
        return features

    @torch.no_grad()
    def scores(self, backbone: Backbone) -> dict:
        """Top-1 and top-5 accuracy (%) of the probe on the evaluation images (un-augmented,
        eval mode, as stage 2 reads them)."""
        features = extract_features(backbone, self.evaluation, self.device, desc="Probe features")
        self.classifier.eval()
        result = score_logits(self.classifier(features), self.evaluation_labels)
        return dict(zip(self.columns, (result["accuracy"], result["top5"])))

    def state_dict(self) -> dict:
        return {"classifier": self.classifier.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: object, path: str | Path | None) -> None:
        """Load a saved probe, refused in one line naming `path` unless it is this probe's
        (same shapes, an SGD state of its parameters)."""
        if not isinstance(state, dict) or not {"classifier", "optimizer"} <= set(state):
            raise field_error(path, PROBE_KEY, "is not the state of an online probe")
        check_module_entry(state["classifier"], self.classifier, path, f"{PROBE_KEY}.classifier")
        check_optimizer_state(state["optimizer"], self.optimizer, path, f"{PROBE_KEY}.optimizer")
        self.classifier.load_state_dict(state["classifier"])
        self.optimizer.load_state_dict(state["optimizer"])
