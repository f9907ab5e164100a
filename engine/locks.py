"""The lock that keeps two live runs from writing the same files."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from utils.errors import UserError

# Set by reproduce.py in the environment of the stages it runs (the grid's --out).
GRID_ENVIRONMENT = "REPRODUCE_GRID_OUT"


class RunLock:
    """Refuses a second run writing the same files while the first is alive.

    The lock file holds the owner's host and pid; a lock left by a dead process on this host
    is taken over, so a killed run never blocks its own resume.
    """

    @property
    def separate_run(self) -> str:
        """How the refusal says to avoid the clash: a stage run by a grid has no --id of its own."""
        return (
            "pass another --out for a separate grid"
            if GRID_ENVIRONMENT in os.environ
            else "use --id for a separate run"
        )

    def __init__(self, path: Path):
        self.path = path
        self.owner = f"{socket.gethostname()} {os.getpid()}"

    def holder(self) -> str | None:
        """'<host> <pid>' of the live process holding the lock, or None when it is free or stale."""
        try:
            owner = self.path.read_text().strip()
        except OSError:
            return None
        return owner if self._owner_alive() else None

    def _owner_alive(self) -> bool:
        try:
            host, pid = self.path.read_text().split()
        except (OSError, ValueError):
            return False  # unreadable or half-written: not a live run's lock
        if host != socket.gethostname():
            return True  # cannot check a process on another machine: assume it runs
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._owner_alive():
                    raise UserError(
                        f"another run ({self.path.read_text().strip()}) is writing "
                        f"{self.path.parent}/{self.path.name[1:-5]}: wait for it to end, "
                        f"or {self.separate_run} (delete {self.path} if no run "
                        "is active)"
                    ) from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(self.owner)
            return self
        raise UserError(f"could not take the lock {self.path}: delete it if no run is active")

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)
