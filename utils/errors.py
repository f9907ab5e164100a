"""The one exception type a user sees as a message instead of a traceback."""


class UserError(Exception):
    """A problem the user can fix (bad flag, missing file, wrong checkpoint).

    The stage scripts print its message as one line on stderr and exit with status 2 (or the
    error's `exit_status`).
    """
