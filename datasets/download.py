"""Downloading, checksum verification and safe extraction of data-set archives.

Standard library only (urllib, hashlib, tarfile, zipfile) plus tqdm for the progress
bar. A download goes to a temporary file next to its destination and is renamed into
place only after its md5 checksum has passed, so an interrupted or corrupted download
never leaves a file that looks complete. Extraction (tar or zip) refuses archive members
that would land outside the destination folder (absolute paths, `..`), links and
device files.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import socket
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath

from tqdm import tqdm

from datasets.base import DatasetError

__all__ = [
    "DownloadError",
    "UnsafeArchiveError",
    "md5sum",
    "check_md5",
    "download_file",
    "safe_extract_tar",
    "safe_extract_zip",
    "safe_extract",
    "fetch_and_extract",
    "ensure_folder",
    "folder_path",
    "DEFAULT_TIMEOUT",
]

#: Seconds to wait for the server to connect / send the next block; an offline machine fails fast.
DEFAULT_TIMEOUT = 30.0
_CHUNK = 1 << 20
_USER_AGENT = "relational-reasoning-reimpl/1.0 (python urllib)"


class DownloadError(DatasetError):
    """A download failed (network error, HTTP error, truncated transfer, wrong checksum)."""


class UnsafeArchiveError(DatasetError):
    """An archive holds a member that must not be extracted (path escape, link, device)."""


def md5sum(path: str | os.PathLike, chunk_size: int = _CHUNK) -> str:
    """Hex md5 digest of a file, read in chunks."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def check_md5(path: str | os.PathLike, expected: str) -> None:
    """Raise `DownloadError` unless the md5 of `path` equals `expected`."""
    actual = md5sum(path)
    if actual.lower() != expected.lower():
        raise DownloadError(
            f"{path}: md5 checksum mismatch (got {actual}, expected {expected}); "
            "the file is corrupt or not the official one"
        )


def _reason(exc: BaseException) -> str:
    """A short one-line description of why a network operation failed."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, BaseException):
            return _reason(reason)
        return str(reason)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def download_file(
    url: str,
    dest: str | os.PathLike,
    md5: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
) -> Path:
    """Download `url` to `dest` (a file path) and return `dest`.

    The data go to a temporary `<dest>.*.part` file in the same folder; when `md5`
    is given it is checked before the file is renamed to `dest`. On any failure the
    temporary file is removed and `DownloadError` is raised with a one-line reason.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    length = response.headers.get("Content-Length") if response.headers else None
                    total = int(length) if length and length.isdigit() else None
                    received = 0
                    with tqdm(
                        total=total,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=dest.name,
                        disable=not progress,
                        leave=False,
                    ) as bar:
                        while True:
                            block = response.read(_CHUNK)
                            if not block:
                                break
                            out.write(block)
                            received += len(block)
                            bar.update(len(block))
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                raise DownloadError(f"downloading {url} failed: {_reason(exc)}") from exc
        if total is not None and received != total:
            raise DownloadError(f"downloading {url} failed: got {received} of {total} bytes (connection dropped)")
        if md5 is not None:
            try:
                check_md5(tmp, md5)
            except DownloadError as exc:
                raise DownloadError(f"downloading {url} failed: {exc}") from exc
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _check_member(name: str, regular: bool, dest_real: Path, archive: Path) -> None:
    """Refuse member `name` unless it is a plain file or folder that stays inside `dest_real`."""
    posix = PurePosixPath(name)
    bad = None
    if not name or posix.is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        bad = "has an absolute path"
    elif ".." in posix.parts or ".." in PureWindowsPath(name).parts:
        bad = "escapes the destination folder"
    elif not regular:
        bad = "is a link or special file"
    else:
        target = (dest_real / name).resolve()
        if target != dest_real and dest_real not in target.parents:
            bad = "escapes the destination folder"
    if bad:
        raise UnsafeArchiveError(
            f"{archive}: refusing to extract member {name!r}, which {bad}; "
            "the archive is not the official one, delete it and download it again"
        )


