"""The first import of every script, before torch: a Ctrl-C at any instant ends it with one line.

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
