"""quickstart.sh, the README's first command: its stage commands are the quick start printed in
docs/stages.md, each accepted by its stage's parser; flags the stages share reach all three; anything else is
refused in one line; and run on small CIFAR-10 files it ends with the test accuracy and the
places of the files and the feature map."""

from __future__ import annotations

import os
import shlex
import subprocess

import pytest

from tests.helpers import REPO
from tests.scripts.test_readme_commands import STAGE_PARSERS, documented_commands


def quickstart(*flags: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / "quickstart.sh"), *flags],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=600,
    )


def stage_commands(*flags: str, cwd=None) -> list[list[str]]:
    """The stage commands `--dry-run` prints, in order, as words without the interpreter."""
    dry = quickstart("--dry-run", *flags, cwd=cwd)
    assert dry.returncode == 0 and not dry.stderr, dry.stderr
    commands = [shlex.split(line) for line in dry.stdout.splitlines()]
    return [words[1:] for words in commands if words[0].endswith("python") and words[1] in STAGE_PARSERS]


def test_the_dry_run_prints_the_documented_quick_start():
    commands = stage_commands()
    assert [command[0] for command in commands] == list(STAGE_PARSERS)
    assert commands == documented_commands("docs/stages.md")[:3]  # the page shows what the script runs, first


def test_shared_flags_reach_every_stage_and_the_files_follow_the_checkpoint_dir(tmp_path):
    out = tmp_path / "out dir"
    commands = stage_commands("--device", "cpu", f"--checkpoint_dir={out}", "--no_download", "--overwrite")
    parsed = [STAGE_PARSERS[script]().parse_args(argv) for script, *argv in commands]
    assert [args.device for args in parsed] == ["cpu"] * 3 and all(args.no_download for args in parsed)
    assert [args.overwrite for args in parsed[:2]] == [True, True]  # test.py writes only its log
    pretraining, evaluation, test = parsed
    settings = (pretraining.method, pretraining.backbone, pretraining.K, pretraining.data_size, pretraining.epochs)
    assert settings == ("relationnet", "conv4", 4, 64, 3)
    folder = out / "relationnet" / "cifar10"
    assert evaluation.checkpoint == str(folder / "relationnet_cifar10_conv4_seed_1_epoch_3.tar")
    assert test.checkpoint == str(folder / "relationnet_cifar10_conv4_seed_1_epoch_10_linear_evaluation.tar")
    assert (evaluation.epochs, test.feature_map) == (10, "pca")


def test_relative_paths_are_read_from_the_callers_folder(tmp_path):
    commands = stage_commands("--checkpoint_dir", "out", "--data_root=data", cwd=tmp_path)
    for script, *argv in commands:
        args = STAGE_PARSERS[script]().parse_args(argv)
        assert (args.checkpoint_dir, args.data_root) == (str(tmp_path / "out"), str(tmp_path / "data"))
    assert commands[2][commands[2].index("--checkpoint") + 1].startswith(str(tmp_path / "out") + "/")


@pytest.mark.parametrize("flags", [["--epochs", "5"], ["--device"]], ids=["other_flag", "missing_value"])
def test_other_flags_are_refused_in_one_line_before_anything_runs(tmp_path, flags):
    refused = quickstart(*flags, "--checkpoint_dir", str(tmp_path / "out"))
    assert refused.returncode == 2 and refused.stdout == "", refused.stdout
    assert len(refused.stderr.splitlines()) == 1 and flags[0] in refused.stderr, refused.stderr
    assert not (tmp_path / "out").exists()


def test_a_run_ends_with_the_test_accuracy_the_files_and_the_feature_map(small_cifar10_root, tmp_path):
    out = tmp_path / "out"
    run = quickstart("--device", "cpu", "--checkpoint_dir", str(out), env={"SSL_DATA_ROOT": str(small_cifar10_root)})
    assert run.returncode == 0, run.stderr[-2000:]
    folder = out / "relationnet" / "cifar10"
    header = "relationnet_cifar10_conv4_seed_1_epoch_10_linear_evaluation"
    log = (folder / f"log_{header}_test.csv").read_text().splitlines()
    accuracy = log[-1].split(",")[log[0].split(",").index("accuracy")]
    *_, done, files, feature_map = run.stdout.strip().splitlines()
    assert f"CIFAR-10 from {small_cifar10_root}" in run.stdout
    assert done.startswith("Quick start done in ")
    assert done.endswith(f"test accuracy {accuracy} % (CIFAR-10 test split)")
    assert files.split(": ")[1] == f"{folder}/" and feature_map == f"  feature map: {folder / f'{header}_test_pca.png'}"
    assert (folder / f"{header}_test_pca.png").stat().st_size > 0
    assert [line for line in run.stdout.splitlines() if line.startswith("== ")][-3:] == [
        "== 1/3 Pretraining: relationnet, Conv-4, K 4, batch 64, 3 epochs",
        "== 2/3 Linear evaluation: the frozen backbone, a linear classifier for 10 epochs",
        "== 3/3 Test split, and a PCA map of 1,000 test features",
    ]
