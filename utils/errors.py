"""The one exception type a user sees as a message instead of a traceback."""


class UserError(Exception):
    """A problem the user can fix (bad flag, missing file, wrong checkpoint).

    The stage scripts print its message as one line on stderr and exit with status 2 (or the
    error's `exit_status`).
    """


class StopRequested(UserError):
    """A stop the user asked for (Ctrl-C, SIGTERM), reported as a stop: one line without
    `error:`, with the exit status of a death by that signal."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_status = 128 + signum  # the shell's convention for a death by signal
