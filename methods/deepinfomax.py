"""Deep InfoMax (Hjelm et al. 2019) with local and prior terms, the paper's DIM baseline.

The backbone's features y are scored against its first-layer feature map M: a local
discriminator tells y paired with its own image's M from y paired with another image's M
(the JSD estimate of mutual information), and a prior discriminator tells prior samples
u ~ U[0, 1) from encoder outputs. Total loss = alpha global + beta local + gamma prior.

The original trains the prior discriminator jointly with the encoder, so the encoder
minimises the discriminator's loss too (D13 in docs/original-code.md). `--dim_prior adversarial` (default)
plays the paper's minimax game instead; `--dim_prior original` keeps the original objective.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from backbones import Backbone
from datasets.augment import CropFlipViews
from methods.base import Method, StepOutput, ViewGroup
from methods.config import ConfigError, MethodConfig, option
from methods.heads import backbone_and_head_adam
from methods.losses import jsd_discriminator_loss
from utils.errors import UserError
from utils.tensors import tensor_sum

PriorMode = Literal["adversarial", "original"]


class _ReverseGradient(torch.autograd.Function):
    """Identity forward, negated gradient backward (Ganin and Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return -grad


def reverse_gradient(x: torch.Tensor) -> torch.Tensor:
    return _ReverseGradient.apply(x)


def negatives(M: torch.Tensor) -> torch.Tensor:
    """M of the next image for each image (the first for the last), as the original pairs them."""
    return M.roll(-1, dims=0)


def first_layer_channels(backbone: Backbone) -> int:
    """Channels of M: every backbone's `first_layer_features` is its first conv + BN + ReLU."""
    return next(m for m in backbone.modules() if isinstance(m, nn.Conv2d)).out_channels


def bias_of(layer: nn.Conv2d) -> torch.Tensor:
    """The bias of a convolution built with one (torch types a layer's bias as optional)."""
    if layer.bias is None:
        raise ValueError(f"{layer} has no bias")
    return layer.bias


class GlobalDiscriminator(nn.Module):
    """Scores (y, whole M): two 3x3 convs on M, pooled to 16x16, then an MLP on [y, M]."""

    def __init__(self, y_size: int, m_channels: int):
        super().__init__()
        self.c0 = nn.Conv2d(m_channels, 64, kernel_size=3)
        self.c1 = nn.Conv2d(64, 32, kernel_size=3)
        self.avgpool = nn.AdaptiveAvgPool2d(16)
        self.l0 = nn.Linear(32 * 16 * 16 + y_size, 256)
        self.l1 = nn.Linear(256, 256)
        self.l2 = nn.Linear(256, 1)

    def forward(self, y: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
        h = self.avgpool(self.c1(F.relu(self.c0(M)))).flatten(1)
        h = F.relu(self.l0(torch.cat([y, h], dim=1)))
        return self.l2(F.relu(self.l1(h)))


class LocalDiscriminator(nn.Module):
    """Scores y against every position of M: 1x1 convs on [M, y broadcast over H x W].

    The first conv is linear in each part of [M; y]: W [M; y] + b = W_M M + (W_y y + b), and
    y's part is the same at every position, so it is computed once per image and added
    (relationnet's head does the same for pairs) instead of at all H x W positions. A 1x1
    conv is a matrix product over the channels of each position: the convs run as such on
    the N*H*W positions' rows, without the concatenated input map. The parameters are the
    original's convs (same state-dict keys); the scores equal theirs up to float rounding.
    """

    def __init__(self, y_size: int, m_channels: int):
        super().__init__()
        self.c0 = nn.Conv2d(y_size + m_channels, 256, kernel_size=1)
        self.c1 = nn.Conv2d(256, 256, kernel_size=1)
        self.c2 = nn.Conv2d(256, 1, kernel_size=1)

    def forward(self, y: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
        """Scores (N, 1, H, W) of each y with every position of its M."""
        images, channels, height, width = M.shape
        first = self.c0.weight.flatten(1)
        of_y = torch.addmm(bias_of(self.c0), y, first[:, channels:].t())
        positions = M.permute(0, 2, 3, 1).reshape(-1, channels)
        of_map = (positions @ first[:, :channels].t()).view(images, height * width, -1)
        hidden = (of_map + of_y[:, None]).view(images * height * width, -1).relu_()
        hidden = torch.addmm(bias_of(self.c1), hidden, self.c1.weight.flatten(1).t()).relu_()
        return torch.addmm(bias_of(self.c2), hidden, self.c2.weight.flatten(1).t()).view(images, 1, height, width)


class PriorDiscriminator(nn.Module):
    """MLP logit of "drawn from the prior"; the original's final sigmoid lives in the loss."""

    def __init__(self, y_size: int):
        super().__init__()
        self.l0 = nn.Linear(y_size, 512)
        self.l1 = nn.Linear(512, 128)
        self.l2 = nn.Linear(128, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(F.relu(self.l1(F.relu(self.l0(x)))))


class DIMDiscriminators(nn.Module):
    """The original `loss_fn` module: each discriminator exists only when its weight is not 0,
    so the state dict (global_d.*, local_d.*, prior_d.*) equals the original's."""

    def __init__(
        self,
        y_size: int,
        m_channels: int,
        alpha: float,
        beta: float,
        gamma: float,
        prior_mode: PriorMode = "adversarial",
    ):
        super().__init__()
        self.weights = {"global": alpha, "local": beta, "prior": gamma}
        self.prior_mode = prior_mode
        if alpha:
            self.global_d = GlobalDiscriminator(y_size, m_channels)
        if beta:
            self.local_d = LocalDiscriminator(y_size, m_channels)
        if gamma:
            self.prior_d = PriorDiscriminator(y_size)

    def forward(
        self, y: torch.Tensor, M: torch.Tensor, M_prime: torch.Tensor, u: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The unweighted terms with a non-zero weight; M_prime pairs each y with another
        image's map and u is a prior sample shaped like y."""
        terms = {}
        if self.weights["global"]:
            terms["global"] = jsd_discriminator_loss(self.global_d(y, M), self.global_d(y, M_prime))
        if self.weights["local"]:
            terms["local"] = jsd_discriminator_loss(self.local_d(y, M), self.local_d(y, M_prime))
        if self.weights["prior"]:
            if self.prior_mode == "adversarial":
                # The engine does one backward and one optimizer step per batch. Reversing the
                # gradient at y makes that one backward give prior_d the gradient of its loss
                # and the encoder the negated gradient: the paper's minimax game (the encoder
                # maximises D's loss) in a single step. The sigmoid squashes y into the
                # prior's support [0, 1], as the paper does; with unbounded y, D could tell
                # them apart by range alone instead of by the shape of the distribution.
                y = torch.sigmoid(reverse_gradient(y))
            terms["prior"] = jsd_discriminator_loss(self.prior_d(u), self.prior_d(y))
        return terms

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return tensor_sum(self.weights[name] * term for name, term in terms.items())


class DeepInfoMax(Method):
    name = "deepinfomax"
    default_lr = 1e-4  # the original: higher rates gave NaN losses
    drop_last = True  # the negatives need other images in the batch
    min_batch_size = 2
    checkpoint_keys = {"backbone": "backbone", "loss_fn": "discriminators", "optimizer": "optimizer"}
    # One view per image and step: its batch statistics are that view's, as in the original's
    # single forward, so per view and pooled coincide (its negatives are rolled features, no second forward).
    per_view_batch_norm = True
    normalises_inputs = True  # the original's Normalize with the data set's mean and std
    optional_keys = frozenset()

    @dataclass(frozen=True)
    class Config(MethodConfig):
        flag_prefix = "dim_"
        alpha: float = option(0.0, "weight of the global term", at_least=0)
        beta: float = option(1.0, "weight of the local term", at_least=0)
        gamma: float = option(0.1, "weight of the prior term", at_least=0)
        prior: PriorMode = option(
            "adversarial",
            "'adversarial' (the encoder learns to fool the prior discriminator, as in the DIM paper) "
            "or 'original' (the encoder minimises the discriminator's loss, as the original code)",
        )

        def __post_init__(self) -> None:
            super().__post_init__()
            if not (self.alpha or self.beta or self.gamma):
                raise ConfigError(("alpha", "beta", "gamma"), "all zero, deepinfomax has nothing to train")

    config: Config

    def __init__(self, backbone: Backbone, num_classes: int, config: Config | None = None, *, lr: float | None = None):
        super().__init__(backbone, num_classes, config, lr=lr)
        self.discriminators = DIMDiscriminators(
            backbone.feature_size,
            first_layer_channels(backbone),
            self.config.alpha,
            self.config.beta,
            self.config.gamma,
            self.config.prior,
        )
        # Two groups, as the original, so its optimizer state loads.
        self.optimizer = backbone_and_head_adam(self.backbone, self.discriminators, self.lr)

    @property
    def view_groups(self) -> list[ViewGroup]:
        return [ViewGroup(1, CropFlipViews(padded=False))]

    def training_step(self, views: list[torch.Tensor], labels: torch.Tensor, index: torch.Tensor) -> StepOutput:
        y, M = self.backbone.forward_with_first_layer(views[0])
        terms = self.discriminators(y, M, negatives(M), torch.rand_like(y))
        images = torch.full((), float(y.shape[0]), device=y.device)
        return StepOutput(
            loss=self.discriminators.total(terms),
            loss_weight=y.shape[0],
            metrics={name: (term.detach() * images, images) for name, term in terms.items()},
        )

    def check_checkpoint_state(self, state: dict, path: str | Path | None = None) -> None:
        saved = sorted({key.split(".")[0] for key in state.get("loss_fn", {})})
        built = sorted(name for name, _ in self.discriminators.named_children())
        if "loss_fn" in state and saved != built:
            raise UserError(
                f"--dim_alpha/--dim_beta/--dim_gamma: the checkpoint holds {', '.join(saved)}, "
                f"this run builds {', '.join(built)} (global_d needs a non-zero alpha, "
                "local_d beta, prior_d gamma)"
            )
        super().check_checkpoint_state(state, path)
