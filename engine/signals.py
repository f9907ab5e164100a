"""Stopping on SIGINT/SIGTERM at the end of a training step, and the error that reports it."""

from __future__ import annotations

import signal
import threading
import time

from utils.console import say
from utils.errors import StopRequested


class RunInterrupted(StopRequested):
    """Training stopped on a signal after saving a resumable checkpoint."""


class StopSignals:
    """Within the block, SIGINT and SIGTERM only set `received`; the loop stops at a step end.

    A repeat of the same signal within `echo_seconds` is the same request: under torchrun a
    Ctrl-C reaches every rank twice, from the terminal and forwarded by torchrun.
    """

    def __init__(self, echo_seconds: float = 0.0):
        self.received = 0
        self.received_at = 0.0
        self.echo_seconds = echo_seconds
        self.previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def handle(self, signum, frame) -> None:
        if self.received:  # a second signal: the user insists, stop at once
            if signum == self.received and time.monotonic() - self.received_at < self.echo_seconds:
                return
            raise KeyboardInterrupt
        self.received, self.received_at = signum, time.monotonic()
        say(
            f"\n[INFO] {signal.Signals(signum).name} received: stopping after the current step "
            "(send it again to stop at once, without saving)",
            flush=True,
        )

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
