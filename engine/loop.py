"""The one training loop that drives every method (see `methods/base.py` for the contract).

It owns the seeded data order, augmentation of uint8 batches on the training device (one
batch per view group of the method), the
precision (autocast), compilation and memory format of the step, the optimizer step, the
per-epoch CSV log, checkpoints, a memory check before the first step, stopping on
SIGINT/SIGTERM, exact resume (at an epoch boundary or inside an epoch that a signal
interrupted) and, under torchrun, each rank's share of the data and the reduction of its
metrics (`utils/distributed.py`).

The loop itself reads nothing back from the device inside an epoch: metrics are summed as
device tensors and read once per epoch, and the progress bar reads the loss every LOG_EVERY
steps.
"""

from __future__ import annotations

import os
import signal
import time

import torch
from tqdm import tqdm

from datasets import ImageSet
from datasets.augment import build_augmentation
from engine.checkpoint import FORMAT_VERSION, save_checkpoint
from engine.commit import commit_epoch
from engine.csv_log import CsvLog
from engine.epoch_progress import EpochProgress
from engine.plan import PROBE_KEY, TrainingPlan
from engine.precision import Precision
from engine.signals import RunInterrupted, StopSignals
from methods.base import EpochContext, EpochNotes, Method, StepOutput
from utils import distributed
from utils.console import say
from utils.errors import UserError
from utils.runtime import available_memory, format_duration
from utils.seeds import (
    SeedPurpose,
    derived_seed,
    restore_rng_states,
    rng_states,
)

# Steps between reads of the loss for the progress bar: each read waits for the device.
LOG_EVERY = 20
# A GPU keeps the whole uint8 training set when it takes at most this share of the free memory.
_DATA_SHARE_OF_DEVICE = 0.5
# The smallest backbone keeps several times its input in activations and gradients; a lower
# bound, so the check only refuses steps that surely cannot run.
_ACTIVATION_FACTOR = 4


def compile_in_this_process() -> None:
    """Have torch.compile generate and build its kernels in this process, unless the user set
    TORCHINDUCTOR_COMPILE_THREADS. Its default pool of compiler processes (one per CPU) each
    load torch: on 2 cores they held 480-510 MB more than the training step itself (Conv-4 at
    K 32 peaked at 1,906 MB against 1,293 MB eager), and compiling in the process was no slower."""
    if "TORCHINDUCTOR_COMPILE_THREADS" not in os.environ:
        import torch._inductor.config

        torch._inductor.config.compile_threads = 1


def notes_line(notes: EpochNotes) -> str:
    """A method's epoch notes as one line: `{"learning_rates": [0.01, 0.1]}` is
    `[INFO] Learning rates: 0.01, 0.1`."""

    def shown(value: float | list[float]) -> str:
        return ", ".join(f"{number:g}" for number in value) if isinstance(value, list) else f"{value:g}"

    return "[INFO] " + "; ".join(
        f"{name[0].upper()}{name[1:].replace('_', ' ')}: {shown(value)}" for name, value in notes.items()
    )


