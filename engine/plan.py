"""What the training loop is asked to do (`TrainingPlan`): epochs, batches, files, precision,
monitoring, and a learner trained beside the method (`StepProbe`). The stages build a plan;
`engine/loop.py` carries it out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch

from backbones import Backbone
from utils.distributed import SINGLE, Ranks

# The checkpoint key of the state of the plan's probe.
PROBE_KEY = "online_probe"


class StepProbe(Protocol):
    """A learner trained beside the method, step by step, on the backbone the later stages
    evaluate (the online linear probe of `evaluation/probe.py`), which leaves the method's
    training as it is: it changes neither the backbone nor the random streams the training
    draws from. Its state is saved under `PROBE_KEY`."""

    columns: tuple[str, ...]  # the log's columns of `scores`

    def train_step(
        self,
        backbone: Backbone,
        images: torch.Tensor,
        labels: torch.Tensor,
        step: int,
        total_steps: int,
        epoch_steps: int,
    ) -> None: ...

    def scores(self, backbone: Backbone) -> dict: ...

    def state_dict(self) -> dict: ...


@dataclass
class TrainingPlan:
    epochs: int  # total epochs of the run
    batch_size: int  # images per step (each gives the method's views)
    seed: int
    log_path: Path
    # Paths to save after a (1-based) epoch count; empty when that epoch is not saved.
    checkpoint_paths: Callable[[int], list[Path]]
    extra_state: dict  # stored in every checkpoint (args, names, versions)
    drop_last: bool = False
    # Rewritten after every epoch (the first step of its commit, engine/commit.py) and on a stop.
    rolling_checkpoint: Path | None = None
    precision: str = "fp32"  # see engine/precision.py
    compile: bool = False  # torch.compile the method's compiled_modules (its backbones)
    channels_last: bool = False  # convolution weights and views in NHWC memory order
    ranks: Ranks = SINGLE  # this process's rank under torchrun
    # Scores of the backbone (e.g. a kNN accuracy) after every `monitor_every` epochs and the
    # last, logged as the columns `monitor_columns` (empty in the other epochs). Evaluation
    # lives above the engine, so the stage script passes it in.
    monitor: Callable[[Backbone], dict] | None = None
    monitor_every: int = 0
    monitor_columns: tuple[str, ...] = ()
    monitor_note: str = ""  # added to every monitor line (which split the scores are measured on)
    # Trained after every step on the first view of the method's first view group, scored after
    # every epoch (its columns), saved in every checkpoint; only where the checkpoints are written.
    probe: StepProbe | None = None
    row_listeners: list[Callable[[dict], None]] = field(default_factory=list)  # called with each logged row
