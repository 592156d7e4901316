"""Image sets in and out: a folder of PNGs, one PNG, an .npy array (N x H x W or N x H x W x C, uint8), MNIST IDX
files (gzipped or not), or such an array in memory. Every reader returns uint8 [N, H, W, C]; every writer is atomic."""
from __future__ import annotations

import gzip
import io
import os
from dataclasses import dataclass

import numpy as np

from bitstream.atomic import PNGS, atomic_output, write_atomic
from codec.errors import UserError

MAX_IMAGES = 10**7
MAX_BYTES = 2**33                       # 8 GiB of pixels: a sanity bound on IDX headers and gunzip output
_MODES = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}
_MODE_OF = {c: m for m, c in _MODES.items()}


@dataclass
class ImageSet:
    pixels: np.ndarray            # [N, H, W, C] uint8
    names: list[str] | None       # file names when read from PNGs (restored when decoding to a folder)
    squeeze: bool                 # the input was N x H x W: write .npy outputs back that way

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.pixels.shape[1:])


def _read_png(path: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode not in _MODES:
                raise UserError(f"{path}: PNG mode {im.mode} is not supported (8-bit L, LA, RGB or RGBA only)")
            a = np.asarray(im)
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{path}: not a readable image ({' '.join(str(e).split())[:100]})") from None
    return a.reshape(a.shape[0], a.shape[1], -1)


def _read_idx(path: str, raw: bytes) -> np.ndarray:
    if raw[:2] == b"\x1f\x8b":
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as g:
                raw = g.read(MAX_BYTES + 1)
        except (OSError, EOFError) as e:
            raise UserError(f"{path}: damaged gzip data ({e})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise UserError(f"{path}: not an .npy array, PNG or IDX file")
    if raw[2] != 0x08:
        raise UserError(f"{path}: IDX data type 0x{raw[2]:02x} is not unsigned bytes")
    ndim = raw[3]
    if ndim not in (3, 4) or len(raw) < 4 + 4 * ndim:
        raise UserError(f"{path}: IDX images need 3 or 4 dimensions (N x H x W [x C]), found {ndim}")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    count = int(np.prod(dims, dtype=np.int64))
    body = raw[4 + 4 * ndim:]
    if len(body) != count:
        raise UserError(f"{path}: IDX header claims {'x'.join(map(str, dims))} = {count} bytes, "
                        f"the file has {len(body)}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _read_one(path: str) -> tuple[np.ndarray, list[str] | None, bool]:
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.lower().endswith(".png"))
        if not files:
            raise UserError(f"{path}: folder holds no .png files")
        arrays = [_read_png(os.path.join(path, f)) for f in files]
        if len({a.shape for a in arrays}) != 1:
            raise UserError(f"{path}: the PNGs differ in size or channels ({arrays[0].shape} vs others)")
        return np.stack(arrays), files, arrays[0].shape[2] == 1
    if not os.path.isfile(path):
        raise UserError(f"input {path} does not exist")
    if os.path.getsize(path) > MAX_BYTES:
        raise UserError(f"{path}: larger than 8 GiB")
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:6] == b"\x93NUMPY":
        try:
            a = np.load(io.BytesIO(raw), allow_pickle=False)
        except ValueError as e:
            raise UserError(f"{path}: unreadable .npy ({' '.join(str(e).split())[:100]})") from None
        _check_array(a, path)
        return (a[..., None] if a.ndim == 3 else a), None, a.ndim == 3
    if raw[:8] == b"\x89PNG\r\n\x1a\n":
        return _read_png(path)[None], [os.path.basename(path)], True
    a = _read_idx(path, raw)
    return (a[..., None] if a.ndim == 3 else a), None, a.ndim == 3


def _check_array(a: np.ndarray, what: str) -> None:
    if a.dtype != np.uint8 or a.ndim not in (3, 4):
        raise UserError(f"{what}: expected a uint8 array N x H x W (or N x H x W x C), "
                        f"found {a.dtype} of shape {a.shape}")


def images_from_array(a: np.ndarray) -> ImageSet:
    """A uint8 array [N, H, W] or [N, H, W, C] as an ImageSet (no names; N x H x W comes back squeezed)."""
    _check_array(a, "images")
    if not 1 <= len(a) <= MAX_IMAGES:
        raise UserError(f"{len(a)} images: expected 1 to {MAX_IMAGES}")
    return ImageSet(np.ascontiguousarray(a[..., None] if a.ndim == 3 else a), None, a.ndim == 3)


def read_images(paths: list[str] | str) -> ImageSet:
    """Read and concatenate every input (all must share H x W x C)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise UserError("no image input given")
    parts = [_read_one(str(p)) for p in paths]
    shapes = {a.shape[1:] for a, _, _ in parts}
    if len(shapes) != 1:
        raise UserError(f"inputs differ in image shape: {sorted(shapes)}")
    pixels = np.ascontiguousarray(np.concatenate([a for a, _, _ in parts]))
    if len(pixels) == 0 or len(pixels) > MAX_IMAGES:
        raise UserError(f"{len(pixels)} images: expected 1 to {MAX_IMAGES}")
    names = None
    if all(n is not None for _, n, _ in parts):
        names = [n for _, ns, _ in parts for n in ns]
        if len(set(names)) != len(names):
            names = None                     # duplicate names across folders: fall back to numbering
    return ImageSet(pixels, names, all(s for _, _, s in parts))


def write_images(path: str, pixels: np.ndarray, names: list[str] | None = None, squeeze: bool = True,
                 overwrite: bool = True) -> str:
    """Write [N, H, W, C] uint8 to `path`: an .npy file (N x H x W when squeeze and C == 1) or a folder of PNGs.
    `overwrite`: replace an existing file, or a folder of .png files only (bitstream.atomic's rule).
    Returns what was written ("npy" or "png")."""
    from PIL import Image

    if str(path).lower().endswith(".npy"):
        a = pixels[..., 0] if squeeze and pixels.shape[3] == 1 else pixels
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
        write_atomic(path, buf.getvalue(), overwrite=overwrite)
        return "npy"
    if names is None or len(names) != len(pixels):
        width = max(5, len(str(len(pixels) - 1)))
        names = [f"{i:0{width}d}.png" for i in range(len(pixels))]
    if pixels.shape[3] not in _MODE_OF:
        raise UserError(f"{pixels.shape[3]}-channel images cannot be PNGs: decode to an .npy file")
    with atomic_output(path, directory=True, overwrite=overwrite, owned=PNGS) as tmp:
        for a, name in zip(pixels, names):
            img = a[..., 0] if a.shape[2] == 1 else a
            Image.fromarray(np.ascontiguousarray(img)).save(os.path.join(tmp, name), compress_level=1)
    return "png"
