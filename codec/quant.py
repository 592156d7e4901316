"""Uniform scalar quantisation of tensors (per tensor or per channel), its training relaxations, and tensor <-> bytes.

Symmetric: zero is symbol 0, symbols in [-(2^(b-1) - 1), 2^(b-1) - 1], scale = max|x| / (2^(b-1) - 1).
Affine: symbols in [0, 2^b - 1], offset = min (the value of symbol 0), scale = (max - min) / (2^b - 1).
A channel whose scale would be 0 (constant, or all zero) gets scale 1, so nothing divides by zero.
Scale and offset are float32, and dequantisation is float32 numpy arithmetic on the CPU, so every device and every
input precision sees the same reconstruction.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np
import torch

from bitstream.coder import Categorical, QuantizedGaussian, QuantizedLaplace, RangeDecoder, RangeEncoder
from bitstream.errors import BitstreamError
from bitstream.serial import ByteReader, ByteWriter
from codec.errors import UserError

MIN_BITS, MAX_BITS = 2, 16
_FORMAT = 1
_F32_MAX = float(np.finfo(np.float32).max)
_DEFAULT_MAX_ELEMENTS = 1 << 28
# entropy model of the symbols, recorded in one byte
_MODEL_NONE, _MODEL_CATEGORICAL, _MODEL_LAPLACE, _MODEL_GAUSSIAN = 0, 1, 2, 3
_MODEL_NAMES = {_MODEL_NONE: "none", _MODEL_CATEGORICAL: "categorical", _MODEL_LAPLACE: "laplace",
                _MODEL_GAUSSIAN: "gaussian"}
_PARAMETRIC = {_MODEL_LAPLACE: QuantizedLaplace, _MODEL_GAUSSIAN: QuantizedGaussian}


def symbol_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """Smallest and largest symbol of a b-bit quantiser."""
    if symmetric:
        q = (1 << (bits - 1)) - 1
        return -q, q
    return 0, (1 << bits) - 1


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not MIN_BITS <= bits <= MAX_BITS:
        raise UserError(f"quantisation bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    return int(bits)


def _check_axis(axis, ndim: int) -> int | None:
    if axis is None:
        return None
    if not -ndim <= axis < ndim:
        raise UserError(f"quantisation axis {axis} does not exist in a {ndim}-D tensor")
    return axis % ndim


def _channel_shape(ndim: int, axis: int | None, c: int) -> tuple[int, ...]:
    """Shape that broadcasts per-channel parameters along `axis`."""
    if axis is None:
        return ()
    shape = [1] * ndim
    shape[axis] = c
    return tuple(shape)


@dataclass
class QuantizedTensor:
    """A quantised tensor: x ~ offset + scale * symbol, parameters per tensor (axis None) or per channel."""

    symbols: np.ndarray      # int32, same shape as the tensor
    scale: np.ndarray        # float32, shape () or (C,) along `axis`
    offset: np.ndarray       # float32, same shape as scale (the value of symbol 0)
    bits: int
    axis: int | None
    symmetric: bool

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.symbols.shape)

    def dequantize(self, device="cpu", dtype=torch.float32) -> torch.Tensor:
        """offset + scale * symbol in float32 numpy on the CPU, then moved: identical on any device."""
        shape = _channel_shape(self.symbols.ndim, self.axis, self.scale.size)
        scale = np.asarray(self.scale, np.float32).reshape(shape)
        offset = np.asarray(self.offset, np.float32).reshape(shape)
        x = self.symbols.astype(np.float32) * scale + offset
        return torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(device=device, dtype=dtype)

    # -- bytes

    def to_bytes(self) -> bytes:
        w = ByteWriter()
        self.write(w)
        return w.getvalue()

    def write(self, w: ByteWriter) -> None:
        """Layout: u8 format (1) | u8 bits | u8 flags (1 symmetric, 2 per channel) | [u8 axis] | u8 ndim |
        varint dims | f32 scale x C | [f32 offset x C, affine only] | u8 model (0 none: empty tensor, 1 Categorical,
        2 QuantizedLaplace, 3 QuantizedGaussian) | the model's own bytes (bitstream.coder) | varint length + the
        range-coded words. The model is the cheapest for this tensor, its own bytes included."""
        bits = _check_bits(self.bits)
        if self.symbols.ndim > 8:
            raise ValueError("tensors of more than 8 dimensions are not stored")
        c = self.symbols.shape[self.axis] if self.axis is not None else 1
        if np.size(self.scale) != c or np.size(self.offset) != c:
            raise ValueError(f"{np.size(self.scale)} scales / {np.size(self.offset)} offsets for {c} channels")
        if self.symmetric and np.any(np.asarray(self.offset) != 0):
            raise ValueError("a symmetric quantiser has zero offsets")
        w.u8(_FORMAT)
        w.u8(bits)
        w.u8(int(self.symmetric) | (2 if self.axis is not None else 0))
        if self.axis is not None:
            w.u8(self.axis)
        w.u8(self.symbols.ndim)
        for d in self.symbols.shape:
            w.varint(int(d))
        w.raw(np.asarray(self.scale, "<f4").reshape(-1).tobytes())
        if not self.symmetric:
            w.raw(np.asarray(self.offset, "<f4").reshape(-1).tobytes())
        kind, model_bytes, payload = _code_symbols(self.symbols, self.bits, self.symmetric)
        w.u8(kind)
        w.raw(model_bytes)
        w.bytes_(payload)

    @classmethod
    def from_bytes(cls, data: bytes | ByteReader, max_elements: int = _DEFAULT_MAX_ELEMENTS) -> "QuantizedTensor":
        """Parse and validate what `to_bytes` wrote; BitstreamError for anything malformed or over max_elements.

        Given bytes, they must hold exactly one tensor; given a ByteReader, reading stops after the tensor."""
        whole = not isinstance(data, ByteReader)
        r = ByteReader(data, what="quantised tensor") if whole else data
        qt = cls._read(r, max_elements)
        if whole:
            r.expect_end()
        return qt

    @staticmethod
    def peek_shape(data: bytes, what: str = "quantised tensor",
                   max_elements: int = _DEFAULT_MAX_ELEMENTS) -> tuple[int, ...]:
        """The shape a tensor's bytes declare, without reading its values (bounds before allocation)."""
        return tuple(QuantizedTensor._read_head(ByteReader(data, what=what), max_elements)[3])

    @staticmethod
    def _read_head(r: ByteReader, max_elements: int) -> tuple[int, bool, int | None, list[int]]:
        """(bits, symmetric, axis, shape) of the layout's head, checked."""
        fmt = r.u8()
        if fmt != _FORMAT:
            raise BitstreamError(f"{r.what}: unknown tensor format {fmt}")
        bits = r.u8()
        if not MIN_BITS <= bits <= MAX_BITS:
            raise BitstreamError(f"{r.what}: bit width {bits} outside {MIN_BITS}..{MAX_BITS}")
        flags = r.u8()
        if flags & ~3:
            raise BitstreamError(f"{r.what}: unknown flags {flags:#x}")
        symmetric, per_channel = bool(flags & 1), bool(flags & 2)
        axis = r.u8() if per_channel else None
        ndim = r.u8()
        if ndim > 8:
            raise BitstreamError(f"{r.what}: {ndim} dimensions")
        shape, count = [], 1
        for _ in range(ndim):
            shape.append(r.varint(max_value=max_elements))
            count *= shape[-1]
            if count > max_elements:
                raise BitstreamError(f"{r.what}: {count}+ elements exceed the limit {max_elements}")
        if axis is not None and axis >= ndim:
            raise BitstreamError(f"{r.what}: axis {axis} of a {ndim}-D tensor")
        return bits, symmetric, axis, shape

    @classmethod
    def _read(cls, r: ByteReader, max_elements: int) -> "QuantizedTensor":
        bits, symmetric, axis, shape = cls._read_head(r, max_elements)
        count = math.prod(shape)
        c = shape[axis] if axis is not None else 1
        scale = np.frombuffer(r.raw(4 * c), "<f4").astype(np.float32)
        if not (np.isfinite(scale).all() and (scale > 0).all()):
            raise BitstreamError(f"{r.what}: scales must be finite and > 0")
        if symmetric:
            offset = np.zeros(c, np.float32)
        else:
            offset = np.frombuffer(r.raw(4 * c), "<f4").astype(np.float32)
            if not np.isfinite(offset).all():
                raise BitstreamError(f"{r.what}: offsets must be finite")
        if axis is None:
            scale, offset = scale.reshape(()), offset.reshape(())
        lo, hi = symbol_range(bits, symmetric)
        kind = r.u8()
        if kind == _MODEL_NONE:
            model = None
        elif kind == _MODEL_CATEGORICAL:
            model = Categorical.from_bytes(r, max_elements=hi - lo + 1)
            span = (model.min_symbol, model.max_symbol)
        elif kind in _PARAMETRIC:
            model = _PARAMETRIC[kind].from_bytes(r, max_elements=1)
            if model.n is not None:
                raise BitstreamError(f"{r.what}: {_MODEL_NAMES[kind]} parameters must be scalars")
            span = (model.lo, model.hi)
        else:
            raise BitstreamError(f"{r.what}: unknown entropy model {kind}")
        if (model is None) != (count == 0):
            raise BitstreamError(f"{r.what}: entropy model {kind} does not fit {count} elements")
        if model is not None and not (lo <= span[0] and span[1] <= hi):
            raise BitstreamError(f"{r.what}: model support {span} exceeds the {bits}-bit range [{lo}, {hi}]")
        payload = r.bytes_(max_len=3 * count + 8)      # <= 24 bits a symbol, plus the final word
        if model is None:
            if payload:
                raise BitstreamError(f"{r.what}: payload for an empty tensor")
            symbols = np.zeros(shape, np.int32)
        else:
            symbols = RangeDecoder(payload).decode(model, count).reshape(shape)
        return cls(symbols, scale, offset, bits, axis, symmetric)


