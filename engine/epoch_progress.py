"""The running sums of one epoch of the training loop, kept on the device so that a step
reads nothing back, and their saved form when a signal interrupts the epoch: every rank's sums
and augmentation generator, so that a resumed epoch sums exactly as an uninterrupted one; and
the checks of the entries a resumed checkpoint gives the loop, before anything is written."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from utils import distributed
from utils.checkpoint_fields import check_number, field_error
from utils.seeds import rng_problem


@dataclass
class EpochProgress:
    """Running sums of an epoch, kept on the device (no host sync per step)."""

    loss_sum: torch.Tensor
    first_bad_step: torch.Tensor  # step of the first non-finite loss, -1 while there is none
    loss_weight: int = 0
    steps_done: int = 0
    seconds_before: float = 0.0  # time spent before an interruption
    sums: dict = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    @classmethod
    def start(cls, device: torch.device, partial: dict | None, rank: int = 0) -> "EpochProgress":
        """A new epoch's sums, or those `rank` had when the epoch was interrupted."""
        if partial is None:
            return cls(torch.zeros((), device=device), torch.full((), -1, device=device))
        mine = partial["ranks"][rank]
        return cls(
            mine["loss_sum"].to(device),
            mine["first_bad_step"].to(device),
            mine["loss_weight"],
            partial["steps_done"],
            partial["seconds"],
            {name: [total.to(device), count.to(device)] for name, (total, count) in mine["sums"].items()},
        )

    def add(self, step: int, out) -> None:
        loss = out.loss.detach()
        self.first_bad_step = torch.where((self.first_bad_step < 0) & ~torch.isfinite(loss), step, self.first_bad_step)
        self.loss_sum += loss * out.loss_weight
        self.loss_weight += out.loss_weight
        for name, (total, count) in out.metrics.items():
            acc = self.sums.setdefault(name, [torch.zeros((), device=loss.device)] * 2)
            self.sums[name] = [acc[0] + total.detach(), acc[1] + count]
        self.steps_done = step + 1

    def reduce(self) -> None:
        """Under torchrun, sum the running sums over the ranks (every rank gets the totals) and
        take the earliest non-finite step of any rank; without it, nothing changes."""
        if not distributed.is_active():
            return
        device = self.loss_sum.device
        values = [self.loss_sum, torch.full((), self.loss_weight, dtype=torch.float64, device=device)]
        values += [tensor for name in sorted(self.sums) for tensor in self.sums[name]]
        totals = distributed.sum_over_ranks(torch.stack([v.double() for v in values])).unbind()
        self.loss_sum = totals[0].to(self.loss_sum.dtype)
        self.loss_weight = int(totals[1])
        for i, name in enumerate(sorted(self.sums)):
            total, count = self.sums[name]
            self.sums[name] = [totals[2 + 2 * i].to(total.dtype), totals[3 + 2 * i].to(count.dtype)]
        never = torch.iinfo(self.first_bad_step.dtype).max
        earliest = distributed.min_over_ranks(torch.where(self.first_bad_step < 0, never, self.first_bad_step))
        self.first_bad_step = torch.where(earliest == never, -1, earliest)

    @staticmethod
    def check_saved(partial: object, world_size: int, path: Path) -> None:
        """`partial` is what `state` saves for `world_size` processes (see `check_resume_fields`)."""
        key = "interrupted"
        if not isinstance(partial, dict) or not {"steps_done", "seconds", "ranks"} <= set(partial):
            raise field_error(path, key, "is not the record of an interrupted epoch")
        check_number(partial["steps_done"], 0, 0, math.inf, path, f"{key}.steps_done")
        check_number(partial["seconds"], 0.0, 0, math.inf, path, f"{key}.seconds")
        ranks = partial["ranks"]
        if not isinstance(ranks, list) or len(ranks) != world_size:
            raise field_error(path, f"{key}.ranks", f"does not hold the sums of {world_size} process(es)")
        for mine in ranks:
            if not isinstance(mine, dict) or not {
                "generator",
                "loss_sum",
                "loss_weight",
                "first_bad_step",
                "sums",
            } <= set(mine):
                raise field_error(path, f"{key}.ranks", "is not the record of each process's sums")
            generator = mine["generator"]  # its size depends on the device that drew it
            if not isinstance(generator, torch.Tensor) or generator.dtype != torch.uint8 or generator.dim() != 1:
                raise field_error(path, f"{key}.ranks.generator", "is not a generator state")
            check_number(mine["loss_weight"], 0, 0, math.inf, path, f"{key}.ranks.loss_weight")
            sums = mine["sums"]
            tensors = {"loss_sum": mine["loss_sum"], "first_bad_step": mine["first_bad_step"]}
            if not isinstance(sums, dict) or not all(
                isinstance(pair, list) and len(pair) == 2 for pair in sums.values()
            ):
                raise field_error(path, f"{key}.ranks.sums", "is not a set of (sum, count) pairs")
            tensors.update({f"sums.{name}": value for name, pair in sums.items() for value in pair})
            for name, value in tensors.items():
                if not isinstance(value, torch.Tensor) or value.dim() != 0:
                    raise field_error(path, f"{key}.ranks.{name}", "is not a single number as a tensor")

    def state(self, generator: torch.Generator) -> dict:
        """The partial epoch to save, with every rank's own sums and augmentation generator
        (one entry without torchrun), so a resumed epoch sums exactly as an uninterrupted one."""
        mine = {
            "generator": generator.get_state(),
            "loss_sum": self.loss_sum.cpu(),
            "loss_weight": self.loss_weight,
            "first_bad_step": self.first_bad_step.cpu(),
            "sums": {name: [t.cpu(), c.cpu()] for name, (t, c) in self.sums.items()},
        }
        return {
            "steps_done": self.steps_done,
            "seconds": self.seconds_before + time.time() - self.started,
            "ranks": distributed.gather_objects(mine),
        }


def check_resume_fields(state: dict, world_size: int, path: Path) -> None:
    """Refuse in one line, naming the file and the entry, a resumed `state` whose entries that
    `Engine.fit` reads could not be restored: the generator states, the gradient scaler's, and
    the sums of an interrupted epoch (one set per process). Called before anything is written."""
    problem = rng_problem(state.get("rng"))
    if problem:
        raise field_error(path, "rng", problem)
    if "grad_scaler" in state:
        saved, reference = state["grad_scaler"], torch.amp.GradScaler("cpu").state_dict()
        if not isinstance(saved, dict) or not set(reference) <= set(saved):
            raise field_error(path, "grad_scaler", "is not a gradient scaler's state")
        for name, value in reference.items():
            check_number(saved[name], value, 0, math.inf, path, f"grad_scaler.{name}")
    if "interrupted" in state:
        EpochProgress.check_saved(state["interrupted"], world_size, path)


def resume_position(state: dict) -> str:
    """Where a run resumed from `state` (checked by `check_resume_fields`) continues, with epochs
    and steps counted from 1 as the progress bar counts them."""
    partial = state.get("interrupted")
    if partial is not None:
        return f"inside epoch {state['epoch'] + 1}, after step {partial['steps_done']}"
    return f"at the start of epoch {state['epoch'] + 1}"
