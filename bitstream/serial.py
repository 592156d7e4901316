"""Checked little-endian serialisation: every read is bounded before anything is allocated."""
from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from bitstream.errors import BitstreamError

# dtype codes for ByteWriter.array; the file stores the code, never a pickled dtype.
DTYPES = {
    0: np.dtype("<u1"), 1: np.dtype("<i1"), 2: np.dtype("<u2"), 3: np.dtype("<i2"),
    4: np.dtype("<u4"), 5: np.dtype("<i4"), 6: np.dtype("<u8"), 7: np.dtype("<i8"),
    8: np.dtype("<f2"), 9: np.dtype("<f4"), 10: np.dtype("<f8"),
}
_CODES = {dt: code for code, dt in DTYPES.items()}
MAX_NDIM = 8


class ByteWriter:
    """Builds a payload from typed fields."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def _pack(self, fmt: str, v) -> None:
        self._parts.append(struct.pack("<" + fmt, v))

    def u8(self, v: int) -> None: self._pack("B", v)
    def u16(self, v: int) -> None: self._pack("H", v)
    def u32(self, v: int) -> None: self._pack("I", v)
    def u64(self, v: int) -> None: self._pack("Q", v)
    def i32(self, v: int) -> None: self._pack("i", v)
    def i64(self, v: int) -> None: self._pack("q", v)
    def f32(self, v: float) -> None: self._pack("f", v)
    def f64(self, v: float) -> None: self._pack("d", v)

    def varint(self, v: int) -> None:
        """Unsigned LEB128."""
        if v < 0:
            raise ValueError("varint must be >= 0")
        out = bytearray()
        while True:
            b = v & 0x7F
            v >>= 7
            out.append(b | (0x80 if v else 0))
            if not v:
                break
        self._parts.append(bytes(out))

    def bytes_(self, b: bytes) -> None:
        self.varint(len(b))
        self._parts.append(bytes(b))

    def str_(self, s: str) -> None:
        self.bytes_(s.encode("utf-8"))

    def raw(self, b: bytes) -> None:
        self._parts.append(bytes(b))

    def array(self, a: np.ndarray) -> None:
        """dtype code, ndim, shape as varints, then the raw little-endian data."""
        a = np.asarray(a)
        dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        code = _CODES.get(np.dtype(dt).newbyteorder("<"))
        if code is None:
            raise ValueError(f"unsupported dtype {a.dtype}")
        if a.ndim > MAX_NDIM:
            raise ValueError(f"arrays of more than {MAX_NDIM} dimensions are not stored")
        self.u8(code)
        self.u8(a.ndim)
        for d in a.shape:
            self.varint(int(d))
        self._parts.append(np.ascontiguousarray(a, dtype=DTYPES[code]).tobytes())

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class ByteReader:
    """Reads what ByteWriter wrote; any overrun or absurd size is a BitstreamError naming `what`."""

    def __init__(self, data: bytes, what: str = "data") -> None:
        self._data = memoryview(bytes(data))
        self._pos = 0
        self.what = what

    def remaining(self) -> int:
        return len(self._data) - self._pos

    @property
    def pos(self) -> int:
        return self._pos

    def _take(self, n: int) -> memoryview:
        if n < 0 or n > self.remaining():
            raise BitstreamError(f"{self.what}: truncated (needs {n} bytes at offset {self._pos}, "
                                 f"{self.remaining()} left)")
        out = self._data[self._pos:self._pos + n]
        self._pos += n
        return out

    def _unpack(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, self._take(size))[0]

    def u8(self) -> int: return self._unpack("B")
    def u16(self) -> int: return self._unpack("H")
    def u32(self) -> int: return self._unpack("I")
    def u64(self) -> int: return self._unpack("Q")
    def i32(self) -> int: return self._unpack("i")
    def i64(self) -> int: return self._unpack("q")
    def f32(self) -> float: return self._unpack("f")
    def f64(self) -> float: return self._unpack("d")

    def varint(self, max_value: int = 2**63) -> int:
        v = 0
        for shift in range(0, 70, 7):
            b = self.u8()
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                if v > max_value:
                    raise BitstreamError(f"{self.what}: value {v} exceeds the limit {max_value}")
                return v
        raise BitstreamError(f"{self.what}: varint too long")

    def bytes_(self, max_len: int | None = None) -> bytes:
        n = self.varint()
        if max_len is not None and n > max_len:
            raise BitstreamError(f"{self.what}: field of {n} bytes exceeds the limit {max_len}")
        return bytes(self._take(n))

    def str_(self, max_len: int = 1024) -> str:
        raw = self.bytes_(max_len)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BitstreamError(f"{self.what}: text field is not valid UTF-8") from None

    def raw(self, n: int) -> bytes:
        return bytes(self._take(n))

    def array(self, max_elements: int) -> np.ndarray:
        """An array; refused before allocation if it claims more than `max_elements` or the bytes left."""
        code = self.u8()
        if code not in DTYPES:
            raise BitstreamError(f"{self.what}: unknown array dtype code {code}")
        dt = DTYPES[code]
        ndim = self.u8()
        if ndim > MAX_NDIM:
            raise BitstreamError(f"{self.what}: array of {ndim} dimensions")
        shape = []
        count = 1
        bound = 1  # product of max(d, 1): a zero dimension must not hide huge ones from the limit
        for _ in range(ndim):
            d = self.varint(max_value=2**40)
            shape.append(d)
            count *= d
            bound *= max(d, 1)
            if bound > max_elements:
                raise BitstreamError(f"{self.what}: array shape {shape} exceeds the limit of {max_elements} elements")
        nbytes = count * dt.itemsize
        if nbytes > self.remaining():
            raise BitstreamError(f"{self.what}: array needs {nbytes} bytes, {self.remaining()} left")
        return np.frombuffer(self._take(nbytes), dtype=dt).reshape(shape).copy()

    def expect_end(self) -> None:
        if self.remaining():
            raise BitstreamError(f"{self.what}: {self.remaining()} unexpected trailing bytes")


def read_json(data: bytes, what: str, max_bytes: int = 1 << 16) -> Any:
    """A JSON section (a codec's config), as strict JSON: size-checked, UTF-8, no Infinity/NaN, no nesting deep
    enough to exhaust the parser's recursion. Anything else is a BitstreamError naming `what`."""
    if len(data) > max_bytes:
        raise BitstreamError(f"{what} is too large ({len(data)} bytes, at most {max_bytes})")

    def no_constant(name: str):
        raise ValueError(name)

    try:
        return json.loads(bytes(data).decode("utf-8"), parse_constant=no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BitstreamError(f"{what} is not valid JSON") from None
