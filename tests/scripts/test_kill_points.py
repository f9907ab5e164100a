"""A stage killed at every point of its save sequence, then continued, ends with the files of
a run that was never stopped: the same names, checkpoints equal tensor for tensor, the same
log rows (docs/reliability.md).

The kill points are the renames of the atomic writes (`utils/atomic.py`), each just
before it (the temporary file written, the target not yet replaced) and just after it: every
state the files on disk can be in. A forked child runs the stage and SIGKILLs itself there, so
no clean-up of Python runs and the lock stays behind, as after `kill -9`. The continuation is
what a person or reproduce.py runs next: the same command plus `--resume auto` when the
rolling checkpoint exists (stage 1, fine-tuning), else the same command, unless the stage's
final file exists (linear evaluation).
"""

from __future__ import annotations

import os
import signal
import stat

import pytest
import torch

import experiments.linear_evaluation as stage2
import experiments.pretraining as stage1
from engine.commit import COMMIT
from tests.helpers import load, read_log, run_stage, stage_arguments
from utils import atomic

SMALL = ["--data_size", "8", "--train_subset", "16", "--epochs", "2"]


@pytest.fixture(autouse=True)
def one_thread():
    """The killed runs are forked children on one thread (a forked child must not use the
    parent's thread pool); the reference and the resumed runs use one too, since float32 sums
    depend on how many threads split them."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def group_umask():
    """A lab's shared-storage umask: files must come out group-readable and writable (0o664)."""
    previous = os.umask(0o002)
    yield
    os.umask(previous)


def counted_renames(monkeypatch, module, argv) -> int:
    """Run the stage uninterrupted; returns how many atomic renames it made."""
    real, count = os.replace, []

    def replace(*args):
        count.append(args)
        real(*args)

    monkeypatch.setattr(atomic.os, "replace", replace)
    run_stage(module, argv)
    monkeypatch.undo()
    return len(count)


def run_killed(module, argv, rename: int, after: bool) -> None:
    """Run the stage in a forked child that SIGKILLs itself at its `rename`-th atomic rename,
    before or `after` it."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            real, count = os.replace, [0]

            def replace(*args):
                count[0] += 1
                if count[0] == rename and not after:
                    os.kill(os.getpid(), signal.SIGKILL)
                real(*args)
                if count[0] == rename:
                    os.kill(os.getpid(), signal.SIGKILL)

            atomic.os.replace = replace
            module.main(argv)
        finally:
            os._exit(3)  # not killed: the test reports it
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"child status {status}"


def continue_run(module, argv, folder, capsys) -> None:
    """Continue a killed run as a person or reproduce.py would; the dead run's lock is then
    taken over and released."""
    names = [path.name for path in folder.iterdir()] if folder.exists() else []
    if any(name.endswith("_last.tar") for name in names):
        argv = argv + ["--resume", "auto"]
    elif module is stage2 and "--finetune" not in argv and any(name.endswith("evaluation.tar") for name in names):
        return  # a finished linear evaluation, as reproduce.py sees it: its dead lock stays, harmless
    try:
        run_stage(module, argv)
    except SystemExit:  # only a run killed after its very last write has nothing left to do
        assert "nothing to" in capsys.readouterr().err
    assert not list(folder.glob(".*.lock"))


def same(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_same_files(folder, reference, point: str) -> None:
    names = sorted(path.name for path in folder.iterdir() if path.suffix != ".lock")
    assert names == sorted(path.name for path in reference.iterdir()), point  # no .tmp left
    for name in names:  # under the umask 0o002 of `kill_everywhere`, as open() would make them
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o664, f"{point}: {name}"
        if name.endswith(".tar"):  # everything but the command line (which gained --resume)
            a, b = load(folder / name), load(reference / name)
            same(
                {k: v for k, v in a.items() if k not in ("args", COMMIT)},
                {k: v for k, v in b.items() if k not in ("args", COMMIT)},
                f"{point}: {name}",
            )
        elif name.startswith("log_"):
            strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
            assert strip(read_log(folder / name)) == strip(read_log(reference / name)), f"{point}: {name}"


def kill_everywhere(module, argv_for, folder_in, monkeypatch, capsys, tmp_path) -> int:
    """Kill the stage at each point of its saves and continue it; returns the number of points."""
    reference = tmp_path / "reference"
    renames = counted_renames(monkeypatch, module, argv_for(reference))
    points = [(rename, after) for rename in range(1, renames + 1) for after in (False, True)]
    for rename, after in points:
        out = tmp_path / f"killed_{rename}_{'after' if after else 'before'}"
        run_killed(module, argv_for(out), rename, after)
        continue_run(module, argv_for(out), folder_in(out), capsys)
        assert_same_files(
            folder_in(out),
            folder_in(reference),
            f"killed {'after' if after else 'before'} rename {rename} of {renames}",
        )
    capsys.readouterr()
    return len(points)


def test_stage1_killed_at_every_save_point_resumes_to_the_same_files(small_cifar10_root, tmp_path, monkeypatch, capsys):
    def argv(out):
        return stage_arguments(small_cifar10_root, out) + ["--method", "relationnet", "--K", "2", *SMALL]

    # The config, then for each of the 2 epochs: the rolling checkpoint, the numbered one, the log.
    assert (
        kill_everywhere(stage1, argv, lambda out: out / "relationnet" / "cifar10", monkeypatch, capsys, tmp_path)
        == 2 * 7
    )


@pytest.fixture
def pretrained(small_cifar10_root, tmp_path):
    run_stage(stage1, stage_arguments(small_cifar10_root, tmp_path / "pretrained") + ["--method", "randomweights"])
    return tmp_path / "pretrained" / "randomweights" / "cifar10" / "randomweights_cifar10_conv4_seed_1.tar"


@pytest.mark.parametrize("mode,points", [("finetune", 2 * 6), ("linear", 2 * 3)])
def test_stage2_killed_at_every_save_point_ends_with_the_same_files(
    small_cifar10_root, pretrained, tmp_path, monkeypatch, capsys, mode, points
):
    def argv(out):
        return stage_arguments(small_cifar10_root, out) + [
            "--checkpoint",
            str(pretrained),
            *SMALL,
            *(["--finetune"] if mode == "finetune" else []),
        ]

    # Fine-tuning: the config, then the rolling checkpoint and the log of epoch 1, the rolling
    # checkpoint, the final file and the log of epoch 2. Linear evaluation: the config, the log
    # and the final file.
    assert (
        kill_everywhere(stage2, argv, lambda out: out / "randomweights" / "cifar10", monkeypatch, capsys, tmp_path)
        == points
    )
