"""The first import of every script, before torch: `start` prepares the process for a stage.

A Ctrl-C at any instant ends a script with one line.

Python turns SIGINT into KeyboardInterrupt, which prints a traceback wherever it lands: while
torch imports (seconds at start-up), between the stage's own handling and the exit. The
handler installed here covers those moments; `experiments.stage.run_main` hands SIGINT back to
Python while the stage runs, so its training loop can stop after a step and save.
"""

from __future__ import annotations

import os
import signal
import sys

INTERRUPTED = "interrupted; files saved before are intact (a stage-1 run continues with --resume auto)"


def _exit_interrupted(signum, frame) -> None:
    try:
        sys.stdout.flush()  # what the stage printed is kept, as on a normal exit
    except (OSError, ValueError, RuntimeError):  # a closed or reentered stream: nothing to keep
        pass
    os.write(2, f"{os.path.basename(sys.argv[0])}: {INTERRUPTED}\n".encode())
    os._exit(128 + signal.SIGINT)


def exit_quietly_on_interrupt() -> None:
    """Install the one-line exit for SIGINT (main thread only, as Python requires)."""
    signal.signal(signal.SIGINT, _exit_interrupted)


def start() -> None:
    """Prepare the process before torch loads, as a stage script's first call: the one-line
    Ctrl-C first (torch takes seconds to import), then the CPU threads, which OpenMP reads only
    when it loads, and the allocator's settings, before torch allocates its first large block."""
    exit_quietly_on_interrupt()
    from utils.threads import configure_threads

    configure_threads()
    # Imported only now: utils.runtime imports torch, which loads OpenMP with the variables set above.
    from utils.runtime import tune_allocator

    tune_allocator()
