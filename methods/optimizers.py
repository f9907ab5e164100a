"""The optimizer and learning-rate schedule of the two-view baselines (byol, simsiam,
barlowtwins, vicreg) as solo-learn trains them on CIFAR: LARS (You et al. 2017) and a
per-step linear warm-up followed by a cosine decay."""

from __future__ import annotations

import math

import torch


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose step of each weight matrix or kernel is scaled by its trust
    ratio eta |w| / (|g| + weight_decay |w| + eps), clipped so that the scaled learning rate
    never exceeds the base one; biases and normalisation parameters (1-D) take plain SGD
    steps without weight decay. This is solo-learn's LARS (from Lightning Bolts) with
    `clip_lr` and `exclude_bias_n_norm`, written without reading the norms back to the host
    (a weight or gradient of norm 0 keeps its plain gradient, as there)."""

    def __init__(
        self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.02, eps: float = 1e-8
    ):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    weight_norm, grad_norm = p.norm(), update.norm()
                    trust = (
                        group["eta"] * weight_norm / (grad_norm + group["weight_decay"] * weight_norm + group["eps"])
                    )
                    trust = torch.clamp(trust / group["lr"], max=1.0)
                    scaled = update.add(p, alpha=group["weight_decay"]).mul_(trust)
                    update = torch.where((weight_norm > 0) & (grad_norm > 0), scaled, update)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = update.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def warmup_cosine_lr(
    step: int, total_steps: int, warmup_steps: int, base_lr: float, start_lr: float = 3e-5, min_lr: float = 0.0
) -> float:
    """The learning rate of 0-based step `step`: linear from `start_lr` to `base_lr` over
    `warmup_steps`, then a cosine from `base_lr` to `min_lr` at `total_steps` (solo-learn's
    LinearWarmupCosineAnnealingLR stepped every optimizer step, its defaults 3e-5 and 0)."""
    if step < warmup_steps:
        return start_lr + step * (base_lr - start_lr) / max(1, warmup_steps - 1)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))
