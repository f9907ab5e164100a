"""DINO (Caron et al. 2021) with solo-learn's CIFAR configuration (scripts/pretrain/cifar/dino.yaml).

The student (backbone, projector F -> 2048 -> 2048 -> 256 with GELU and no batch norm, then
the L2-normalised output scored against 4,096 prototypes) and the teacher, a momentum copy
of it, see every view on its own. The teacher's scores of the two global views, centred
(minus the centre) and sharpened by the teacher temperature, are softmax targets for the
student's scores of every other view at the student temperature (0.1); the loss is the mean
cross-entropy over those (teacher view, other student view) pairs.

- The prototypes are solo-learn's last layer: a weight-normalised Linear without bias whose
  gain is fixed at 1, so the scores are cosines; they get a zero gradient during the first
  `freeze_prototypes_epochs` (1) epochs.
- The centre is a running mean of the teacher's scores (momentum `center_momentum`, 0.9),
  updated after each step's loss, which keeps the teacher from putting every image on one
  prototype.
- The teacher temperature goes linearly from `warmup_teacher_temperature` (0.04) to
  `teacher_temperature` (0.07) over the first `warmup_teacher_temperature_epochs`, one value
  per epoch as solo-learn's schedule; solo-learn's default is 0 such epochs (0.07 throughout).
- After every step the teacher moves towards the student with momentum tau, which follows a
  cosine from `momentum` (0.9995) to 1 over the run, as BYOL's target.
- Multi-crop (`local_views`, off by default as in solo-learn's CIFAR settings): only the
  student sees the local views. solo-learn splits the student's scores into as many chunks
  as there are global views, so its local views do not pair as the paper's; here every view
  is a chunk of its own.

Views: solo-learn's asymmetric CIFAR augmentation (colour jitter 0.4, 0.4, 0.2, 0.1 with p 0.8,
grey 0.2, no blur; solarize 0.2 in the second view); local views crop 0.05 to 0.4 of the image
(the DINO paper's). LARS, learning rate 0.3, weight decay 1e-6, batch 256, 10 warm-up epochs
then a cosine. Stage 2 and test.py evaluate the student's backbone, as solo-learn does.
The centre, the momentum and the step count are in the checkpoint, so a run resumes exactly
inside an epoch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from backbones import Backbone
from datasets.augment import CropColorViews
from methods.base import MAX_LAYER_WIDTH, EpochContext, StepOutput
from methods.config import option, with_default
from methods.losses import in_float32
from methods.momentum import cosine_momentum, momentum_update
from methods.multicrop import MultiCropMethod, zero_gradient
from methods.siamese import BYOL_JITTER
from utils.checkpoint_fields import check_tensor

ASYMMETRIC_VIEWS = (CropColorViews(jitter=BYOL_JITTER), CropColorViews(jitter=BYOL_JITTER, solarize_p=0.2))
# The centre is a mean of cosines; the margin is rounding in half precision.
COSINE_RANGE = (-1.01, 1.01)


def teacher_temperature(epoch: int, warmup_epochs: int, warmup_temperature: float, temperature: float) -> float:
    """The teacher temperature of 0-based `epoch`: `warmup_epochs` values evenly spaced from
    `warmup_temperature` to `temperature` (both included), then `temperature` (solo-learn's
    schedule, numpy's linspace)."""
    if epoch >= warmup_epochs:
        return temperature
    if warmup_epochs == 1:  # linspace of one value: its start
        return warmup_temperature
    if epoch == warmup_epochs - 1:
        return temperature
    return warmup_temperature + epoch * ((temperature - warmup_temperature) / (warmup_epochs - 1))


@in_float32
def dino_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    center: torch.Tensor,
    student_temperature: float,
    teacher_temperature: float,
) -> torch.Tensor:
    """The mean over every pair of a teacher view t and another student view s of the
    cross-entropy between softmax((teacher_t - center) / teacher_temperature), detached, and
    softmax(student_s / student_temperature). `student` (V, B, P) and `teacher` (G, B, P)
    are scores per view; teacher view t is student view t."""
    targets = F.softmax((teacher - center) / teacher_temperature, dim=-1).detach()
    log_predictions = F.log_softmax(student / student_temperature, dim=-1)
    losses = [
        -(target * log_predictions[s]).sum(dim=-1).mean()
        for t, target in enumerate(targets)
        for s in range(len(student))
        if s != t
    ]
    return torch.stack(losses).mean()


@torch.no_grad()
def updated_center(center: torch.Tensor, teacher: torch.Tensor, momentum: float) -> torch.Tensor:
    """The centre moved towards the mean of the teacher's scores `teacher` (rows: every view of
    every image) with `momentum`."""
    return center * momentum + teacher.float().sum(dim=0, keepdim=True) / len(teacher) * (1 - momentum)


class CosinePrototypes(nn.Linear):
    """DINO's last layer: the L2-normalised input scored against L2-normalised prototypes (a
    weight-normalised Linear without bias, its gain fixed at 1). `trains` False passes a zero
    gradient to the prototypes."""

    def __init__(self, inputs: int, prototypes: int):
        super().__init__(inputs, prototypes, bias=False)
        self.trains = True

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight = F.normalize(self.weight, dim=1)
        return F.linear(F.normalize(input, dim=-1), weight if self.trains else zero_gradient(weight))


