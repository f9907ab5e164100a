"""The one training loop that drives every method (see `methods/base.py` for the contract).

It owns the seeded data order, augmentation of uint8 batches on the training device, the
optimizer step, the per-epoch CSV log, checkpoints, a memory check before the first step,
stopping on SIGINT/SIGTERM, and exact resume (at an epoch boundary or inside an epoch that a
signal interrupted).
"""
from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass, field
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
# The smallest backbone keeps several times its input in activations and gradients; a lower
# bound, so the check only refuses steps that surely cannot run.
_ACTIVATION_FACTOR = 4


def available_memory(device: torch.device) -> int | None:
    """Free bytes on the device: CUDA's free memory, or MemAvailable of Linux."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


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
        self.augment = build_augmentation(method.augmentation, data.mean, data.std, data.padding,
                                          cutout=data.cutout)
        self.generator = torch.Generator(device=device)
        self.stop = StopSignals()
        self.check_step_memory()
        self.log_columns = None

    def check_step_memory(self) -> None:
        """Refuse a step that cannot fit before trying it: the augmented float views of one
        step alone (K views x batch for relationnet) must leave room for the activations."""
        batch = min(self.plan.batch_size, len(self.images))
        views = self.method.views_per_image * batch
        needed = views * self.images[0].numel() * 4 * _ACTIVATION_FACTOR + self.method.head_step_bytes(batch)
        available = available_memory(self.device)
        if available is not None and needed > available:
            raise UserError(f"one step holds {views} augmented images (views per image x --data_size), "
                            f"about {needed / 2**30:.1f} GiB with activations, but only "
                            f"{available / 2**30:.1f} GiB are free on {self.device}: lower --K or --data_size")

    def steps_per_epoch(self, images: int) -> int:
        count = images / self.plan.batch_size
        return math.floor(count) if self.plan.drop_last else math.ceil(count)

    def fit(self, start_epoch: int = 0, resume_state: dict | None = None) -> dict:
        """Train epochs `start_epoch .. epochs-1`; returns the last epoch's log row.

        SIGINT or SIGTERM ends the run after the current step with a resumable checkpoint
        (`RunInterrupted`); resuming from it continues inside the interrupted epoch.
        """
        partial = None
        if resume_state is not None:
            restore_rng_states(resume_state["rng"])
            partial = resume_state.get("interrupted")
        log = None
        row: dict = {}
        with StopSignals() as stop:
            self.stop = stop
            for epoch in range(start_epoch, self.plan.epochs):
                row = self.run_epoch(epoch, partial)
                partial = None
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

    def checkpoint(self, epochs_done: int, interrupted: dict | None = None) -> dict:
        state = {**self.method.checkpoint_state(), **self.plan.extra_state,
                 "epoch": epochs_done, "rng": rng_states(), "format_version": FORMAT_VERSION}
        if interrupted is not None:
            state["interrupted"] = interrupted
        return state

    def interrupt(self, epoch: int, progress: "EpochProgress") -> None:
        """Save the state after the current step and stop with a message saying how to resume."""
        name = signal.Signals(self.stop.received).name
        path = self.plan.rolling_checkpoint
        if path is None:
            raise RunInterrupted(self.stop.received, f"{name} received at epoch {epoch}: stopped (this "
                                 "stage cannot be resumed; run it again)")
        save_checkpoint(self.checkpoint(epoch, progress.state(self.generator)), path)
        raise RunInterrupted(self.stop.received, f"{name} received: stopped after step {progress.steps_done} "
                             f"of epoch {epoch} and saved {path}; resume with the same command plus "
                             "--resume auto")

    def run_epoch(self, epoch: int, partial: dict | None = None) -> dict:
        """One epoch; `partial` is the state of an interrupted epoch to continue."""
        method, plan = self.method, self.plan
        method.train()
        start = time.time()
        if partial is None:
            method.on_epoch_start(epoch, plan.epochs, self)
        else:
            method.on_epoch_resume(epoch, plan.epochs, self)
        order_generator = torch.Generator().manual_seed(derived_seed(plan.seed, epoch, _ORDER))
        order = method.epoch_order(epoch, order_generator)
        if order is None:
            order = torch.randperm(len(self.images), generator=order_generator)
        order = order.to(self.device)
        progress = EpochProgress.start(self.device, partial)
        if partial is None:
            self.generator.manual_seed(derived_seed(plan.seed, epoch, _AUGMENT))
        else:
            self.generator.set_state(partial["generator"])
        views = method.views_per_image
        steps = self.steps_per_epoch(len(order))
        if steps == 0:
            raise UserError(f"--data_size {plan.batch_size} is larger than the {len(order)} training "
                            f"images and {method.name} drops the last incomplete batch: lower --data_size")
        bar = tqdm(range(progress.steps_done, steps), desc=f"Epoch {epoch}", leave=False, disable=None,
                   dynamic_ncols=True, initial=progress.steps_done, total=steps)
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
            progress.add(step, out)
            if step % 20 == 0 and bar.disable is False:
                bar.set_postfix(loss=f"{out.loss.item():.4f}")
            if self.stop.received:
                bar.close()
                self.interrupt(epoch, progress)
        bar.close()
        bad_step = int(progress.first_bad_step)
        if bad_step >= 0:
            raise UserError(f"the loss became non-finite at epoch {epoch}, step {bad_step}; nothing of "
                            "this epoch was saved (the previous checkpoints are intact): lower --lr "
                            "or check the data")
        loss = (progress.loss_sum / progress.loss_weight).item()
        metrics = {name: (total / count.clamp(min=1)).item() for name, (total, count) in progress.sums.items()}
        seconds = time.time() - start + progress.seconds_before
        print(f"Epoch [{epoch}][{format_duration(seconds)}] loss: {loss:.6f}"
              + "".join(f"; {name}: {value:.2f}" for name, value in metrics.items()))
        return {"epoch": epoch, "loss": loss, "score": method.score(metrics, loss), **metrics,
                "lr": method.optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3)}


class RunInterrupted(UserError):
    """Training stopped on a signal after saving a resumable checkpoint."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_status = 128 + signum  # the shell's convention for a death by signal


