"""Probability tables in about two bits per entry: 8-bit log-domain codes, xz-compressed (the zoo's pc models).

A probability p > 0 becomes the nearest (in log2) of 255 levels spaced evenly between 2^-20 and 1: steps of
0.079 bits, at most 2.8% relative error, which moved neither the ideal nor the real bits/dim of the MNIST model
in the 5th decimal (docs/PC.md, "Files"). An exact zero (a mixture's edges between components) keeps code 0 =
0.0. The file carries the 256-entry codebook itself as float32, so loading is a table lookup: no exp or log sits
between the file and the coder's integer tables, and decoding stays bit-exact on any machine.

The codes of one leaf row follow the pixel value and change slowly along it (training smooths the leaves over
neighbouring values), so xz's delta filter before LZMA2 stores them in ~2.4 bits each; the standard library
decodes them. Unpacking is bounded: the decompressor's memory is capped and it may return no more bytes than the
table's known shape holds.
"""
from __future__ import annotations

import lzma

import numpy as np

from codec.errors import UserError

LOG2_FLOOR = -20.0                   # the smallest nonzero level, 2^-20
LEVELS = 255                         # nonzero levels: codes 1..255; code 0 is exactly 0
MEMLIMIT = 256 << 20                 # xz decoder memory (preset 9 needs ~65 MiB)
FILTERS = [{"id": lzma.FILTER_DELTA, "dist": 1},
           {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]


def codebook() -> np.ndarray:
    """[256] float32: code 0 -> 0.0, code i >= 1 -> 2^(LOG2_FLOOR * (1 - (i - 1) / (LEVELS - 1)))."""
    steps = np.arange(LEVELS, dtype=np.float64) / (LEVELS - 1)
    return np.concatenate([[0.0], np.exp2(LOG2_FLOOR * (1.0 - steps))]).astype(np.float32)


def codes(p: np.ndarray) -> np.ndarray:
    """Probabilities (any shape, values in [0, 1]) -> uint8 codes of `codebook()`."""
    p = np.asarray(p, dtype=np.float64)
    level = np.log2(np.maximum(p, 2.0 ** LOG2_FLOOR)) / -LOG2_FLOOR + 1.0            # 0 at the floor, 1 at p = 1
    c = 1 + np.clip(np.rint(level * (LEVELS - 1)), 0, LEVELS - 1)
    return np.where(p > 0, c, 0).astype(np.uint8)


def pack(p: np.ndarray) -> bytes:
    """A table's codes (C order) as one xz stream."""
    return lzma.compress(np.ascontiguousarray(codes(p)).tobytes(), format=lzma.FORMAT_XZ, filters=FILTERS)


def unpack(blob: bytes, table: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    """The float32 table of `shape` from its xz stream and codebook; a malformed stream is a one-line UserError."""
    size = int(np.prod(shape))
    table = np.asarray(table)
    if table.shape != (256,) or table.dtype != np.float32 or not np.all(np.isfinite(table)) \
            or table.min() < 0 or table.max() > 1:
        raise UserError(f"{what}: the codebook is not 256 probabilities")
    d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=MEMLIMIT)
    try:
        raw = d.decompress(bytes(blob), max_length=size)
    except lzma.LZMAError as e:
        raise UserError(f"{what}: the packed table does not decompress ({e})") from None
    if len(raw) != size or not d.eof or d.unused_data:
        raise UserError(f"{what}: the packed table holds {'more' if len(raw) == size else 'fewer'} than the "
                        f"{size} entries of its shape {shape}")
    return table[np.frombuffer(raw, dtype=np.uint8)].reshape(shape)
