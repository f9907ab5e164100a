"""Ctrl-C while a script starts (torch takes seconds to import) ends it with one line and
status 130, not a KeyboardInterrupt traceback: utils/entry.py is the scripts' first import."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO


def _importing_torch(pid: int) -> bool:
    """Whether the process has mapped torch's own library: its import is under way."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:  # the process has ended
        return True


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc to see torch loading")
@pytest.mark.parametrize("script", ["train_unsupervised.py", "train_linear_evaluation.py", "test.py", "reproduce.py"])
def test_ctrl_c_while_torch_imports_is_one_line(script):
    child = subprocess.Popen(
        [sys.executable, script, "--help"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while not _importing_torch(child.pid) and time.monotonic() < deadline:
        time.sleep(0.002)
    child.send_signal(signal.SIGINT)
    _, error = child.communicate(timeout=120)
    assert child.returncode == 130, error
    lines = error.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}: interrupted; files saved before are intact"), error
