"""Atomic writes of the suite's files: a crash, a kill or a full disk mid-write leaves the
previous file whole, and the text files are UTF-8.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import TypedDict


class TextEncoding(TypedDict):
    """The keyword arguments of `open` and `str.encode` that set a text file's encoding."""

    encoding: str
    errors: str


# The text files this suite writes are UTF-8. A path may hold bytes that are not UTF-8, which
# Python holds as lone surrogates (os.fsdecode); they are written as backslash escapes
# (`\udcff` for byte 0xff), so a file naming such a path is written whole and stays UTF-8 text.
TEXT_ENCODING: TextEncoding = {"encoding": "utf-8", "errors": "backslashreplace"}


def encode_text(text: str) -> bytes:
    """`text` as the bytes of a text file of this suite (see TEXT_ENCODING)."""
    return text.encode(**TEXT_ENCODING)


# The longest file name, in bytes, that the usual file systems (ext4, XFS, Btrfs, APFS) accept.
MAX_NAME_BYTES = 255


def temporary_path(path: Path) -> Path:
    """A fresh name for `atomic_write_bytes`' temporary file of `path`: `.<name>.<random>.tmp`."""
    return path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename over the target.

    A crash or a full disk mid-write leaves the previous file untouched. The temporary file is
    created with the mode a plain `open` gives (0o666 less the umask), not mkstemp's 0o600, so
    colleagues on shared storage read results as they read any other file. Its name,
    `.<name>.<random>.tmp`, lets the next run of the same files remove it
    (`RunFiles.remove_temporary`) when a killed process left it behind. An error names `path`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = temporary_path(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
        except OSError as error:
            error.filename = str(path)
            raise
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _sync_folder(path.parent)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError):  # a failed write() names no file; the user needs the target's name
            error.filename, error.filename2 = str(path), None
        raise


def _sync_folder(folder: Path) -> None:
    """Make a rename durable before the next file is written, so that files written one after
    the other reach the disk in that order also on a power loss (the epoch commit relies on it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without folder handles (Windows): renames are ordered there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename itself is done
    finally:
        os.close(fd)


def save_json(data: dict, path: Path) -> None:
    atomic_write_bytes(path, encode_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"))
