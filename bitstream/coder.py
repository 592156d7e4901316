"""Entropy coding on constriction's range coder (FIFO), vectorised: one constriction call per model, never per symbol.

Every model here hands constriction float64 parameters that the encoder and the decoder compute identically;
constriction turns them into 24-bit integer probabilities, leaky (every symbol of a model's support gets at least
2^-24, so a symbol the model calls impossible still round-trips, but our encoders refuse it because it signals a
modelling bug and would cost up to 24 bits).

`RangeEncoder.ideal_bits` sums -log2 p(symbol) under those integer probabilities (post-quantisation):
- Categorical, CdfTableModel and the escape codes: exact (we replay constriction's `perfect=False` quantisation,
  floor(cumsum(p) * (2^24 - K) / sum(p)) + index, in float64 with the same sequential sums);
- QuantizedLaplace / QuantizedGaussian: constriction's leaky quantiser replayed with our float64 CDF, which may differ
  from constriction's CDF in the last ulp and so, very rarely, by one unit of 2^-24 in a probability;
- TableModel: the leaky quantisation in expectation, p * (2^24 - K) / sum(p) + 1 units of 2^-24 per symbol (off by
  less than one unit from constriction's integer); the exact floors need a sequential cumulative sum over the whole
  [n, K] table, which costs about four times the coding itself.
"""
from __future__ import annotations

import operator

import constriction
import numpy as np

from bitstream.errors import BitstreamError
from bitstream.serial import ByteReader, ByteWriter

_cm = constriction.stream.model
_cq = constriction.stream.queue

PRECISION = 24
_ONE = 1 << PRECISION
MAX_ALPHABET = (1 << PRECISION) - 2      # constriction's categorical models need K < 2^24 - 1
_I32 = np.iinfo(np.int32)
_MAX_COUNT = 1 << 53                     # counts stay exact in float64
_DEFAULT_MAX_ELEMENTS = 1 << 28


# ---------------------------------------------------------------------------------------------- helpers

def _as_symbols(symbols) -> np.ndarray:
    """Flat, contiguous int32 view of an integer array; ValueError for non-integers or values beyond int32."""
    a = np.asarray(symbols)
    if a.size == 0:
        return np.zeros(0, np.int32)                  # [] is float64 to numpy; nothing to check
    if a.dtype.kind not in "iub":
        raise ValueError(f"symbols must be integers, got dtype {a.dtype}")
    a = a.reshape(-1)
    if a.dtype != np.int32:
        if a.size and (int(a.min()) < _I32.min or int(a.max()) > _I32.max):
            raise ValueError("symbol outside the int32 range: no model supports it")
        a = a.astype(np.int32)
    return np.ascontiguousarray(a)


def _count(n) -> int:
    n = operator.index(n)
    if n < 0:
        raise ValueError(f"cannot decode {n} symbols")
    return n


def _out_of_support(s: np.ndarray, lo: int, hi: int) -> None:
    if s.size:
        mn, mx = int(s.min()), int(s.max())
        if mn < lo or mx > hi:
            bad = mn if mn < lo else mx
            raise ValueError(f"symbol {bad} is outside the model's support [{lo}, {hi}]")


def _call(fn, *args, error=BitstreamError, what="range decoder"):
    """Run a constriction call; its exceptions (and Rust panics, which are BaseExceptions) become `error`."""
    try:
        return fn(*args)
    except (ValueError, KeyError, RuntimeError, TypeError, OverflowError, IndexError, AssertionError) as e:
        raise error(f"{what}: {e}") from None
    except BaseException as e:  # noqa: B036 - only pyo3's PanicException is mapped; anything else re-raises
        if type(e).__name__ == "PanicException":
            raise error(f"{what}: {e}") from None
        raise


def _fast_quantized(p: np.ndarray) -> np.ndarray:
    """constriction's `perfect=False` integer probabilities (int64, sum 2^24) for float64 weights p[..., K], K >= 2.

    Replays ContiguousCategoricalEntropyModel::from_floating_point_probabilities_fast: left cumulative of symbol i is
    floor(sum(p[:i]) * (2^24 - K) / sum(p)) + i, with sequential float64 sums (np.cumsum is sequential too).
    """
    k = p.shape[-1]
    cs = np.cumsum(p, axis=-1)
    scale = float(_ONE - k) / cs[..., -1:]
    left = np.floor(cs[..., :-1] * scale).astype(np.int64) + np.arange(1, k)
    edges = np.concatenate([np.zeros(p.shape[:-1] + (1,), np.int64), left,
                            np.full(p.shape[:-1] + (1,), _ONE, np.int64)], axis=-1)
    return np.diff(edges, axis=-1)


def _bits_of(q: np.ndarray) -> np.ndarray:
    """-log2 of integer probabilities in units of 2^-24."""
    return PRECISION - np.log2(q.astype(np.float64))


def _uniform_bits(size: int, symbols: np.ndarray) -> float:
    """Exact cost of constriction's Uniform(size): 2^24 // size per bin, the rest to the last symbol."""
    per_bin = _ONE // size
    last = _ONE - (size - 1) * per_bin
    n_last = int(np.count_nonzero(symbols == size - 1))
    return (symbols.size - n_last) * (PRECISION - np.log2(per_bin)) + n_last * (PRECISION - np.log2(last))


def _write_signed(w: ByteWriter, v: int) -> None:
    w.varint((v << 1) if v >= 0 else ((-v << 1) - 1))     # zigzag


def _read_signed(r: ByteReader, limit: int = 1 << 32) -> int:
    u = r.varint(max_value=2 * limit)
    return (u >> 1) if not u & 1 else -((u + 1) >> 1)


