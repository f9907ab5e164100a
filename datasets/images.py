"""Decoding image files into one uint8 tensor, and caching decoded tensors next to the data.

* :func:`decode_images` opens every file with PIL in a thread pool (PIL releases the GIL
  while decoding), converts it to RGB (grayscale is repeated, an alpha channel is
  dropped) and optionally resizes it to a square side.
* :func:`cached` keeps the result of an expensive ``build()`` (e.g. decoding 100K files)
  in a ``torch.save`` file and returns it without rebuilding while the source files are
  unchanged. Unchanged means the same absolute paths, sizes and modification times
  (reading every file's content on each load would cost as much as decoding it) and the
  same ``key`` (e.g. the resize side). Each stored tensor carries a CRC32 of its bytes,
  so a damaged cache is rebuilt instead of silently used.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from .base import DatasetError

__all__ = ["decode_images", "cached"]

_CACHE_VERSION = 1


def _open_rgb(path: Path, size: int | None) -> np.ndarray:
    """One image as a uint8 (3, H, W) array; resized to (3, size, size) when ``size`` is given."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")  # forces the full decode, so truncated files fail here
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, ...) for bad files
        raise DatasetError(f"{path}: cannot decode the image ({type(exc).__name__}: {exc}); replace or delete the file") from exc
    if size is not None and img.size != (size, size):
        # Shorter side to `size`, then the centre square (torchvision's Resize + CenterCrop).
        w, h = img.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img).transpose(2, 0, 1)


def decode_images(paths: Sequence[str | os.PathLike], size: int | None = None, workers: int | None = None) -> torch.Tensor:
    """Decode ``paths`` (in order) into a uint8 tensor (N, 3, S, S).

    With ``size`` every image is resized (shorter side to ``size``, bicubic, then centre
    crop) to ``size`` x ``size``; without it (None or 0) all images must already be square
    and of one size. A file that cannot be decoded, or that has the wrong size, raises
    :class:`DatasetError` naming it. ``workers`` threads (default: up to 8, one per CPU).
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("decode_images: no image paths given")
    size = size or None
    workers = workers or min(8, os.cpu_count() or 1)
    first = _open_rgb(paths[0], size)
    side = first.shape[1]
    if first.shape[1] != first.shape[2]:
        raise DatasetError(f"{paths[0]}: the image is {first.shape[2]}x{first.shape[1]}, not square; give a size to resize to (--image_size)")
    out = np.empty((len(paths), 3, side, side), dtype=np.uint8)
    out[0] = first

    def put(i: int) -> None:
        img = _open_rgb(paths[i], size)
        if img.shape[1:] != (side, side):
            raise DatasetError(
                f"{paths[i]}: the image is {img.shape[2]}x{img.shape[1]} but {paths[0]} is {side}x{side}; "
                "all images must share one square size unless a size to resize to is given (--image_size)"
            )
        out[i] = img

    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for _ in pool.map(put, range(1, len(paths))):  # consuming the results re-raises the first error
            pass
    finally:
        pool.shutdown(cancel_futures=True)  # after an error, do not decode the rest
    return torch.from_numpy(out)


def _fingerprint(sources: Sequence[Path], key: str) -> str:
    h = hashlib.sha256(f"v{_CACHE_VERSION}\0{key}\0".encode())
    for path in sources:
        st = os.stat(path)
        h.update(f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


def _crc(t: torch.Tensor) -> int:
    return zlib.crc32(memoryview(t.contiguous().numpy()).cast("B"))


def _read(path: Path, fingerprint: str) -> dict[str, torch.Tensor] | None:
    """The tensors stored at ``path`` if it is an intact cache for ``fingerprint``, else None."""
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if stored["fingerprint"] != fingerprint:
            return None
        tensors = stored["tensors"]
        if any(_crc(t) != stored["crc"][name] for name, t in tensors.items()):
            return None
        return tensors
    except Exception:  # missing, truncated, or not a cache of this version: rebuild
        return None


def cached(
    path: str | os.PathLike,
    sources: Sequence[str | os.PathLike],
    build: Callable[[], dict[str, torch.Tensor]],
    key: str = "",
) -> dict[str, torch.Tensor]:
    """``build()``'s dict of CPU tensors, read from the cache file ``path`` when it is up to date.

    The cache is up to date when ``sources`` (same order, sizes and modification times)
    and ``key`` are those it was built from and its tensors pass their CRC check;
    otherwise ``build()`` runs and the cache is rewritten atomically. A cache that
    cannot be written (read-only data folder) only costs a ``[WARNING]`` line.
    """
    path = Path(path)
    fingerprint = _fingerprint([Path(s) for s in sources], key)
    tensors = _read(path, fingerprint)
    if tensors is not None:
        return tensors
    tensors = {name: t.cpu().contiguous() for name, t in build().items()}
    stored = {"fingerprint": fingerprint, "tensors": tensors, "crc": {name: _crc(t) for name, t in tensors.items()}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(stored, f)
            os.replace(tmp, path)  # readers never see a half-written cache
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        print(f"[WARNING] cannot write the cache {path} ({exc}); the data will be decoded again next time",
              file=sys.stderr, flush=True)
    return tensors