def _extract(archive: Path, dest: Path, extract_all) -> list[str]:
    """Run `extract_all(dest_real) -> member names` and map a damaged archive to DatasetError."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        names = extract_all(dest.resolve())
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(
            f"{archive}: cannot extract ({_reason(exc)}); "
            "the archive is truncated or corrupt, delete it and download it again"
        ) from exc
    return sorted({PurePosixPath(n).parts[0] for n in names if PurePosixPath(n).parts})


def safe_extract_tar(archive: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
    """Extract a (possibly compressed) tar archive into `dest`; return its top-level names.

    Every member is checked before anything is written: absolute paths, `..`
    components, paths resolving outside `dest`, links and device files raise
    `UnsafeArchiveError`. A corrupt archive raises `DatasetError`.
    """
    archive = Path(archive)

    def extract_all(dest_real: Path) -> list[str]:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member.name, member.isfile() or member.isdir(), dest_real, archive)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest_real, members=members, filter="data")
            else:
                tar.extractall(dest_real, members=members)
        return [m.name for m in members]

    return _extract(archive, Path(dest), extract_all)


def safe_extract_zip(archive: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
    """Extract a zip archive into `dest` with the checks of `safe_extract_tar`.

    A member's type comes from the Unix mode in its external attributes; archives made
    on Windows have none (0) and hold only plain files and folders.
    """
    archive = Path(archive)

    def extract_all(dest_real: Path) -> list[str]:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in members:
                mode = info.external_attr >> 16
                regular = mode == 0 or stat.S_ISREG(mode) or stat.S_ISDIR(mode)
                _check_member(info.filename, regular, dest_real, archive)
            zf.extractall(dest_real, members=members)
        return [info.filename for info in members]

    return _extract(archive, Path(dest), extract_all)


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
    """`safe_extract_zip` for a `.zip` file, else `safe_extract_tar`."""
    if Path(archive).suffix.lower() == ".zip":
        return safe_extract_zip(archive, dest)
    return safe_extract_tar(archive, dest)


def fetch_and_extract(
    url: str,
    md5: str,
    root: str | os.PathLike,
    folder: str,
    download: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Make `<root>/<folder>` exist by extracting the archive (tar or zip) at `url` into `root`.

    The archive is kept as `<root>/<basename of url>`. If it is already there with the
    right checksum it is used without touching the network (even when `download` is
    False); otherwise it is downloaded when `download` is True. Extraction happens in a
    temporary folder inside `root`, and `folder` is moved into place only when
    complete. Raises `DownloadError` (network / checksum) or `DatasetError`.
    """
    root = Path(root)
    archive = root / PurePosixPath(url.split("?", 1)[0]).name
    have_archive = archive.is_file() and md5sum(archive) == md5.lower()
    if not have_archive:
        if not download:
            raise DownloadError("download is disabled")
        root.mkdir(parents=True, exist_ok=True)
        download_file(url, archive, md5=md5, timeout=timeout)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        safe_extract(archive, staging)
        extracted = staging / folder
        if not extracted.is_dir():
            raise DatasetError(f"{archive}: the archive has no folder {folder!r}; delete it and download it again")
        target = root / folder
        if not target.exists():  # another process may have finished first
            os.replace(extracted, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root / folder


def folder_path(root: str | os.PathLike, folder: str) -> str:
    # os.path.join keeps the user's spelling (e.g. "./data") for messages.
    return os.path.join(os.fspath(root), folder)


def ensure_folder(
    root: str | os.PathLike, folder: str, title: str, expected: str, url: str, md5: str, download: bool
) -> Path:
    """Return `<root>/<folder>`; download and extract the archive first if the folder is missing."""
    path = Path(folder_path(root, folder))
    if path.is_dir():
        return path
    shown = folder_path(root, folder)
    archive = url.rsplit("/", 1)[-1]
    fix = f"download {archive} from {url} and extract it into {os.fspath(root)}"
    try:
        fetch_and_extract(url, md5, root, folder, download=download)
    except DownloadError as exc:
        if not download:
            raise DatasetError(
                f"{title} not found in {shown} (expected {expected}) and download is disabled: {fix}"
            ) from None
        raise DatasetError(
            f"{title} not found in {shown} (expected {expected}) and the download failed ({exc}): {fix}"
        ) from exc
    except (DatasetError, OSError) as exc:
        raise DatasetError(
            f"{title} not found in {shown} (expected {expected}) and installing it failed ({exc}): {fix}"
        ) from exc
    return path