class Engine:
    def __init__(self, method: Method, data: ImageSet, plan: TrainingPlan, device: torch.device):
        self.method = method.to(device)
        self.plan = plan
        self.device = device
        # The views' pixels normalised with the data set's mean and std, or in [0, 1], as the
        # method's reference feeds them.
        self.data = data = data.as_inputs(method.normalises_inputs)
        # Batches are gathered where the data set lives: on the GPU when it fits there, so a
        # step never waits for a copy from the host. Free memory that cannot be read counts
        # as none: the host always holds the data.
        fits = device.type == "cpu" or data.images.nbytes <= _DATA_SHARE_OF_DEVICE * (available_memory(device) or 0)
        self.data_device = device if fits else torch.device("cpu")
        self.images = data.images.to(self.data_device)
        self.labels = data.labels.to(self.data_device)
        self.augmentations = [
            build_augmentation(group.views, data.mean, data.std, data.padding, cutout=data.cutout)
            for group in method.view_groups
        ]
        self.generator = torch.Generator(device=device)
        self.optimizer_steps = 0  # of the run, set at the start of every epoch
        self.precision = Precision(plan.precision, device)
        if plan.channels_last:
            method.to(memory_format=torch.channels_last)
        if plan.compile:
            compile_in_this_process()
            for name in method.compiled_modules:
                getattr(method, name).compile()  # in place: the state dict keeps its keys
        self.parallel_step = distributed.wrap_training_step(method, plan.ranks, device)
        self.stop = StopSignals()
        self.run_started = time.time()
        self.run_steps = 0  # steps this process has trained, for the run's remaining time
        self.check_step_memory()

    def check_step_memory(self) -> None:
        """Refuse a step that cannot fit before trying it: the augmented float views of one
        step alone (K views x batch for relationnet) must leave room for the activations."""
        batch = min(self.plan.batch_size, len(self.images))
        views = self.method.views_per_image * batch
        channels, height, width = self.images.shape[1:]
        sides = [(group.side(height) or height, group.side(width) or width) for group in self.method.view_groups]
        pixels = sum(group.count * channels * h * w for group, (h, w) in zip(self.method.view_groups, sides))
        needed = batch * pixels * 4 * _ACTIVATION_FACTOR + self.method.head_step_bytes(batch)
        available = available_memory(self.device)
        if available is not None and needed > available:
            raise UserError(
                f"one step holds {views} augmented images (views per image x --data_size), "
                f"about {needed / 2**30:.1f} GiB with activations, but only "
                f"{available / 2**30:.1f} GiB are free on {self.device}: lower --K or --data_size"
            )

    def steps_per_epoch(self, images: int) -> int:
        """Steps of an epoch over `images`; a last batch of a single image joins the step before
        it (see `batch_index`): batch norm cannot normalise one image in training mode."""
        full, rest = divmod(images, self.plan.batch_size)
        if self.plan.drop_last or (rest == 1 and full > 0):
            return full
        return full + (rest > 0)

    def epoch_steps(self) -> int:
        """Steps of this rank in an epoch that visits every training image once."""
        return self.steps_per_epoch(len(self.images) // self.plan.ranks.world_size)  # as distributed.shard cuts

    def fit(self, start_epoch: int = 0, resume_state: dict | None = None) -> dict:
        """Train the epochs after the first `start_epoch`, committing each epoch's files in the
        order of `engine/commit.py`; returns the last epoch's log row, whose `epoch` is 1-based as
        the checkpoint names (row N is the state of `_epoch_N.tar`). A `resume_state` read from a
        rolling checkpoint needs its commit finished first (`finish_commit`, as `--resume` does).

        SIGINT or SIGTERM ends the run after the current step with a resumable checkpoint
        (`RunInterrupted`); resuming from it continues inside the interrupted epoch.
        """
        partial = None
        if resume_state is not None:
            restore_rng_states(resume_state["rng"])
            self.precision.load_state_dict(resume_state)
            partial = resume_state.get("interrupted")
        log = CsvLog(self.plan.log_path)
        row: dict = {}
        with StopSignals(echo_seconds=2.0 if self.plan.ranks.distributed else 0.0) as stop:
            self.stop = stop
            for epoch in range(start_epoch, self.plan.epochs):
                row = self.run_epoch(epoch, partial)
                partial = None
                if not self.plan.ranks.is_main:
                    continue
                row = self.monitored(row)
                commit_epoch(
                    self.checkpoint(epoch + 1),
                    row,
                    log,
                    self.plan.checkpoint_paths(epoch + 1),
                    self.plan.rolling_checkpoint,
                )
                for listener in self.plan.row_listeners:
                    listener(row)
        return row

    def monitored(self, row: dict) -> dict:
        """The epoch's row with the monitor's columns: its scores after every `monitor_every`
        epochs and the last one, empty otherwise, then the probe's scores of every epoch. The
        monitor and the probe read the backbone in eval mode and draw nothing from the
        training's random streams."""
        plan = self.plan
        probe_columns = plan.probe.columns if plan.probe is not None else ()
        if plan.monitor is None and not probe_columns:
            return row
        epoch = row["epoch"]
        scores = dict.fromkeys(plan.monitor_columns + probe_columns)
        start = time.time()
        if plan.monitor is not None and (epoch % plan.monitor_every == 0 or epoch == plan.epochs):
            scores.update(plan.monitor(self.method.evaluated_backbone))
        if plan.probe is not None:
            scores.update(plan.probe.scores(self.method.evaluated_backbone))
        filled = {name: value for name, value in scores.items() if value is not None}
        if filled:
            say(
                f"Epoch {epoch}/{plan.epochs} monitor [{format_duration(time.time() - start)}] "
                + "; ".join(f"{name}: {value:.4g}" for name, value in filled.items())
                + (f" ({plan.monitor_note})" if plan.monitor_note else "")
            )
        return {**row, **scores}

    def checkpoint(self, epochs_done: int, interrupted: dict | None = None) -> dict:
        state = {
            **self.method.checkpoint_state(),
            **self.precision.state_dict(),
            **self.plan.extra_state,
            "epoch": epochs_done,
            "rng": rng_states(),
            "format_version": FORMAT_VERSION,
        }
        if self.plan.probe is not None:
            state[PROBE_KEY] = self.plan.probe.state_dict()
        if interrupted is not None:
            state["interrupted"] = interrupted
        return state

    def interrupt(self, epoch: int, progress: EpochProgress, steps: int) -> None:
        """Save the state after the current step and stop with a message saying how to resume;
        epochs and steps counted from 1, as the progress bar counts them."""
        name = signal.Signals(self.stop.received).name
        path = self.plan.rolling_checkpoint
        where = f"inside epoch {epoch + 1}/{self.plan.epochs}, after step {progress.steps_done} of {steps}"
        if path is None:
            raise RunInterrupted(
                self.stop.received,
                f"{name} received: stopped {where} (this stage cannot be resumed; run it again)",
            )
        partial = progress.state(self.generator)  # every rank takes part: it gathers their sums
        if self.plan.ranks.is_main:
            save_checkpoint(self.checkpoint(epoch, partial), path)
        raise RunInterrupted(
            self.stop.received,
            f"{name} received: stopped {where} and saved {path}; resume with the same command plus --resume auto",
        )

    def begin_epoch(self, epoch: int, partial: dict | None = None) -> tuple[torch.Tensor, EpochProgress]:
        """Train mode, the method's epoch hook, this epoch's seeded order (this rank's share,
        on `data_device`) and augmentation generator; `partial` is the state of an
        interrupted epoch to continue. Returns the order and the epoch's running sums."""
        method, plan = self.method, self.plan
        method.train()
        # The hook comes first: an epoch's order may depend on it (deepcluster's clusters).
        context = EpochContext(
            epoch=epoch,
            total_epochs=plan.epochs,
            steps_per_epoch=self.epoch_steps(),
            images=self.images,
            labels=self.labels,
            data=self.data,
            device=self.device,
            seed=plan.seed,
        )
        notes = method.on_epoch_start(context) if partial is None else method.on_epoch_resume(context)
        if notes:
            say(notes_line(notes))
        order_generator = torch.Generator().manual_seed(derived_seed(plan.seed, epoch, SeedPurpose.DATA_ORDER))
        order = method.epoch_order(epoch, order_generator)
        if order is None:
            order = torch.randperm(len(self.images), generator=order_generator)
        order = distributed.shard(order, plan.ranks).to(self.data_device)
        steps = self.steps_per_epoch(len(order))
        if steps == 0:
            raise UserError(
                f"--data_size {plan.batch_size} is larger than the {len(order)} training "
                f"images and {method.name} drops the last incomplete batch: lower --data_size"
            )
        if len(order) == 1:
            raise UserError(
                "a single training image: batch norm needs at least 2 images per step; "
                "raise --train_subset or use more images"
            )
        rank = plan.ranks.rank
        progress = EpochProgress.start(self.device, partial, rank)
        if partial is None:
            # Rank 0 draws what a single process draws; the other ranks draw their own views.
            self.generator.manual_seed(
                derived_seed(plan.seed, epoch, SeedPurpose.AUGMENTATION, *([rank] if rank else []))
            )
        else:
            self.generator.set_state(partial["ranks"][rank]["generator"])
        self.optimizer_steps = epoch * context.steps_per_epoch + progress.steps_done
        return order, progress

    def run_epoch(self, epoch: int, partial: dict | None = None) -> dict:
        """One epoch; `partial` is the state of an interrupted epoch to continue."""
        method, plan = self.method, self.plan
        start = time.time()
        order, progress = self.begin_epoch(epoch, partial)
        steps = self.steps_per_epoch(len(order))
        # tqdm shows the bar on a terminal only; there `disable` stays None, not False.
        bar = tqdm(
            range(progress.steps_done, steps),
            desc=f"Epoch {epoch + 1}/{plan.epochs}",
            leave=False,
            disable=None if plan.ranks.is_main else True,
            dynamic_ncols=True,
            initial=progress.steps_done,
            total=steps,
        )
        for step in bar:
            out = self.train_step(self.batch_index(order, step))
            progress.add(step, out)
            self.run_steps += 1
            if step % LOG_EVERY == 0 and not bar.disable:
                steps_left = steps - step - 1 + (plan.epochs - epoch - 1) * steps
                run_left = (time.time() - self.run_started) / self.run_steps * steps_left
                bar.set_postfix_str(f"loss={out.loss.item():.4f}, run left {format_duration(run_left)}")
            if self.stop_requested(step):
                bar.close()
                self.interrupt(epoch, progress, steps)
        bar.close()
        distributed.broadcast_buffers(method)
        progress.reduce()
        bad_step = int(progress.first_bad_step)
        if bad_step >= 0:
            raise UserError(
                f"the loss became non-finite inside epoch {epoch + 1}, at step {bad_step + 1}; nothing of "
                "this epoch was saved (the previous checkpoints are intact): lower --lr "
                "or check the data"
            )
        loss = (progress.loss_sum / progress.loss_weight).item()
        metrics = {name: (total / count.clamp(min=1)).item() for name, (total, count) in progress.sums.items()}
        seconds = time.time() - start + progress.seconds_before
        run_left = (time.time() - self.run_started) / max(self.run_steps, 1) * (plan.epochs - epoch - 1) * steps
        say(
            f"Epoch {epoch + 1}/{plan.epochs} [{format_duration(seconds)}, run left "
            f"{format_duration(run_left)}] loss: {loss:.6f}"
            + "".join(f"; {name}: {value:.4g}" for name, value in metrics.items())
        )
        return {
            "epoch": epoch + 1,
            "loss": loss,
            "score": method.score(metrics, loss),
            **metrics,
            "lr": method.optimizer.param_groups[0]["lr"],
            "seconds": round(seconds, 3),
        }

    def batch_index(self, order: torch.Tensor, step: int) -> torch.Tensor:
        """The training-set positions of step `step` of an epoch visiting `order`; unless the
        method drops it, the last step takes the rest (a smaller batch, or batch + 1 images)."""
        start = step * self.plan.batch_size
        if not self.plan.drop_last and step == self.steps_per_epoch(len(order)) - 1:
            return order[start:]
        return order[start : start + self.plan.batch_size]

    def augment_views(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The views of a uint8 batch, one float tensor per view group of the method, each
        group augmented as one batch; a group of V views is view-major (rows v*B .. v*B+B-1)."""
        views = []
        for group, augment in zip(self.method.view_groups, self.augmentations):
            batch = images.repeat(group.count, 1, 1, 1) if group.count > 1 else images
            augmented = augment(batch, self.generator)
            if self.plan.channels_last:
                augmented = augmented.contiguous(memory_format=torch.channels_last)
            views.append(augmented)
        return views

    def train_step(self, index: torch.Tensor) -> StepOutput:
        """One optimizer step on the training images at `index` (on `data_device`), then the
        method's `after_step`."""
        method = self.method
        images = self.images.index_select(0, index).to(self.device, non_blocking=True)
        labels = self.labels.index_select(0, index).to(self.device, non_blocking=True)
        index = index.to(self.device, non_blocking=True)
        views = self.augment_views(images)
        step = method.training_step if self.parallel_step is None else self.parallel_step
        with self.precision.autocast():
            out = step(views, labels, index)
        method.optimizer.zero_grad(set_to_none=True)
        self.precision.backward_and_step(out.loss, method.optimizer)
        self.optimizer_steps += 1
        method.after_step(self.optimizer_steps)
        if self.plan.probe is not None:  # after the method's step: it reads the backbone only
            with self.precision.autocast():
                self.plan.probe.train_step(
                    method.evaluated_backbone,
                    views[0][: len(labels)],
                    labels,
                    self.optimizer_steps - 1,
                    self.plan.epochs * self.epoch_steps(),
                    self.epoch_steps(),
                )
        return out

    def stop_requested(self, step: int) -> bool:
        """Whether a signal asks to stop after this step.

        Under torchrun the ranks must stop at the same step (one that stopped alone would leave
        the others waiting in the gradient all-reduce), so they agree on it: after every step
        on CPUs, every LOG_EVERY steps on GPUs, where reading the agreed flag waits for the device.
        """
        if not self.plan.ranks.distributed:
            return bool(self.stop.received)
        if self.device.type != "cpu" and (step + 1) % LOG_EVERY:
            return False
        received = torch.full((), self.stop.received, device=self.device)
        self.stop.received = int(distributed.max_over_ranks(received))
        return bool(self.stop.received)