def _read_int32(r: ByteReader, what: str) -> int:
    v = _read_signed(r)
    if not _I32.min <= v <= _I32.max:
        raise BitstreamError(f"{r.what}: {what} {v} outside int32")
    return v


# ---------------------------------------------------------------------------------------------- coders

class RangeEncoder:
    """Collects symbols under entropy models into one range-coded stream of 32-bit words."""

    def __init__(self) -> None:
        self._coder = _cq.RangeEncoder()
        self._ideal = 0.0

    def encode(self, symbols, model: "EntropyModel") -> None:
        """Append `symbols` (any int array, flattened in C order); ValueError for a symbol the model cannot code."""
        self._ideal += model._encode(self._coder, _as_symbols(symbols))

    @property
    def ideal_bits(self) -> float:
        """Sum of -log2 p(symbol) under the models' 24-bit probabilities (see the module docstring)."""
        return self._ideal

    @property
    def num_bits(self) -> int:
        """Bits written so far: 32 per word, as `to_bytes` returns them."""
        return 32 * self._coder.num_words()

    def to_bytes(self) -> bytes:
        """The compressed words as little-endian u32 (the encoder stays usable)."""
        return self._coder.get_compressed().astype("<u4", copy=False).tobytes()


class RangeDecoder:
    """Reads what a RangeEncoder wrote, model by model in the same order."""

    def __init__(self, data: bytes) -> None:
        data = bytes(data)
        if len(data) % 4:
            raise BitstreamError(f"range-coded data of {len(data)} bytes is not a whole number of 32-bit words")
        words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        self._coder = _call(_cq.RangeDecoder, words)

    def decode(self, model: "EntropyModel", n: int) -> np.ndarray:
        """n symbols (int32); garbage input gives wrong symbols within the model's support or a BitstreamError."""
        return model._decode(self._coder, _count(n))


