"""The contract between a training method and the shared engine (`engine/loop.py`).

A method is an `nn.Module` holding a backbone, its own head(s) and its optimizer, built from
its configuration (`RelationNet(backbone, num_classes, RelationNet.Config(K=4))`; without one,
the defaults), so it drops into any Python loop. The engine owns everything else: the data
order, augmentation on the device, precision, the loop, logging, checkpoints and resume. A
method therefore only declares what it needs and says how one step turns augmented views
into a loss:

Class attributes
    name            registry name, also the first part of every output file name.
    Config          its options: a frozen dataclass derived from `MethodConfig` whose fields
                    (`methods.config.option`) carry default, help, bounds and choices; the
                    stage-1 flags are made from them (shown in `--help` under the method's
                    name, refused with any other `--method`). The built method keeps it as
                    `config`.
    checkpoint_keys checkpoint key -> attribute saved under it (modules and optimizers by
                    their state dicts, tensors and numbers as they are), in the original
                    code's key names; `optional_keys` may be missing from a file.
    needs_labels    True for supervised training (the engine then refuses unlabelled data).
    scores_test_split  True where training fits a classifier of the data set's classes: stage 1
                    then scores it on the test split after the last epoch.
    default_lr      learning rate when the keyword `lr` is None (the stage-1 flag `--lr`).
    default_batch_size  images per step when `--data_size` is not given.
    score_name      what the `score` column of the per-epoch CSV log holds.
    trains          False for methods that are saved untrained (randomweights).
    drop_last       skip the last, smaller batch of an epoch.
    min_batch_size  the smallest batch a step can use.
    compiled_modules  the attributes `--compile` compiles: the networks that carry the cost.
    per_view_batch_norm  how batch norm sees a step's views, as the method's reference
                    computes them: True, each view normalised with its own batch statistics
                    (each view through the networks on its own: solo-learn, relic-pytorch); False,
                    with the statistics of all views together (the original code concatenates
                    them into one batch). `forward_views` honours it.
    normalises_inputs  how the views' pixels reach the networks, as the reference feeds them:
                    True, normalised with the data set's mean and std; False, in [0, 1] as
                    ToTensor leaves them (relic-pytorch). The later stages feed the backbone
                    the images of its method's range (`ImageSet.as_inputs`).

Instance interface
    view_groups               the views of each image per step, as groups (`ViewGroup`):
                              a count and the views' augmentation each.
    optimizer                 a `torch.optim.Optimizer`, created in `__init__`.
    evaluated_backbone        the backbone the later stages evaluate: the one saved as `backbone`.
    training_step(views, labels, index) -> StepOutput
        `views` has one float tensor per group, in the order of `view_groups`; a group of
        V views of B images is (V*B, C, H, W), view-major (rows v*B .. v*B+B-1 are view v).
        `labels` is int64 (B,) (-1 where unlabelled) and `index` (B,) the images' positions
        in the training set. It returns the loss to back-propagate and metric sums; it must
        not call `.item()` nor make tensors from Python numbers with `torch.tensor(...,
        device=...)` (on a GPU both wait for the device; `torch.full` does not). The engine
        runs it under autocast when asked, then zeroes the gradients, back-propagates and
        steps `optimizer`. It sends views through a network with `forward_views`.
    forward_views(network, views, count)  the network's outputs of `count` view-major views
        in one forward, batch norm's statistics per view or pooled as the method declares.
    after_step(step)          after every optimizer step; `step` counts the run's optimizer
                              steps (1 after the first). What it keeps belongs in
                              `checkpoint_keys`, so a run resumed inside an epoch continues it.
    on_epoch_start(context)   schedules and per-epoch work such as clustering (`EpochContext`);
                              returns the numbers worth telling the user (`EpochNotes`, printed
                              by the engine as one line), or None. Methods do not print.
    on_epoch_resume(context)  the same, when a run continues inside an interrupted epoch
                              (default: on_epoch_start).
    epoch_order(epoch, generator) -> index tensor or None   the order in which the epoch
        visits the training images; None (default) lets the engine draw a permutation.
    head_step_bytes(batch_size)   memory of the head in one step, when it is large.
    checkpoint_ranges()       the bounds of the numbers under `checkpoint_keys`, which a loaded
                              state is checked against with everything else it holds
                              (`check_checkpoint_state`) before any of it is loaded.

Method classes never override `nn.Module.train`; the engine calls `method.train()` and
`method.eval()` with their usual meaning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from backbones import Backbone
from datasets import ImageSet
from datasets.augment import Views
from methods.config import MethodConfig
from methods.view_statistics import forward_views
from utils.checkpoint_fields import (
    check_data_tensor,
    check_module_entry,
    check_number,
    check_optimizer_state,
    check_tensor,
)
from utils.errors import UserError

# The widest hidden or output layer a method's option may ask for: a wider one is a typo, and
# its weights alone would take gigabytes (the methods use 64 to 8,192).
MAX_LAYER_WIDTH = 2**16


@dataclass
class StepOutput:
    """Result of one training step.

    `metrics` maps a name to a pair of tensors (sum, count); the engine accumulates both over
    the epoch and logs sum/count, so metrics weight correctly across uneven batches.
    `loss_weight` is how many samples the loss averages over (pairs, views, images), so the
    epoch loss is a weighted mean like the original's meters.
    """

    loss: torch.Tensor
    loss_weight: int = 1
    metrics: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


@dataclass(frozen=True)
class ViewGroup:
    """`count` views of every image, augmented as `views` describes (`datasets.augment`)."""

    count: int
    views: Views

    def side(self, image_side: int) -> int | None:
        """The views' side for images of `image_side` pixels (None: the images' own)."""
        return self.views.side(image_side)


# Numbers a method reports at the start of an epoch, by name (`learning_rates`, `inertia`).
EpochNotes = dict[str, float | list[float]]


@dataclass(frozen=True)
class EpochContext:
    """What a method's per-epoch hooks may use: the training set and where the run is."""

    epoch: int  # 0-based epoch about to run
    total_epochs: int
    steps_per_epoch: int
    images: torch.Tensor  # uint8 training set (on the device when it fits)
    labels: torch.Tensor  # int64, -1 where unlabelled
    data: ImageSet  # the data set's mean, std, classes, size
    device: torch.device  # the training device
    seed: int  # the run's seed