class StopSignals:
    """Within the block, SIGINT and SIGTERM only set `received`; the loop stops at a step end."""

    def __init__(self):
        self.received = 0
        self.previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def handle(self, signum, frame) -> None:
        if self.received:  # a second signal: the user insists, stop at once
            raise KeyboardInterrupt
        self.received = signum
        print(f"\n[INFO] {signal.Signals(signum).name} received: stopping after the current step "
              "(send it again to stop at once, without saving)", flush=True)

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


@dataclass
class EpochProgress:
    """Running sums of an epoch, kept on the device (no host sync per step)."""

    loss_sum: torch.Tensor
    first_bad_step: torch.Tensor  # step of the first non-finite loss, -1 while there is none
    loss_weight: int = 0
    steps_done: int = 0
    seconds_before: float = 0.0   # time spent before an interruption
    sums: dict = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    @classmethod
    def start(cls, device: torch.device, partial: dict | None) -> "EpochProgress":
        if partial is None:
            return cls(torch.zeros((), device=device), torch.full((), -1, device=device))
        return cls(partial["loss_sum"].to(device), partial["first_bad_step"].to(device),
                   partial["loss_weight"], partial["steps_done"], partial["seconds"],
                   {name: [total.to(device), count.to(device)] for name, (total, count) in partial["sums"].items()})

    def add(self, step: int, out) -> None:
        loss = out.loss.detach()
        self.first_bad_step = torch.where((self.first_bad_step < 0) & ~torch.isfinite(loss), step,
                                          self.first_bad_step)
        self.loss_sum += loss * out.loss_weight
        self.loss_weight += out.loss_weight
        for name, (total, count) in out.metrics.items():
            acc = self.sums.setdefault(name, [torch.zeros((), device=loss.device)] * 2)
            self.sums[name] = [acc[0] + total.detach(), acc[1] + count]
        self.steps_done = step + 1

    def state(self, generator: torch.Generator) -> dict:
        return {"steps_done": self.steps_done, "generator": generator.get_state(),
                "loss_sum": self.loss_sum.cpu(), "loss_weight": self.loss_weight,
                "first_bad_step": self.first_bad_step.cpu(),
                "seconds": self.seconds_before + time.time() - self.started,
                "sums": {name: [t.cpu(), c.cpu()] for name, (t, c) in self.sums.items()}}
