"""Stage 1 under torchrun: two CPU processes (gloo) train one run, agree on the weights, write
one set of files, and a run resumed under torchrun ends where an uninterrupted one does."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.helpers import REPO, views_flag

# Runs stage 1 as torchrun starts it, and dumps each rank's weights after training, so the
# test can compare what the ranks hold (only rank 0 writes checkpoints).
DRIVER = """
import os, sys
sys.path.insert(0, {repo!r})
import torch
from engine import loop as engine
fit = engine.Engine.fit
def fit_and_dump(self, *args, **kwargs):
    row = fit(self, *args, **kwargs)
    torch.save(self.method.state_dict(), os.path.join({out!r}, f"rank{{os.environ['RANK']}}.pt"))
    return row
engine.Engine.fit = fit_and_dump
from experiments import pretraining
from experiments.stage import run_main
run_main(lambda: pretraining.main(sys.argv[1:]))
"""


def torchrun(tmp_path, name, argv):
    out = tmp_path / name
    out.mkdir()
    driver = out / "driver.py"
    driver.write_text(DRIVER.format(repo=str(REPO), out=str(out)))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(driver),
    ] + argv
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def args(root, checkpoints, epochs, *extra, method="relationnet"):
    return [
        "--data_root",
        str(root),
        "--checkpoint_dir",
        str(checkpoints),
        "--no_download",
        "--device",
        "cpu",
        "--method",
        method,
        *views_flag(method),
        "--data_size",
        "8",
        "--train_subset",
        "64",
        "--seed",
        "3",
        "--epochs",
        str(epochs),
        *extra,
    ]


def load(path):
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def straight_run(small_cifar10_root, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("distributed")
    checkpoints = tmp_path / "checkpoints"
    out, result = torchrun(tmp_path, "straight", args(small_cifar10_root, checkpoints, 2))
    return checkpoints / "relationnet" / "cifar10", out, result


def test_two_ranks_agree_and_write_one_set_of_files(straight_run):
    folder, out, result = straight_run
    ranks = [load(out / f"rank{rank}.pt") for rank in (0, 1)]
    assert set(ranks[0]) == set(ranks[1])
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    header = "relationnet_cifar10_conv4_seed_3"
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        [
            f"{header}_epoch_1.tar",
            f"{header}_epoch_2.tar",
            f"{header}_last.tar",
            f"log_{header}.csv",
            f"config_{header}.json",
        ]
    )
    saved = load(folder / f"{header}_epoch_2.tar")
    assert saved["world_size"] == 2
    for key, value in saved["backbone"].items():
        assert torch.equal(value, ranks[0][f"backbone.{key}"]), key
    assert len((folder / f"log_{header}.csv").read_text().splitlines()) == 3  # header + 2 epochs
    # 64 images on 2 ranks of 8 per step: 4 steps per epoch on each rank.
    assert result.stdout.count("Epoch 2/2 ") == 1  # only rank 0 speaks


def test_resume_under_torchrun_ends_where_the_straight_run_ends(straight_run, small_cifar10_root, tmp_path):
    folder, _, _ = straight_run
    checkpoints = tmp_path / "checkpoints"
    torchrun(tmp_path, "first", args(small_cifar10_root, checkpoints, 1))
    resumed, _ = torchrun(tmp_path, "resumed", args(small_cifar10_root, checkpoints, 2, "--resume", "auto"))
    header = "relationnet_cifar10_conv4_seed_3"
    a = load(folder / f"{header}_epoch_2.tar")
    b = load(checkpoints / "relationnet" / "cifar10" / f"{header}_epoch_2.tar")
    for part in ("backbone", "relation"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), key
    rank1 = load(resumed / "rank1.pt")
    for key, value in b["relation"].items():
        assert torch.equal(value, rank1[f"relation_module.{key}"]), key


def test_simclr_gathers_negatives_from_both_ranks(small_cifar10_root, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    argv = args(small_cifar10_root, checkpoints, 1, method="simclr")
    out, result = torchrun(tmp_path, "simclr", argv + ["--simclr_gather"])
    ranks = [load(out / f"rank{rank}.pt") for rank in (0, 1)]
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    assert "Epoch 1/" in result.stdout and "nan" not in result.stdout


def _gathered_loss_gradient(rank, world_size, init_file, result_file):
    import torch.distributed as dist

    from methods.losses import simclr_original_loss
    from utils.distributed import gather_with_gradient

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    weight = torch.randn(8, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    views = torch.randn(2, 4 * world_size, 5, generator=torch.Generator().manual_seed(1))
    mine = views[:, rank * 4 : (rank + 1) * 4]  # this rank's 4 images, both views
    first, second = (mine[v] @ weight.t() for v in (0, 1))
    loss = simclr_original_loss(torch.cat([gather_with_gradient(first), gather_with_gradient(second)]))
    loss.backward()
    dist.all_reduce(weight.grad)  # what DDP does, before dividing by the world size
    if rank == 0:
        torch.save({"loss": loss.detach(), "grad": weight.grad / world_size}, result_file)
    dist.destroy_process_group()


def test_gathered_simclr_loss_and_gradient_equal_one_process_on_the_global_batch(tmp_path):
    import torch.multiprocessing as mp

    from methods.losses import simclr_original_loss

    mp.spawn(_gathered_loss_gradient, args=(2, str(tmp_path / "init"), str(tmp_path / "result.pt")), nprocs=2)
    result = load(tmp_path / "result.pt")
    weight = torch.randn(8, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    views = torch.randn(2, 8, 5, generator=torch.Generator().manual_seed(1))
    loss = simclr_original_loss(torch.cat([views[0] @ weight.t(), views[1] @ weight.t()]))
    loss.backward()
    torch.testing.assert_close(result["loss"], loss.detach())
    torch.testing.assert_close(result["grad"], weight.grad)