def trim_stream(data: bytes, decodes_back) -> bytes:
    """The shortest form of a RangeEncoder stream that still decodes the same: its words most significant byte
    first, the last word rounded up (within the coder's final interval) to end in as many zero bytes as possible,
    and those bytes dropped. The seal writes a whole 32-bit word where the final interval often needs fewer bits;
    this saves ~1.7 bytes per stream, which matters for streams of ~100 bytes. `decodes_back(words)` must say
    whether whole little-endian words (what `untrim_stream` gives back) decode to the original symbols: every
    changed word is checked by decoding (a BitstreamError counts as no), so the result never depends on how the
    coder seals."""
    words = np.frombuffer(bytes(data), dtype="<u4")
    if words.size == 0:
        return b""
    whole, last = words.astype(">u4").tobytes(), int(words[-1])

    def shorter(k: int) -> bytes | None:
        step = 1 << (8 * k)
        word = -(-last // step) * step
        if word >= 1 << 32:
            return None
        candidate = whole[:-4] + word.to_bytes(4, "big")[:4 - k]
        if word == last:
            return candidate
        try:
            return candidate if decodes_back(untrim_stream(candidate)) else None
        except BitstreamError:                  # the changed word left the final interval
            return None

    # the words that decode back form an interval, so rounding to fewer zero bytes works whenever more does:
    # two decodes find the best of 0-3 dropped bytes
    two = shorter(2)
    if two is not None:
        return shorter(3) or two
    return shorter(1) or whole


def untrim_stream(data: bytes) -> bytes:
    """Whole little-endian words (RangeDecoder's input) from `trim_stream`'s bytes: the dropped bytes were zeros."""
    data = bytes(data) + bytes(-len(data) % 4)
    return np.frombuffer(data, dtype=">u4").astype("<u4").tobytes()


def encode(symbols, model: "EntropyModel") -> bytes:
    """One-shot: the symbols under one model, as bytes."""
    enc = RangeEncoder()
    enc.encode(symbols, model)
    return enc.to_bytes()


def decode(data: bytes, model: "EntropyModel", n: int) -> np.ndarray:
    """One-shot inverse of `encode`."""
    return RangeDecoder(data).decode(model, n)


# ---------------------------------------------------------------------------------------------- models

class EntropyModel:
    """A distribution over integer symbols that constriction can code. Subclasses implement the three hooks."""

    def ideal_bits(self, symbols) -> float:
        """-log2 p of the symbols under this model (ValueError if one cannot be coded); codes nothing."""
        return self._bits(_as_symbols(symbols))

    def _bits(self, s: np.ndarray) -> float:
        raise NotImplementedError

    def _encode(self, coder, s: np.ndarray) -> float:
        raise NotImplementedError

    def _decode(self, coder, n: int) -> np.ndarray:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        w = ByteWriter()
        self.write(w)
        return w.getvalue()

    def write(self, w: ByteWriter) -> None:
        raise NotImplementedError

    @classmethod
    def from_bytes(cls, r: ByteReader | bytes, max_elements: int = _DEFAULT_MAX_ELEMENTS):
        """Parse parameters written by `to_bytes`; BitstreamError for anything malformed."""
        whole = not isinstance(r, ByteReader)
        if whole:
            r = ByteReader(r, what=f"{cls.__name__} parameters")
        model = cls._read(r, max_elements)
        if whole:
            r.expect_end()
        return model

    @classmethod
    def _read(cls, r: ByteReader, max_elements: int):
        raise NotImplementedError


# -- Categorical: i.i.d. over [min_symbol, min_symbol + K) from integer counts

def _bit_length(c: np.ndarray) -> np.ndarray:
    """Bit length of non-negative int64 values below 2^53 (frexp is exact there)."""
    return np.frexp(c.astype(np.float64))[1].astype(np.int64)


def _significant_bits(c: np.ndarray) -> np.ndarray:
    """Bits between the highest and the lowest set bit, inclusive (0 for 0)."""
    low = c & -c
    return np.where(c > 0, _bit_length(c) - _bit_length(low) + 1, 0)


def _round_counts(c: np.ndarray, m: int) -> np.ndarray:
    """Round counts to m + 1 significant bits (half up); nonzero counts stay nonzero."""
    e = np.maximum(_bit_length(c) - (m + 1), 0)
    half = np.where(e > 0, np.left_shift(1, np.maximum(e - 1, 0)), 0)
    return ((c + half) >> e) << e


def _counts_to_codes(c: np.ndarray, m: int) -> np.ndarray:
    """Minifloat codes: c itself below 2^(m+1), else (e + 1) * 2^m + mantissa; c must have <= m + 1 significant bits."""
    e = np.maximum(_bit_length(c) - (m + 1), 0)
    return np.where(e > 0, ((e + 1) << m) + ((c >> e) - (1 << m)), c)


def _codes_to_counts(q: np.ndarray, m: int) -> np.ndarray:
    big = q >= (1 << (m + 1))
    e = np.where(big, (q >> m) - 1, 0)
    if np.any(e > 62 - m):
        raise BitstreamError("Categorical parameters: count code out of range")
    return np.where(big, ((1 << m) + (q & ((1 << m) - 1))) << e, q)


class Categorical(EntropyModel):
    """i.i.d. symbols over [min_symbol, min_symbol + K) with probabilities proportional to integer counts.

    Serialised as min symbol, K, and the counts as minifloats with m + 1 significant bits (m chosen as the smallest
    that keeps the counts exact; `fit` rounds the data's histogram to the m that minimises table + payload bits).
    The minifloat codes are stored either as varints or, usually smaller, as first differences range-coded under a
    fitted QuantizedLaplace, whichever is shorter. For a 10^5-weight, 8-bit histogram this costs about 2-3 bits a
    bin against 12-16 for varint counts, and the rounding costs under 0.01% of the payload (see tests).
    """

    def __init__(self, counts, min_symbol: int = 0) -> None:
        c = np.asarray(counts)
        if c.ndim != 1 or c.size == 0 or c.dtype.kind not in "iu":
            raise ValueError("Categorical counts must be a non-empty 1-D integer array")
        if c.size > MAX_ALPHABET:
            raise ValueError(f"Categorical alphabet of {c.size} symbols exceeds {MAX_ALPHABET}")
        c = c.astype(np.int64)
        if c.min() < 0 or c.max() >= _MAX_COUNT or int(c.sum()) <= 0 or int(c.sum()) >= _MAX_COUNT:
            raise ValueError("Categorical counts must be >= 0, below 2^53 in total, and not all zero")
        min_symbol = operator.index(min_symbol)
        if min_symbol < _I32.min or min_symbol + c.size - 1 > _I32.max:
            raise ValueError("Categorical support must lie within int32")
        self.counts = c
        self.min_symbol = min_symbol
        self.max_symbol = min_symbol + c.size - 1
        if c.size >= 2:
            self._probs = c.astype(np.float64)
            self._model = _cm.Categorical(self._probs, perfect=False)
            self._symbol_bits = _bits_of(_fast_quantized(self._probs))
        else:
            self._model = None                      # one symbol: costs nothing, codes nothing
            self._symbol_bits = np.zeros(1)

    @classmethod
    def from_counts(cls, counts, min_symbol: int = 0) -> "Categorical":
        return cls(counts, min_symbol)

    @classmethod
    def fit(cls, symbols, mantissa_bits: int | None = None) -> "Categorical":
        """The data's histogram over [min, max], its counts rounded to the cheapest precision (or `mantissa_bits`)."""
        s = _as_symbols(symbols)
        if s.size == 0:
            raise ValueError("cannot fit a Categorical to no symbols")
        lo, hi = int(s.min()), int(s.max())
        if hi - lo + 1 > MAX_ALPHABET:
            raise ValueError(f"symbols span {hi - lo + 1} values, more than a Categorical holds")
        hist = np.bincount((s.astype(np.int64) - lo), minlength=hi - lo + 1)
        if mantissa_bits is not None:
            return cls(_round_counts(hist, operator.index(mantissa_bits)), lo)
        best, best_bits, best_m = None, np.inf, 0
        exact_m = max(int(_significant_bits(hist).max()) - 1, 0)
        nz = hist > 0
        for m in range(0, exact_m + 1):
            c = _round_counts(hist, m)
            data_bits = -np.dot(hist[nz], np.log2(c[nz] / c.sum()))   # float cross-entropy: fine for choosing
            model = cls(c, lo)
            total = data_bits + 8 * len(model.to_bytes())
            if total < best_bits:
                best, best_bits, best_m = model, total, m
            elif m > best_m + 2:       # table bits grow ~K per step, the rounding loss shrinks 4x: past the minimum
                break
        return best

    def __repr__(self) -> str:
        return f"Categorical(K={self.counts.size}, min_symbol={self.min_symbol})"

    def _check(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Symbols relative to min_symbol and their histogram; ValueError for any the model cannot code."""
        _out_of_support(s, self.min_symbol, self.max_symbol)
        idx = s - np.int32(self.min_symbol) if self.min_symbol else s
        hist = np.bincount(idx, minlength=self.counts.size)
        zero = (hist > 0) & (self.counts == 0)
        if zero.any():
            raise ValueError(f"symbol {self.min_symbol + int(np.argmax(zero))} has zero probability under the model")
        return idx, hist

    def _bits(self, s: np.ndarray) -> float:
        if s.size == 0:
            return 0.0
        return float(self._check(s)[1] @ self._symbol_bits)

    def _encode(self, coder, s: np.ndarray) -> float:
        if s.size == 0:
            return 0.0
        idx, hist = self._check(s)
        if self._model is not None:
            _call(coder.encode, idx, self._model, error=ValueError, what="range encoder")
        return float(hist @ self._symbol_bits)

    def _decode(self, coder, n: int) -> np.ndarray:
        if n == 0 or self._model is None:
            return np.full(n, self.min_symbol, np.int32)
        out = _call(coder.decode, self._model, n)
        return out + np.int32(self.min_symbol) if self.min_symbol else out

    # -- serialisation

    def _codes(self) -> tuple[int, np.ndarray]:
        m = max(int(_significant_bits(self.counts).max()) - 1, 0)
        return m, _counts_to_codes(self.counts, m)

    def write(self, w: ByteWriter) -> None:
        """zigzag varint min symbol | varint K | u8 m (+64 if delta-coded) | varint max code | codes: either
        varint length + LEB128 codes, or f32 Laplace scale + varint length + range-coded first differences."""
        m, q = self._codes()
        _write_signed(w, self.min_symbol)
        w.varint(self.counts.size)
        top = int(q.max())
        plain = ByteWriter()
        plain.bytes_(_leb128(q))
        plain = plain.getvalue()
        coded = _code_deltas(q, top) if q.size > 1 else None
        use_coded = coded is not None and len(coded) < len(plain)
        w.u8(m | (64 if use_coded else 0))
        w.varint(top)
        if q.size > 1:
            w.raw(coded if use_coded else plain)

    @classmethod
    def _read(cls, r: ByteReader, max_elements: int) -> "Categorical":
        min_symbol = _read_int32(r, "min symbol")
        k = r.varint(max_value=min(MAX_ALPHABET, max_elements))
        if k == 0:
            raise BitstreamError(f"{r.what}: empty alphabet")
        head = r.u8()
        m, coded = head & 63, bool(head & 64)
        if head & 128 or m > 52:
            raise BitstreamError(f"{r.what}: bad count precision byte {head}")
        top = r.varint(max_value=_MAX_COUNT)
        if k == 1:
            q = np.array([top], np.int64)
        elif coded:
            q = _decode_deltas(r, k, top)
        else:
            q = _unleb128(r.bytes_(max_len=9 * k), k, r.what)
            if q.max() != top:
                raise BitstreamError(f"{r.what}: count codes disagree with their maximum")
        counts = _codes_to_counts(q, m)
        if counts.sum() <= 0 or counts.max() >= _MAX_COUNT or int(counts.sum()) >= _MAX_COUNT:
            raise BitstreamError(f"{r.what}: counts are all zero or too large")
        if min_symbol + k - 1 > _I32.max:
            raise BitstreamError(f"{r.what}: support leaves int32")
        return cls(counts, min_symbol)


_DELTA_MAX_TOP = (MAX_ALPHABET - 1) // 2


def _leb128(v: np.ndarray) -> bytes:
    """Unsigned LEB128 of each value (int64 >= 0), vectorised."""
    nbytes = np.maximum((_bit_length(v) + 6) // 7, 1)
    j = np.arange(int(nbytes.max()))
    groups = (v[:, None] >> (7 * j)) & 0x7F | np.where(j < nbytes[:, None] - 1, 0x80, 0)
    return groups[j < nbytes[:, None]].astype(np.uint8).tobytes()


def _unleb128(data: bytes, k: int, what: str) -> np.ndarray:
    """Exactly k LEB128 values below 2^53 from `data`, vectorised; BitstreamError otherwise."""
    b = np.frombuffer(data, np.uint8).astype(np.int64)
    last = np.flatnonzero(b < 0x80)
    if last.size != k or (b.size and b[-1] >= 0x80) or np.any(np.diff(last, prepend=-1) > 8):
        raise BitstreamError(f"{what}: malformed count codes")
    starts = np.concatenate([[0], last[:-1] + 1])
    shift = 7 * (np.arange(b.size) - np.repeat(starts, last - starts + 1))
    return np.add.reduceat((b & 0x7F) << shift, starts)


def _code_deltas(q: np.ndarray, top: int) -> bytes | None:
    """First differences of the count codes under QuantizedLaplace(-top, top, 0, scale): f32 scale + words."""
    if top > _DELTA_MAX_TOP:
        return None
    d = np.diff(q, prepend=0)
    scale = np.float32(max(float(np.mean(np.abs(d))), 0.1))
    words = encode(d, QuantizedLaplace(-top, top, 0.0, float(scale)))
    w = ByteWriter()
    w.f32(float(scale))
    w.bytes_(words)
    return w.getvalue()


def _decode_deltas(r: ByteReader, k: int, top: int) -> np.ndarray:
    if top > _DELTA_MAX_TOP or top == 0:
        raise BitstreamError(f"{r.what}: count-code maximum {top} cannot be delta-coded")
    scale = r.f32()
    if not (np.isfinite(scale) and scale > 0):
        raise BitstreamError(f"{r.what}: bad delta scale {scale}")
    words = r.bytes_(max_len=8 * k + 8)
    d = decode(words, QuantizedLaplace(-top, top, 0.0, scale), k).astype(np.int64)
    q = np.cumsum(d)
    if q.min() < 0 or q.max() != top:
        raise BitstreamError(f"{r.what}: count codes out of range")
    return q


# -- quantised continuous families: constriction's leaky quantiser over integer bins [s - 1/2, s + 1/2]

def _laplace_cdf(x: np.ndarray, scale) -> np.ndarray:
    """CDF of Laplace(0, scale) at x (x already centred)."""
    half_tail = 0.5 * np.exp(-np.abs(x) / scale)
    return np.where(x < 0, half_tail, 1.0 - half_tail)


def _gaussian_cdf(x: np.ndarray, std) -> np.ndarray:
    """CDF of Normal(0, std) at x (x already centred)."""
    from scipy.special import erfc  # scipy comes with scikit-learn; only ideal-bit accounting needs it

    return 0.5 * erfc(-x / (std * np.sqrt(2.0)))


class _QuantizedContinuous(EntropyModel):
    """Shared code of QuantizedLaplace / QuantizedGaussian: support [lo, hi], scalar or per-symbol parameters."""

    _family = None           # constriction class
    _names = ("loc", "scale")

    def __init__(self, lo: int, hi: int, a, b) -> None:
        lo, hi = operator.index(lo), operator.index(hi)
        if not (_I32.min <= lo <= hi <= _I32.max) or hi - lo > MAX_ALPHABET - 1:
            raise ValueError(f"{type(self).__name__}: bad support [{lo}, {hi}]")
        self.lo, self.hi = lo, hi
        # float32 so both sides, storing the parameters as float32, see identical values
        with np.errstate(over="ignore", invalid="ignore"):       # out-of-range values are refused just below
            a = np.asarray(a, np.float64).astype(np.float32)
            b = np.asarray(b, np.float64).astype(np.float32)
        if a.ndim > 1 or b.ndim > 1:
            raise ValueError(f"{type(self).__name__}: parameters must be scalars or 1-D arrays")
        if not (np.isfinite(a).all() and np.isfinite(b).all() and (b > 0).all()):
            raise ValueError(f"{type(self).__name__}: {self._names[0]} must be finite and {self._names[1]} "
                             "finite and > 0")
        if a.ndim == 1 and b.ndim == 1 and a.size != b.size:
            raise ValueError(f"{type(self).__name__}: {a.size} {self._names[0]}s but {b.size} {self._names[1]}s")
        self.n = a.size if a.ndim else (b.size if b.ndim else None)   # None: i.i.d.
        self.a, self.b = a, b
        if hi == lo:
            self._model = None
        elif self.n is None:
            self._model = self._family(lo, hi, float(a), float(b))
        else:
            self._model = self._family(lo, hi)
            self._params = (np.ascontiguousarray(np.broadcast_to(a, (self.n,)), np.float64),
                            np.ascontiguousarray(np.broadcast_to(b, (self.n,)), np.float64))

    def __repr__(self) -> str:
        shape = "iid" if self.n is None else f"n={self.n}"
        return f"{type(self).__name__}([{self.lo}, {self.hi}], {shape})"

    def _cdf(self, x, b):
        """CDF of the zero-located distribution with scale parameter b."""
        raise NotImplementedError

    @classmethod
    def fit(cls, symbols):
        """i.i.d. model on [min, max] of the data: location from the data (median for Laplace, mean for Gaussian),
        scale minimising the coded bits by golden-section search over log scale, evaluated on the histogram so each
        step costs one CDF pair per distinct value, not per symbol."""
        s = _as_symbols(symbols)
        if s.size == 0:
            raise ValueError(f"cannot fit a {cls.__name__} to no symbols")
        values, counts = np.unique(s, return_counts=True)
        lo, hi = int(values[0]), int(values[-1])
        if hi - lo > MAX_ALPHABET - 1:
            raise ValueError(f"symbols span {hi - lo + 1} values, more than a {cls.__name__} holds")
        loc = float(np.float32(cls._location(values, counts)))
        if lo == hi:
            return cls(lo, hi, loc, 1.0)
        probe = cls(lo, hi, loc, 1.0)

        def cost(log_scale: float) -> float:
            return float(counts @ probe._symbol_bits(values, loc, float(np.float32(np.exp(log_scale)))))

        a, b = np.log(0.02), np.log(2.0 * (hi - lo) + 1.0)
        g = (np.sqrt(5.0) - 1.0) / 2.0
        c, d = b - g * (b - a), a + g * (b - a)
        fc, fd = cost(c), cost(d)
        for _ in range(40):
            if fc <= fd:
                b, d, fd = d, c, fc
                c = b - g * (b - a)
                fc = cost(c)
            else:
                a, c, fc = c, d, fd
                d = a + g * (b - a)
                fd = cost(d)
        return cls(lo, hi, loc, float(np.exp(c if fc <= fd else d)))

    @staticmethod
    def _location(values: np.ndarray, counts: np.ndarray) -> float:
        raise NotImplementedError

    def _symbol_bits(self, s: np.ndarray, a, b) -> np.ndarray:
        """constriction's LeakyQuantizer: left = floor(w F(s - 1/2)) + (s - lo), right = floor(w F(s + 1/2)) +
        (s - lo) + 1, w = 2^24 - 1 - (hi - lo); left of lo is 0 and right of hi is 2^24. Integers held in float64."""
        lo, hi = self.lo, self.hi
        w = float((_ONE - 1) - (hi - lo))
        x = s - a                                          # float64, centred on the location
        fl = np.floor(w * self._cdf(x - 0.5, b))
        fr = np.floor(w * self._cdf(x + 0.5, b))
        q = fr - fl + 1.0
        for mask, value in ((s == lo, lambda m: fr[m] + 1.0), (s == hi, lambda m: _ONE - fl[m] - (hi - lo))):
            if mask.any():
                q[mask] = value(mask)
        return PRECISION - np.log2(np.maximum(q, 1.0))

    def _check_n(self, n: int) -> None:
        if self.n is not None and n != self.n:
            raise ValueError(f"{type(self).__name__} has parameters for {self.n} symbols, not {n}")

    def _bits(self, s: np.ndarray) -> float:
        self._check_n(s.size)
        _out_of_support(s, self.lo, self.hi)
        if s.size == 0 or self._model is None:
            return 0.0
        if self.n is None:
            k = self.hi - self.lo + 1
            if k <= s.size:      # i.i.d.: one table over the support, weighted by the histogram
                table = self._symbol_bits(np.arange(self.lo, self.hi + 1), float(self.a), float(self.b))
                return float(np.bincount(s.astype(np.int64) - self.lo, minlength=k) @ table)
            return float(self._symbol_bits(s, float(self.a), float(self.b)).sum())
        return float(self._symbol_bits(s, *self._params).sum())

    def _encode(self, coder, s: np.ndarray) -> float:
        bits = self._bits(s)
        if s.size and self._model is not None:
            args = () if self.n is None else self._params
            _call(coder.encode, s, self._model, *args, error=ValueError, what="range encoder")
        return bits

    def _decode(self, coder, n: int) -> np.ndarray:
        self._check_n(n)
        if n == 0 or self._model is None:
            return np.full(n, self.lo, np.int32)
        if self.n is None:
            return _call(coder.decode, self._model, n)
        return _call(coder.decode, self._model, *self._params)

    def write(self, w: ByteWriter) -> None:
        """u8 flags (1: per-symbol location, 2: per-symbol scale) | zigzag varint lo | varint hi - lo |
        location, scale: each an f32, or a float32 array (ByteWriter.array) when per symbol."""
        per_a, per_b = self.a.ndim == 1, self.b.ndim == 1
        w.u8(per_a | (per_b << 1))
        _write_signed(w, self.lo)
        w.varint(self.hi - self.lo)
        for v, per in ((self.a, per_a), (self.b, per_b)):
            if per:
                w.array(v.astype("<f4"))
            else:
                w.f32(float(v))

    @classmethod
    def _read(cls, r: ByteReader, max_elements: int):
        flags = r.u8()
        if flags & ~3:
            raise BitstreamError(f"{r.what}: unknown flags {flags}")
        lo = _read_int32(r, "support start")
        span = r.varint(max_value=MAX_ALPHABET - 1)
        params = []
        for per in (flags & 1, flags & 2):
            if per:
                v = r.array(max_elements)
                if v.dtype != np.float32 or v.ndim != 1:
                    raise BitstreamError(f"{r.what}: parameters must be a 1-D float32 array")
                params.append(v)
            else:
                params.append(np.float32(r.f32()))
        try:
            return cls(lo, lo + span, *params)
        except ValueError as e:
            raise BitstreamError(f"{r.what}: {e}") from None


class QuantizedLaplace(_QuantizedContinuous):
    """Laplace(loc, scale) integrated over integer bins on [lo, hi], the tails going to the end symbols."""

    _family = _cm.QuantizedLaplace
    _names = ("loc", "scale")

    def __init__(self, lo: int, hi: int, loc, scale) -> None:
        super().__init__(lo, hi, loc, scale)

    @staticmethod
    def _location(values, counts):
        return values[np.searchsorted(np.cumsum(counts), (counts.sum() + 1) // 2)]     # median

    @property
    def loc(self):
        return self.a

    @property
    def scale(self):
        return self.b

    def _cdf(self, x, b):
        return _laplace_cdf(x, b)


class QuantizedGaussian(_QuantizedContinuous):
    """Gaussian(mean, std) integrated over integer bins on [lo, hi], the tails going to the end symbols."""

    _family = _cm.QuantizedGaussian
    _names = ("mean", "std")

    def __init__(self, lo: int, hi: int, mean, std) -> None:
        super().__init__(lo, hi, mean, std)

    @staticmethod
    def _location(values, counts):
        return (values.astype(np.float64) @ counts) / counts.sum()

    @property
    def mean(self):
        return self.a

    @property
    def std(self):
        return self.b

    def _cdf(self, x, b):
        return _gaussian_cdf(x, b)


# -- TableModel: one probability table per symbol (the PC codec's per-pixel distributions)

def _check_tables(p: np.ndarray, what: str) -> np.ndarray:
    """Row sums of a [n, K] float64 table; ValueError for negative, NaN or infinite entries or a null row."""
    if p.size == 0:
        return np.zeros(p.shape[0])
    if not p.min() >= 0:                    # also false for NaN
        raise ValueError(f"{what}: probabilities must be >= 0 and not NaN")
    sums = p.sum(axis=1)
    if not (np.isfinite(sums).all() and sums.min() >= np.finfo(np.float64).tiny):
        raise ValueError(f"{what}: every row must have a finite, positive sum")
    return sums


class TableModel(EntropyModel):
    """Symbol i is drawn from probs[i] over [min_symbol, min_symbol + K) (float64 weights or integer counts; rows
    need not be normalised). A zero entry keeps constriction's minimum mass 2^-24 (the row's other entries give it
    up), so decoding never desynchronises, but encoding a symbol whose entry is 0 is refused with ValueError.
    Encoding and decoding validate the whole table (>= 0, finite, positive row sums) once per call."""

    def __init__(self, probs, min_symbol: int = 0) -> None:
        p = np.asarray(probs)
        if p.ndim != 2 or p.shape[1] == 0 or p.dtype.kind not in "iuf":
            raise ValueError("TableModel probs must be a [n, K] array of floats or integer counts, K >= 1")
        if p.shape[1] > MAX_ALPHABET:
            raise ValueError(f"TableModel alphabet of {p.shape[1]} symbols exceeds {MAX_ALPHABET}")
        min_symbol = operator.index(min_symbol)
        if min_symbol < _I32.min or min_symbol + p.shape[1] - 1 > _I32.max:
            raise ValueError("TableModel support must lie within int32")
        self.probs = np.ascontiguousarray(p, dtype=np.float64)
        self.min_symbol = min_symbol
        self.n, self.k = p.shape
        self._family = _cm.Categorical(perfect=False) if self.k >= 2 else None
        self._sums: np.ndarray | None = None        # row sums once validated (see `pick`)

    def pick(self, rows) -> "TableModel":
        """The model of some of these rows (an index array) in that order. The rows are validated once, here, not
        per call: for coders that make many small calls from one fixed set of tables."""
        if self._sums is None:
            self._sums = _check_tables(self.probs, "TableModel")
        m = object.__new__(TableModel)
        m.probs, m._sums = self.probs[rows], self._sums[rows]
        m.min_symbol, m._family = self.min_symbol, self._family
        m.n, m.k = m.probs.shape
        return m

    def _validated_sums(self) -> np.ndarray:
        return self._sums if self._sums is not None else _check_tables(self.probs, "TableModel")

    def __repr__(self) -> str:
        return f"TableModel(n={self.n}, K={self.k}, min_symbol={self.min_symbol})"

    def _check_n(self, n: int) -> None:
        if n != self.n:
            raise ValueError(f"TableModel has {self.n} tables, not {n}")

    def _prepare(self, s: np.ndarray) -> tuple[np.ndarray, float]:
        self._check_n(s.size)
        _out_of_support(s, self.min_symbol, self.min_symbol + self.k - 1)
        sums = self._validated_sums()
        idx = s - np.int32(self.min_symbol) if self.min_symbol else s
        if s.size == 0 or self.k == 1:
            return idx, 0.0
        p = self.probs[np.arange(self.n), idx]
        if not p.min() > 0:
            i = int(np.argmin(p))
            raise ValueError(f"symbol {int(s[i])} at position {i} has probability zero in its table")
        units = p * ((_ONE - self.k) / sums) + 1.0       # expected leaky integer probability, see module doc
        return idx, float(np.sum(PRECISION - np.log2(units)))

    def _bits(self, s: np.ndarray) -> float:
        return self._prepare(s)[1]

    def _encode(self, coder, s: np.ndarray) -> float:
        idx, bits = self._prepare(s)
        if s.size and self._family is not None:
            _call(coder.encode, idx, self._family, self.probs, error=ValueError, what="range encoder")
        return bits

    def _decode(self, coder, n: int) -> np.ndarray:
        self._check_n(n)
        if n == 0 or self._family is None:
            return np.full(n, self.min_symbol, np.int32)
        self._validated_sums()
        out = _call(coder.decode, self._family, self.probs)
        return out + np.int32(self.min_symbol) if self.min_symbol else out

    def write(self, w: ByteWriter) -> None:
        _write_signed(w, self.min_symbol)
        w.array(self.probs)

    @classmethod
    def _read(cls, r: ByteReader, max_elements: int) -> "TableModel":
        min_symbol = _read_int32(r, "min symbol")
        p = r.array(max_elements)
        if p.dtype != np.float64 or p.ndim != 2 or p.shape[1] == 0:
            raise BitstreamError(f"{r.what}: tables must be a [n, K] float64 array")
        try:
            model = cls(p, min_symbol)
            _check_tables(model.probs, r.what)
        except ValueError as e:
            raise BitstreamError(f"{r.what}: {e}") from None
        return model


# -- CdfTableModel: CompressAI's quantised CDF tables with their escape symbol

_ESCAPE_EXPONENTS = 34        # int32 symbols minus int32 offsets overflow by < 2^33: exponent k <= 33
_CHUNK = 16                   # escape mantissas go out in 16-bit uniform chunks


class CdfTableModel(EntropyModel):
    """CompressAI EntropyBottleneck / GaussianConditional tables, coded with constriction.

    Symbol i uses table c = indexes[i]: value v = symbol - offset[c]; pmf = diff(quantized_cdf[c, :cdf_length[c]])
    has cdf_length - 1 entries, the last being the escape. Values in [0, cdf_length - 2) are coded directly; any
    other value codes the escape, then (after all table symbols) u = -2v - 1 or 2(v - (cdf_length - 2)) in an
    exp-Golomb form: k = floor(log2(u + 1)) under Uniform(34), then the k low bits of u + 1 in 16-bit Uniform
    chunks. So every int32 symbol round-trips. Symbols are coded grouped by table (stable order), one
    constriction call per table.
    """

    def __init__(self, quantized_cdf, cdf_length, offset, indexes) -> None:
        cdf = np.asarray(quantized_cdf)
        length = np.asarray(cdf_length).reshape(-1)
        offset = np.asarray(offset).reshape(-1)
        idx = np.asarray(indexes).reshape(-1)
        for name, a in (("quantized_cdf", cdf), ("cdf_length", length), ("offset", offset), ("indexes", idx)):
            if a.dtype.kind not in "iu":
                raise ValueError(f"CdfTableModel: {name} must be integers")
        if cdf.ndim != 2 or cdf.shape[0] == 0 or length.size != cdf.shape[0] or offset.size != cdf.shape[0]:
            raise ValueError("CdfTableModel: quantized_cdf [C, L], cdf_length [C] and offset [C] disagree")
        c, width = cdf.shape
        if length.min() < 3 or length.max() > width or width - 1 > MAX_ALPHABET:
            raise ValueError("CdfTableModel: every cdf_length must be in [3, L]")
        for name, a in (("offsets", offset), ("quantized_cdf", cdf)):
            if a.size and (a.min() < _I32.min or a.max() > _I32.max):
                raise ValueError(f"CdfTableModel: {name} must fit int32")
        if idx.size and (idx.min() < 0 or idx.max() >= c):
            raise ValueError(f"CdfTableModel: indexes must be in [0, {c})")
        self.quantized_cdf = cdf.astype(np.int64)
        self.cdf_length = length.astype(np.int64)
        self.offset = offset.astype(np.int64)
        self.indexes = idx.astype(np.int64)
        self.n = idx.size
        pmfs = []
        for ch in range(c):
            pmf = np.diff(self.quantized_cdf[ch, :self.cdf_length[ch]]).astype(np.float64)
            if not (pmf.min() >= 0 and pmf.sum() > 0):
                raise ValueError(f"CdfTableModel: table {ch} is not a non-decreasing CDF")
            pmfs.append(pmf)
        self._models = [_cm.Categorical(p, perfect=False) for p in pmfs]
        # every table side by side, so per-symbol checks and bits are one gather over all symbols
        self._pmf_flat = np.concatenate(pmfs)
        self._bits_flat = np.concatenate([_bits_of(_fast_quantized(p)) for p in pmfs])
        bases = np.concatenate([[0], np.cumsum([p.size for p in pmfs])[:-1]])
        self._base = bases[self.indexes]
        self._top = self.cdf_length[self.indexes] - 2           # each symbol's escape index
        self._off = self.offset[self.indexes]
        self._order = np.argsort(self.indexes, kind="stable")
        starts = np.concatenate([[0], np.cumsum(np.bincount(self.indexes, minlength=c))])
        self._groups = [(ch, starts[ch], starts[ch + 1]) for ch in range(c) if starts[ch + 1] > starts[ch]]

    def __repr__(self) -> str:
        return f"CdfTableModel(C={self.quantized_cdf.shape[0]}, n={self.n})"

    def _prepare(self, s: np.ndarray):
        """Table symbols in coding order (grouped by table), the escaped overflows, their exponents, ideal bits."""
        if s.size != self.n:
            raise ValueError(f"CdfTableModel has {self.n} indexes, not {s.size} symbols")
        v = s.astype(np.int64) - self._off
        esc = (v < 0) | (v >= self._top)
        coded = np.where(esc, self._top, v)
        flat = self._base + coded
        if self.n and not self._pmf_flat[flat].min() > 0:
            i = int(np.argmin(self._pmf_flat[flat]))
            raise ValueError(f"symbol {int(s[i])} at position {i} has zero probability in CDF table "
                             f"{int(self.indexes[i])}")
        bits = float(self._bits_flat[flat].sum())
        u = np.where(v[esc] < 0, -2 * v[esc] - 1, 2 * (v[esc] - self._top[esc]))
        k = _bit_length(u + 1) - 1
        bits += _uniform_bits(_ESCAPE_EXPONENTS, k) + float(k.sum())
        return coded[self._order].astype(np.int32), u, k, bits

    def _bits(self, s: np.ndarray) -> float:
        return self._prepare(s)[3]

    def _encode(self, coder, s: np.ndarray) -> float:
        coded, u, k, bits = self._prepare(s)
        for ch, a, b in self._groups:
            _call(coder.encode, coded[a:b], self._models[ch], error=ValueError, what="range encoder")
        if u.size:
            _call(coder.encode, k.astype(np.int32), _cm.Uniform(_ESCAPE_EXPONENTS), error=ValueError,
                  what="range encoder")
            rest = (u + 1) - (np.int64(1) << k)
            for j in range(0, _ESCAPE_EXPONENTS, _CHUNK):
                has = k > j
                if not has.any():
                    break
                width = np.minimum(k[has] - j, _CHUNK)
                chunk = (rest[has] >> j) & ((np.int64(1) << width) - 1)
                _call(coder.encode, chunk.astype(np.int32), _cm.Uniform(),
                      (np.int64(1) << width).astype(np.int32), error=ValueError, what="range encoder")
        return bits

    def _decode(self, coder, n: int) -> np.ndarray:
        if n != self.n:
            raise ValueError(f"CdfTableModel has {self.n} indexes, not {n} symbols")
        in_order = np.empty(n, np.int32)
        for ch, a, b in self._groups:
            in_order[a:b] = _call(coder.decode, self._models[ch], int(b - a))
        coded = np.empty(n, np.int64)
        coded[self._order] = in_order
        top = self._top
        v = coded
        esc = np.flatnonzero(coded == top)
        if esc.size:
            k = _call(coder.decode, _cm.Uniform(_ESCAPE_EXPONENTS), esc.size).astype(np.int64)
            rest = np.zeros(esc.size, np.int64)
            for j in range(0, _ESCAPE_EXPONENTS, _CHUNK):
                has = k > j
                if not has.any():
                    break
                width = np.minimum(k[has] - j, _CHUNK)
                chunk = _call(coder.decode, _cm.Uniform(), (np.int64(1) << width).astype(np.int32))
                rest[has] |= chunk.astype(np.int64) << j
            u = (np.int64(1) << k) + rest - 1
            v = coded.copy()
            v[esc] = np.where(u & 1, -(u + 1) // 2, u // 2 + top[esc])
        out = v + self._off
        if out.size and (out.min() < _I32.min or out.max() > _I32.max):
            raise BitstreamError("range decoder: escaped value outside int32")
        return out.astype(np.int32)

    def write(self, w: ByteWriter) -> None:
        w.array(self.quantized_cdf.astype("<i4"))
        w.array(self.cdf_length.astype("<i4"))
        w.array(self.offset.astype("<i4"))
        w.array(self.indexes.astype("<i4"))

    @classmethod
    def _read(cls, r: ByteReader, max_elements: int) -> "CdfTableModel":
        arrays = [r.array(max_elements) for _ in range(4)]
        try:
            return cls(*arrays)
        except ValueError as e:
            raise BitstreamError(f"{r.what}: {e}") from None