class Method(nn.Module):
    name: str = ""
    default_batch_size: int = 128
    Config: type[MethodConfig] = MethodConfig
    checkpoint_keys: dict[str, str] = {}
    optional_keys: frozenset[str] = frozenset({"optimizer"})
    needs_labels: bool = False
    scores_test_split: bool = False
    score_name: str = "neg_loss"
    trains: bool = True
    drop_last: bool = False
    min_batch_size: int = 1
    compiled_modules: tuple[str, ...] = ("backbone",)
    default_lr: float = 1e-3
    per_view_batch_norm: bool = True
    normalises_inputs: bool = True

    # Set by every method that trains, in its `__init__`; the engine zeroes and steps it.
    optimizer: torch.optim.Optimizer
    # A subclass narrows it to its own `Config` (`config: Config` in its class body).
    config: MethodConfig
    backbone: Backbone

    def __init__(
        self, backbone: Backbone, num_classes: int, config: MethodConfig | None = None, *, lr: float | None = None
    ):
        super().__init__()
        if config is not None and type(config) is not self.Config:
            raise TypeError(f"{self.name} takes a {type(self).__name__}.Config, not a {type(config).__qualname__}")
        self.config = self.Config() if config is None else config
        self.backbone = backbone
        self.num_classes = num_classes
        self.lr = lr or self.default_lr

    @property
    def view_groups(self) -> list[ViewGroup]:
        raise NotImplementedError

    @property
    def evaluated_backbone(self) -> Backbone:
        """The backbone the later stages evaluate: the one saved under the checkpoint key
        `backbone` (a momentum target, where the method keeps one, rather than the online network)."""
        return getattr(self, self.checkpoint_keys.get("backbone", "backbone"))

    @property
    def views_per_image(self) -> int:
        return sum(group.count for group in self.view_groups)

    def training_step(self, views: list[torch.Tensor], labels: torch.Tensor, index: torch.Tensor) -> StepOutput:
        raise NotImplementedError

    def forward_views(self, network: nn.Module | Backbone, views: torch.Tensor, count: int) -> torch.Tensor:
        """`network`'s outputs of `count` view-major views of B images (rows v*B .. v*B+B-1 are
        view v, as a view group arrives, or views of one size concatenated), in one forward;
        batch norm normalises each view on its own where `per_view_batch_norm` says so
        (`methods.view_statistics`). Views of another size are another call."""
        return forward_views(network, views, count, self.per_view_batch_norm)

    def after_step(self, step: int) -> None:
        """Called after every optimizer step; `step` is the run's count of them so far."""

    def on_epoch_start(self, context: EpochContext) -> EpochNotes | None:
        """Called before every epoch, also the first epoch after a resume; returns the epoch's
        numbers to report (a new learning rate, the clustering's quality), or None."""
        return None

    def on_epoch_resume(self, context: EpochContext) -> EpochNotes | None:
        """Called instead of `on_epoch_start` when a run resumes inside an interrupted epoch;
        per-epoch work whose result is in the checkpoint must not be redone."""
        return self.on_epoch_start(context)

    def epoch_order(self, epoch: int, generator: torch.Generator) -> torch.Tensor | None:
        return None

    def head_step_bytes(self, batch_size: int) -> int:
        """Memory the head needs in one step beyond the backbone's (for the engine's check
        that a step can fit); methods whose head grows faster than the batch override it."""
        return 0

    def checkpoint_state(self) -> dict:
        """The declared keys: state dicts of modules and optimizers, tensors on the CPU."""
        state = {}
        for key, attribute in self.checkpoint_keys.items():
            value = getattr(self, attribute)
            if hasattr(value, "state_dict"):
                value = value.state_dict()
            elif isinstance(value, torch.Tensor):
                value = value.cpu()
            state[key] = value
        return state

    def checkpoint_ranges(self) -> dict[str, tuple[float, float]]:
        """The bounds of the numbers, and of the values of plain tensors, kept under checkpoint
        keys (a momentum in [0, 1], a step count >= 0), which a loaded state must respect; a
        float key without bounds may hold NaN (a quantity not known yet)."""
        return {}

    def check_checkpoint_state(self, state: dict, path: str | Path | None = None) -> None:
        """Refuse in one line, naming the file `path` and the entry, a state whose declared keys
        this method could not load unchanged: a required key missing, a module's or an
        optimizer's state that differs in names, shapes or dtypes from what this method built
        or holds non-finite values, a number of another kind or out of its bounds."""
        missing = [key for key in self.checkpoint_keys if key not in state and key not in self.optional_keys]
        if missing:
            raise UserError(
                f"{'checkpoint ' + str(path) if path else 'the checkpoint'} has no "
                f"{', '.join(missing)}: it was not written by {self.name} (it holds "
                f"{', '.join(sorted(map(str, state)))}); pass a {self.name} checkpoint"
            )
        ranges = self.checkpoint_ranges()
        for key, attribute in self.checkpoint_keys.items():
            if key not in state:
                continue
            target, value = getattr(self, attribute), state[key]
            low, high = ranges.get(key, (-math.inf, math.inf))
            if isinstance(target, nn.Module):
                check_module_entry(value, target, path, key)
            elif isinstance(target, torch.optim.Optimizer):
                check_optimizer_state(value, target, path, key)
            elif isinstance(target, nn.Parameter):
                check_tensor(value, target.detach(), path, key)
            elif isinstance(target, torch.Tensor):
                check_data_tensor(value, target, low, high, path, key)
            else:
                check_number(value, target, low, high, path, key)

    def load_checkpoint_state(self, state: dict, path: str | Path | None = None) -> None:
        """Load the declared keys once all are checked (`check_checkpoint_state`; `path` names
        the file in a refusal), so a refused state leaves the method as it was; an optional key
        missing from the file keeps its value."""
        self.check_checkpoint_state(state, path)
        for key, attribute in self.checkpoint_keys.items():
            if key not in state:
                continue
            target = getattr(self, attribute)
            if hasattr(target, "load_state_dict"):
                target.load_state_dict(state[key])
            elif isinstance(target, nn.Parameter):  # in place: the optimizer holds it
                with torch.no_grad():
                    target.copy_(state[key])
            else:
                setattr(self, attribute, state[key])

    def score(self, metrics: dict[str, float], loss: float) -> float:
        """The CSV `score` of an epoch, from its averaged metrics."""
        return metrics.get(self.score_name, -loss)
