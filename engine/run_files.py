"""The names of a run's files and its output folder.

File names follow the original code so that scripts written for it keep working:
`<checkpoint_dir>/<method>/<dataset>/<header>_epoch_<N>.tar` with
`header = <method>[_<id>]_<dataset>_<backbone>_seed_<seed>`.
"""

from __future__ import annotations

import re
from pathlib import Path


def run_header(method: str, dataset: str, backbone: str, seed: int, run_id: str = "") -> str:
    parts = [method] + ([run_id] if run_id else []) + [dataset, backbone, "seed", str(seed)]
    return "_".join(parts)


def evaluation_header(
    method: str,
    dataset: str,
    pretraining_dataset: str | None,
    backbone: str,
    seed: int,
    run_id: str,
    epochs: int | None,
    finetune: bool,
    label_fraction: float = 1.0,
    classifier: str = "linear",
) -> str:
    """The name of a stage-2 run. Cross-domain runs say so (`<dataset>_from_<pretraining>`),
    and so do fine-tuning, logistic-regression and semi-supervised runs, so none overwrites
    another's result. Logistic regression is solved, not trained for epochs: its name has
    no epoch count (`epochs` is None there)."""
    domain = dataset if pretraining_dataset in (None, dataset) else f"{dataset}_from_{pretraining_dataset}"
    if classifier == "logistic":
        mode = "logistic_regression"
    else:
        mode = f"epoch_{epochs}_" + ("finetune" if finetune else "linear_evaluation")
    if label_fraction < 1:
        mode += f"_labels_{label_fraction * 100:g}pct"
    return f"{run_header(method, domain, backbone, seed, run_id)}_{mode}"


class RunFiles:
    """The files of one run (a stage of one configuration) inside its output folder."""

    def __init__(self, checkpoint_dir: str | Path, method: str, dataset: str, header: str):
        self.directory = Path(checkpoint_dir) / method / dataset
        self.header = header

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.directory / f"{self.header}_epoch_{epoch}.tar"

    @property
    def final(self) -> Path:
        """`<header>.tar`: the one file of runs that save once (randomweights, stage 2)."""
        return self.directory / f"{self.header}.tar"

    @property
    def last_checkpoint(self) -> Path:
        """Rewritten after every epoch, so a run can be resumed from any epoch boundary."""
        return self.directory / f"{self.header}_last.tar"

    @property
    def lock(self) -> Path:
        return self.directory / f".{self.header}.lock"

    @property
    def log(self) -> Path:
        return self.directory / f"log_{self.header}.csv"

    @property
    def config(self) -> Path:
        return self.directory / f"config_{self.header}.json"

    def _names(self) -> re.Pattern:
        """The names of this run's files (not those of a stage-2 run named after it)."""
        header = re.escape(self.header)
        return re.compile(rf"{header}(?:_epoch_\d+|_last)?\.tar|log_{header}\.csv|config_{header}\.json")

    def outputs(self) -> list[Path]:
        """This run's files in the folder now: checkpoints, rolling checkpoint, log, config."""
        return self._matching(self._names())

    def remove_temporary(self) -> list[Path]:
        """Remove the temporary files that a killed writer of this run's files left (a run
        calls it once it holds the run's lock, so no live process is writing them)."""
        return self._remove(re.compile(rf"\.(?:{self._names().pattern})\.[0-9a-f]+\.tmp"))

    def remove_outputs(self) -> list[Path]:
        """Remove every file of this run (checkpoints, rolling checkpoint, log, config and their
        temporary files), the rolling checkpoint first: a run killed midway leaves nothing that
        `--resume auto` could continue. Called under the run's lock by a new run that replaces
        it (`--overwrite`), once its inputs are checked."""
        names = self._names().pattern
        removed = self._remove(re.compile(re.escape(self.last_checkpoint.name)))
        return removed + self._remove(re.compile(rf"{names}|\.(?:{names})\.[0-9a-f]+\.tmp"))

    def _matching(self, names: re.Pattern) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(path for path in self.directory.iterdir() if names.fullmatch(path.name))

    def _remove(self, names: re.Pattern) -> list[Path]:
        removed = self._matching(names)
        for path in removed:
            path.unlink(missing_ok=True)
        return removed
