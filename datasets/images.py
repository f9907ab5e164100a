"""Decoding image files into one uint8 tensor, and caching decoded tensors next to the data.

* `decode_images` opens every file with PIL in a thread pool (PIL releases the GIL
  while decoding), converts it to RGB (grayscale is repeated, an alpha channel is
  dropped; 16-bit and float pixels are scaled from their range, see `_rgb`) and
  optionally resizes it to a square side.
* `cached` keeps the result of an expensive `build()` (e.g. decoding 100K files)
  in a `torch.save` file and returns it without rebuilding while the source files are
  unchanged. Unchanged means the same absolute paths, sizes and modification times
  (reading every file's content on each load would cost as much as decoding it) and the
  same `key` (e.g. the resize side). Each stored tensor carries a CRC32 of its bytes,
  and the caller says what the content must be (count, shape, dtype, range), so a damaged
  or forged cache is rebuilt instead of silently used.
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

from datasets.base import DatasetError

__all__ = ["decode_images", "cached", "decoded_images_problem"]

_CACHE_VERSION = 1


def _rgb(img: Image.Image, path: Path) -> Image.Image:
    """`img` in 8-bit RGB. PIL's own conversion clips 16-bit and float pixels to 0..255 (a
    16-bit photo becomes black and white); they are scaled from their real range instead:
    16-bit (and 32-bit integer) values from 0..65535, floats from [0, 1]; other values are
    refused, naming the file."""
    if img.mode not in ("I", "F") and not img.mode.startswith("I;16"):
        return img.convert("RGB")
    values = np.asarray(img, dtype=np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    top = 1.0 if img.mode == "F" else 65535.0
    if not (np.isfinite(low) and np.isfinite(high) and 0 <= low and high <= top):
        kind = "floating-point" if img.mode == "F" else "integer"
        raise DatasetError(
            f"{path}: {kind} pixels from {low:g} to {high:g}, outside 0..{top:g}, have no known "
            "brightness: save the image with 8 or 16 bits per channel"
        )
    return Image.fromarray(np.rint(values * (255 / top)).astype(np.uint8), "L").convert("RGB")


def _open_rgb(path: Path, size: int | None) -> np.ndarray:
    """One image as a uint8 (3, H, W) array; resized to (3, size, size) when `size` is given."""
    try:
        with Image.open(path) as img:
            img = _rgb(img, path)  # forces the full decode, so truncated files fail here
    except DatasetError:
        raise
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, ...) for bad files
        raise DatasetError(
            f"{path}: cannot decode the image ({type(exc).__name__}: {exc}); replace or delete the file"
        ) from exc
    if size is not None and img.size != (size, size):
        # Shorter side to `size`, then the centre square (torchvision's Resize + CenterCrop).
        w, h = img.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img).transpose(2, 0, 1)


def decode_images(
    paths: Sequence[str | os.PathLike], size: int | None, size_fix: str, workers: int | None = None
) -> torch.Tensor:
    """Decode `paths` (in order) into a uint8 tensor (N, 3, S, S).

    With `size` every image is resized (shorter side to `size`, bicubic, then centre
    crop) to `size` x `size`; without it (None or 0) all images must already be square
    and of one size. A file that cannot be decoded, or that has the wrong size, raises
    `DatasetError` naming it and, for the size, `size_fix` (the data set's remedy).
    `workers` threads (default: up to 8, one per CPU).
    """
    files = [Path(p) for p in paths]
    if not files:
        raise ValueError("decode_images: no image paths given")
    size = size or None
    workers = workers or min(8, os.cpu_count() or 1)
    first = _open_rgb(files[0], size)
    side = first.shape[1]
    if first.shape[1] != first.shape[2]:
        raise DatasetError(f"{files[0]}: the image is {first.shape[2]}x{first.shape[1]}, not square; {size_fix}")
    out = np.empty((len(files), 3, side, side), dtype=np.uint8)
    out[0] = first

    def put(i: int) -> None:
        img = _open_rgb(files[i], size)
        if img.shape[1:] != (side, side):
            raise DatasetError(
                f"{files[i]}: the image is {img.shape[2]}x{img.shape[1]} but {files[0]} is {side}x{side}; "
                f"all images must share one square size: {size_fix}"
            )
        out[i] = img

    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for _ in pool.map(put, range(1, len(files))):  # consuming the results re-raises the first error
            pass
    finally:
        pool.shutdown(cancel_futures=True)  # after an error, do not decode the rest
    return torch.from_numpy(out)


def _fingerprint(sources: Sequence[Path], key: str) -> str:
    h = hashlib.sha256(f"v{_CACHE_VERSION}\0{key}\0".encode())
    for path in sources:
        st = os.stat(path)
        h.update(os.fsencode(os.path.abspath(path)) + f"\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


def _crc(t: torch.Tensor) -> int:
    return zlib.crc32(t.contiguous().reshape(-1).view(torch.uint8).numpy().data)  # bytes as stored; 0 when empty


def _read(path: Path, fingerprint: str) -> dict[str, torch.Tensor] | None:
    """The tensors stored at `path` if it is an intact cache for `fingerprint`, else None."""
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if stored["fingerprint"] != fingerprint:
            return None
        tensors = stored["tensors"]
        if not isinstance(tensors, dict) or any(
            not isinstance(t, torch.Tensor) or _crc(t) != stored["crc"][name] for name, t in tensors.items()
        ):
            return None
        return tensors
    except Exception:  # missing, truncated, or not a cache of this version: rebuild
        return None


def decoded_images_problem(tensors: dict, paths: Sequence[str | os.PathLike], size: int | None) -> str | None:
    """What is wrong with `tensors["images"]` as the decoding of `paths` (at `size`), or None.

    Checked without decoding anything: uint8 (N, 3, S, S), N the number of files, S the size
    asked for. (Pixels are only checked by the CRCs: a cache forged with CRCs of its own
    passes; a loaded cache decodes no file.)"""
    images = tensors.get("images")
    if (
        not isinstance(images, torch.Tensor)
        or images.dtype != torch.uint8
        or images.dim() != 4
        or images.shape[1] != 3
        or images.shape[2] != images.shape[3]
    ):
        return f"it holds {_described(images)}, not uint8 images of shape (N, 3, S, S)"
    if len(images) != len(paths):
        return f"it holds {len(images)} images for {len(paths)} files"
    if size and images.shape[2] != size:
        return f"its images are {images.shape[2]} px, not {size}"
    return None


def _described(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def cached(
    path: str | os.PathLike,
    sources: Sequence[str | os.PathLike],
    build: Callable[[], dict[str, torch.Tensor]],
    key: str = "",
    problem: Callable[[dict[str, torch.Tensor]], str | None] = lambda tensors: None,
) -> dict[str, torch.Tensor]:
    """`build()`'s dict of CPU tensors, read from the cache file `path` when it is up to date.

    The cache is up to date when `sources` (same order, sizes and modification times)
    and `key` are those it was built from, its tensors pass their CRC check, and their
    content is what those sources promise: `problem(tensors)` (count, shape, dtype, range,
    sample contents) says what is wrong, or None. Otherwise `build()` runs and the cache
    is rewritten atomically; a cache whose content is wrong is named in one warning line. A
    cache that cannot be written (read-only data folder) only costs a `[WARNING]` line.
    """
    path = Path(path)
    fingerprint = _fingerprint([Path(s) for s in sources], key)
    tensors = _read(path, fingerprint)
    if tensors is not None:
        wrong = problem(tensors)
        if wrong is None:
            return tensors
        print(
            f"[WARNING] the cache {path} does not match its files ({wrong}): rebuilding it", file=sys.stderr, flush=True
        )
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
        print(
            f"[WARNING] cannot write the cache {path} ({exc}); the data will be decoded again next time",
            file=sys.stderr,
            flush=True,
        )
    return tensors
