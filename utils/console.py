"""The lines a run prints for its user, through one function that a process may silence.

Under torchrun every process runs the stage and rank 0 speaks for the run: the other ranks
silence `say` while they run it, so each line appears once. Their warnings and errors still
reach stderr, which is not silenced.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

_silent = False


def say(line: str, flush: bool = False) -> None:
    """Print `line` on stdout, unless this process is silenced; `flush` for a line that must
    show at once (one printed from a signal handler)."""
    if not _silent:
        print(line, flush=flush)


@contextmanager
def silenced(silent: bool = True) -> Iterator[None]:
    """Silence `say` inside the block when `silent`, as a rank that does not speak for the run."""
    global _silent
    previous, _silent = _silent, silent
    try:
        yield
    finally:
        _silent = previous
