"""The one training loop that drives every method (see `methods/base.py` for the contract).

It owns the seeded data order, augmentation of uint8 batches on the training device, the
optimizer step, the per-epoch CSV log, checkpoints and exact resume at epoch boundaries.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from datasets import ImageSet
from methods.base import Method
from utils.augment import build_augmentation
from utils.checkpoint import FORMAT_VERSION, CsvLog, save_checkpoint
from utils.runtime import UserError, derived_seed, restore_rng_states, rng_states

_ORDER, _AUGMENT = 1, 2


def format_duration(seconds: float) -> str:
    """H:MM:SS that keeps counting past 24 hours."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@dataclass
class TrainingPlan:
    epochs: int                      # total epochs of the run
    batch_size: int                  # images per step (each gives `views_per_image` views)
    seed: int
    log_path: Path
    # Paths to save after a (1-based) epoch count; empty when that epoch is not saved.
    checkpoint_paths: Callable[[int], list[Path]]
    extra_state: dict                # stored in every checkpoint (args, names, versions)
    drop_last: bool = False
    rolling_checkpoint: Path | None = None  # rewritten silently after every epoch


class Engine:
    def __init__(self, method: Method, data: ImageSet, plan: TrainingPlan, device: torch.device):
        self.method = method.to(device)
        self.plan = plan
        self.device = device
        self.data = data
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.augment = build_augmentation(method.augmentation, data.mean, data.std, data.padding)
        self.generator = torch.Generator(device=device)
        self.log_columns = None

    def steps_per_epoch(self, images: int) -> int:
        count = images / self.plan.batch_size
        return math.floor(count) if self.plan.drop_last else math.ceil(count)

    def fit(self, start_epoch: int = 0, resume_state: dict | None = None) -> dict:
        """Train epochs `start_epoch .. epochs-1`; returns the last epoch's log row."""
        if resume_state is not None:
            restore_rng_states(resume_state["rng"])
        log = None
        row: dict = {}
        for epoch in range(start_epoch, self.plan.epochs):
            row = self.run_epoch(epoch)
            if log is None:
                log = CsvLog(self.plan.log_path, list(row), keep_epochs_below=start_epoch)
            state = self.checkpoint(epoch + 1)
            if self.plan.rolling_checkpoint:
                save_checkpoint(state, self.plan.rolling_checkpoint)
            for path in self.plan.checkpoint_paths(epoch + 1):
                save_checkpoint(state, path)
                print(f"[INFO] Saving in: {path}")
            log.append(row)  # after the checkpoint: a crash in between never duplicates rows
        return row

    def checkpoint(self, epochs_done: int) -> dict:
        return {**self.method.checkpoint_state(), **self.plan.extra_state,
                "epoch": epochs_done, "rng": rng_states(), "format_version": FORMAT_VERSION}

    def run_epoch(self, epoch: int) -> dict:
        method, plan = self.method, self.plan
        method.train()
        start = time.time()
        method.on_epoch_start(epoch, plan.epochs, self)
        order_generator = torch.Generator().manual_seed(derived_seed(plan.seed, epoch, _ORDER))
        order = method.epoch_order(epoch, order_generator)
        if order is None:
            order = torch.randperm(len(self.images), generator=order_generator)
        order = order.to(self.device)
        self.generator.manual_seed(derived_seed(plan.seed, epoch, _AUGMENT))
        views = method.views_per_image
        loss_sum = torch.zeros((), device=self.device)
        loss_weight = 0
        # Step of the first non-finite loss, tracked on the device to avoid a sync per step.
        first_bad_step = torch.full((), -1, device=self.device)
        sums: dict[str, list[torch.Tensor]] = {}
        steps = self.steps_per_epoch(len(order))
        bar = tqdm(range(steps), desc=f"Epoch {epoch}", leave=False, disable=None, dynamic_ncols=True)
        for step in bar:
            index = order[step * plan.batch_size:(step + 1) * plan.batch_size]
            images = self.images.index_select(0, index)
            if views > 1:
                images = images.repeat(views, 1, 1, 1)  # view-major: rows v*B .. v*B+B-1
            inputs = self.augment(images, self.generator)
            out = method.training_step(inputs, self.labels.index_select(0, index), index)
            method.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            method.optimizer.step()
            loss = out.loss.detach()
            first_bad_step = torch.where((first_bad_step < 0) & ~torch.isfinite(loss), step, first_bad_step)
            loss_sum += loss * out.loss_weight
            loss_weight += out.loss_weight
            for name, (total, count) in out.metrics.items():
                acc = sums.setdefault(name, [torch.zeros((), device=self.device)] * 2)
                sums[name] = [acc[0] + total.detach(), acc[1] + count]
            if step % 20 == 0 and bar.disable is False:
                bar.set_postfix(loss=f"{out.loss.item():.4f}")
        bar.close()
        if loss_weight == 0:
            raise RuntimeError("the epoch had no steps: the training set is smaller than one batch")
        bad_step = int(first_bad_step)
        if bad_step >= 0:
            raise UserError(f"the loss became non-finite at epoch {epoch}, step {bad_step}; nothing of "
                            "this epoch was saved (the previous checkpoints are intact): lower --lr "
                            "or check the data")
        loss = (loss_sum / loss_weight).item()
        metrics = {name: (total / count.clamp(min=1)).item() for name, (total, count) in sums.items()}
        seconds = time.time() - start
        print(f"Epoch [{epoch}][{format_duration(seconds)}] loss: {loss:.6f}"
              + "".join(f"; {name}: {value:.2f}" for name, value in metrics.items()))
        return {"epoch": epoch, "loss": loss, "score": method.score(metrics, loss), **metrics,
                "lr": method.optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3)}