# -- quantisation

def _as_float64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _params(flat: np.ndarray, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """float32 scale and offset per row of a [C, N] float64 array."""
    c = flat.shape[0]
    if flat.shape[1] == 0:
        return np.ones(c, np.float32), np.zeros(c, np.float32)
    if symmetric:
        scale = (np.abs(flat).max(axis=1) / ((1 << (bits - 1)) - 1)).astype(np.float32)
        offset = np.zeros(c, np.float32)
    else:
        lo, hi = flat.min(axis=1), flat.max(axis=1)
        scale = ((hi - lo) / ((1 << bits) - 1)).astype(np.float32)
        offset = lo.astype(np.float32)
    return np.where(scale > 0, scale, np.float32(1.0)), offset     # constant channels: any scale works


def quantize(x, bits: int = 8, axis: int | None = None, symmetric: bool = False) -> QuantizedTensor:
    """Round a tensor to a b-bit uniform grid, per tensor (axis=None) or per channel along `axis`."""
    bits = _check_bits(bits)
    a = _as_float64(x)
    axis = _check_axis(axis, a.ndim)
    if a.size and not np.isfinite(a).all():
        raise UserError("cannot quantise a tensor with NaN or infinite values")
    if a.size and np.abs(a).max() > _F32_MAX:
        raise UserError("cannot quantise values beyond the float32 range")
    c = a.shape[axis] if axis is not None else 1
    flat = (np.moveaxis(a, axis, 0) if axis is not None else a).reshape(c, a.size // c if c else 0)
    scale, offset = _params(flat, bits, symmetric)
    shape = _channel_shape(a.ndim, axis, c)
    lo, hi = symbol_range(bits, symmetric)
    sym = np.rint((a - offset.astype(np.float64).reshape(shape)) / scale.astype(np.float64).reshape(shape))
    symbols = np.clip(sym, lo, hi).astype(np.int32)
    if axis is None:
        scale, offset = scale.reshape(()), offset.reshape(())
    return QuantizedTensor(symbols, scale, offset, bits, axis, bool(symmetric))


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) in the forward pass, the identity in the backward pass (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def fake_quantize(x: torch.Tensor, bits: int, axis: int | None = None, symmetric: bool = False,
                  mode: str = "ste") -> torch.Tensor:
    """Differentiable stand-in for quantise + dequantise during training.

    mode="ste": the forward pass is the quantised tensor, the gradient passes to x unchanged (straight through).
    mode="noise": x plus uniform noise of one quantisation step, U(-scale/2, scale/2), as in rate-distortion training.
    The scale and offset come from x detached, so no gradient flows through them.
    """
    bits = _check_bits(bits)
    axis = _check_axis(axis, x.dim())
    if mode not in ("ste", "noise"):
        raise UserError(f"fake_quantize mode must be 'ste' or 'noise', got {mode!r}")
    if x.numel() == 0:
        return x.clone()
    with torch.no_grad():
        xd = x.detach().float()
        c = xd.shape[axis] if axis is not None else 1
        flat = xd.movedim(axis, 0).reshape(c, -1) if axis is not None else xd.reshape(1, -1)
        if symmetric:
            scale = flat.abs().amax(dim=1) / ((1 << (bits - 1)) - 1)
            offset = torch.zeros_like(scale)
        else:
            lo_v, hi_v = torch.aminmax(flat, dim=1)
            scale = (hi_v - lo_v) / ((1 << bits) - 1)
            offset = lo_v
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        shape = _channel_shape(x.dim(), axis, c)
        scale, offset = scale.reshape(shape), offset.reshape(shape)
        if mode == "ste":
            lo, hi = symbol_range(bits, symmetric)
            q = (torch.clamp(torch.round((xd - offset) / scale), lo, hi) * scale + offset).to(x.dtype)
    if mode == "ste":
        return x + (q - x).detach()
    return x + (torch.rand_like(x) - 0.5) * scale.to(x.dtype)


# -- entropy coding of the symbols

def _candidate_models(symbols: np.ndarray) -> list[tuple[int, object, bytes, float]]:
    """(kind, model, model bytes, ideal payload bits) for each model worth trying."""
    out = []
    for kind, family in ((_MODEL_CATEGORICAL, Categorical), *_PARAMETRIC.items()):
        model = family.fit(symbols)
        out.append((kind, model, model.to_bytes(), model.ideal_bits(symbols)))
    return out


def _code_symbols(symbols: np.ndarray, bits: int, symmetric: bool) -> tuple[int, bytes, bytes]:
    """The cheapest model (its own bytes included) and the payload coded under it."""
    lo, hi = symbol_range(bits, symmetric)
    if symbols.size == 0:
        return _MODEL_NONE, b"", b""
    if int(symbols.min()) < lo or int(symbols.max()) > hi:
        raise ValueError(f"symbols exceed the {bits}-bit range [{lo}, {hi}]")
    kind, model, model_bytes, _ = min(_candidate_models(symbols), key=lambda m: 8 * len(m[2]) + m[3])
    enc = RangeEncoder()
    enc.encode(symbols, model)
    return kind, model_bytes, enc.to_bytes()


def huffman_code_lengths(counts) -> np.ndarray:
    """Code length of each symbol in a Huffman code for these counts (0 for absent symbols; 1 if only one)."""
    counts = np.asarray(counts, np.int64)
    lengths = np.zeros(counts.size, np.int64)
    present = np.flatnonzero(counts > 0)
    if present.size == 1:
        lengths[present] = 1
    if present.size <= 1:
        return lengths
    heap = [(int(counts[i]), node, node) for node, i in enumerate(present)]
    heapq.heapify(heap)
    parent = [-1] * (2 * present.size - 1)
    nxt = present.size
    while len(heap) > 1:
        w1, _, a = heapq.heappop(heap)
        w2, _, b = heapq.heappop(heap)
        parent[a] = parent[b] = nxt
        heapq.heappush(heap, (w1 + w2, nxt, nxt))
        nxt += 1
    depth = [0] * len(parent)
    for node in range(len(parent) - 2, -1, -1):       # parents are numbered after their children
        depth[node] = depth[parent[node]] + 1
    lengths[present] = depth[:present.size]
    return lengths


def coding_report(qt: QuantizedTensor) -> dict:
    """Bytes of our adaptive arithmetic coding of a tensor against a Huffman code of the same symbols.

    `bytes` is the whole `to_bytes()` record, `payload_bytes` + `model_bytes` its coded part; `huffman_payload_bytes`
    is the sum over symbols of their Huffman code lengths (no table), `huffman_table_bytes` a canonical code's table
    (one code length per alphabet entry, in as many bits as the longest length needs), `entropy_bytes` the
    empirical zeroth-order entropy.
    """
    s = qt.symbols.reshape(-1)
    kind, model_bytes, payload = _code_symbols(s, qt.bits, qt.symmetric)
    report = {"elements": int(s.size), "bits": qt.bits, "model": _MODEL_NAMES[kind], "bytes": len(qt.to_bytes()),
              "model_bytes": len(model_bytes), "payload_bytes": len(payload), "entropy_bytes": 0.0,
              "huffman_payload_bytes": 0, "huffman_table_bytes": 0}
    if s.size:
        counts = np.bincount(s.astype(np.int64) - int(s.min()))
        nz = counts[counts > 0]
        report["entropy_bytes"] = float(-(nz @ np.log2(nz / s.size)) / 8)
        lengths = huffman_code_lengths(counts)
        report["huffman_payload_bytes"] = math.ceil(int(counts @ lengths) / 8)
        report["huffman_table_bytes"] = math.ceil(counts.size * int(lengths.max()).bit_length() / 8)
    return report