def dino_projector(features: int, hidden: int, bottleneck: int) -> nn.Sequential:
    """Linear - GELU - Linear - GELU - Linear to the bottleneck, weights drawn from a normal of
    standard deviation 0.02 truncated at +-2, biases 0 (solo-learn's DINOHead without batch norm)."""
    layers = nn.Sequential(
        nn.Linear(features, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, bottleneck)
    )
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)
    return layers


class DINO(MultiCropMethod):
    name = "dino"
    default_lr = 0.3
    global_views = ASYMMETRIC_VIEWS
    local_crop_scale = (0.05, 0.4)
    checkpoint_keys = {
        **MultiCropMethod.checkpoint_keys,
        "prototypes": "prototypes",
        "teacher": "teacher",
        "center": "center",
        "momentum": "momentum",
    }

    @dataclass(frozen=True)
    class Config(MultiCropMethod.Config):
        flag_prefix = "dino_"
        projection: int = with_default(MultiCropMethod.Config, "projection", 256)
        weight_decay: float = with_default(MultiCropMethod.Config, "weight_decay", 1e-6)
        prototypes: int = option(4096, "number of prototypes", at_least=1, at_most=MAX_LAYER_WIDTH)
        student_temperature: float = option(0.1, "temperature of the student's softmax", above=0)
        teacher_temperature: float = option(0.07, "temperature of the teacher's softmax after its warm-up", above=0)
        warmup_teacher_temperature: float = option(0.04, "teacher temperature of the first epoch", above=0)
        warmup_teacher_temperature_epochs: int = option(
            0, "epochs over which the teacher temperature goes linearly to its final value", at_least=0
        )
        center_momentum: float = option(
            0.9, "momentum of the running mean of the teacher's scores (the centre)", at_least=0, at_most=1
        )
        momentum: float = option(
            0.9995, "momentum of the teacher at the start of its cosine schedule to 1", at_least=0, at_most=1
        )
        freeze_prototypes_epochs: int = option(1, "epochs during which the prototypes are not trained", at_least=0)

    config: Config

    def __init__(self, backbone: Backbone, num_classes: int, config: Config | None = None, *, lr: float | None = None):
        super().__init__(backbone, num_classes, config, lr=lr)
        config = self.config
        self.projector = dino_projector(backbone.feature_size, config.hidden, config.projection)
        self.prototypes = CosinePrototypes(config.projection, config.prototypes)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, config.prototypes))
        self.center: torch.Tensor
        self.initial_momentum = config.momentum
        self.momentum = config.momentum  # of the next teacher update; in the checkpoint
        self.teacher_temperature = teacher_temperature(
            0, config.warmup_teacher_temperature_epochs, config.warmup_teacher_temperature, config.teacher_temperature
        )
        self.set_optimizer([{"params": [*self.student.parameters()]}])

    @property
    def student(self) -> nn.Sequential:
        """Backbone, projector and prototypes: the network the teacher follows."""
        return nn.Sequential(self.get_submodule("backbone"), self.projector, self.prototypes)

    def checkpoint_ranges(self) -> dict[str, tuple[float, float]]:
        return {**super().checkpoint_ranges(), "momentum": (0, 1), "center": COSINE_RANGE}

    def check_checkpoint_state(self, state: dict, path: str | Path | None = None) -> None:
        super().check_checkpoint_state(state, path)
        check_tensor(state["center"], self.center, path, "center")  # its shape too: one value per prototype

    def on_epoch_start(self, context: EpochContext) -> None:
        super().on_epoch_start(context)
        config = self.config
        self.teacher_temperature = teacher_temperature(
            context.epoch,
            config.warmup_teacher_temperature_epochs,
            config.warmup_teacher_temperature,
            config.teacher_temperature,
        )
        self.prototypes.trains = context.epoch >= config.freeze_prototypes_epochs

    def training_step(self, views: list[torch.Tensor], labels: torch.Tensor, index: torch.Tensor) -> StepOutput:
        each_view = self.each_view(views)
        student = torch.stack([self.student(view) for view in each_view])
        with torch.no_grad():
            teacher = torch.stack([self.teacher(view) for view in each_view[:2]])
        loss = dino_loss(student, teacher, self.center, self.config.student_temperature, self.teacher_temperature)
        self.center.copy_(updated_center(self.center, teacher.flatten(0, 1), self.config.center_momentum))
        images = len(views[0])
        numbers = {
            "teacher_temperature": torch.full((), self.teacher_temperature, device=loss.device),
            "momentum": torch.full((), self.momentum, device=loss.device),
        }
        return StepOutput(loss=loss, loss_weight=images, metrics=self.batch_metrics(student[0], student[1], **numbers))

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Move the teacher with the current momentum, then advance the momentum on its schedule
        (solo-learn's order)."""
        super().after_step(step)
        momentum_update(self.teacher, self.student, self.momentum)
        self.momentum = cosine_momentum(min(step, self.total_steps), self.total_steps, self.initial_momentum)
