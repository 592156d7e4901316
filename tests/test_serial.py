"""ByteWriter / ByteReader: every field type round-trips, every overrun or absurd size is a BitstreamError."""
from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitstream.errors import BitstreamError
from bitstream.serial import DTYPES, MAX_NDIM, ByteReader, ByteWriter

FIXED = {  # method: (bytes, smallest, largest)
    "u8": (1, 0, 2**8 - 1), "u16": (2, 0, 2**16 - 1), "u32": (4, 0, 2**32 - 1), "u64": (8, 0, 2**64 - 1),
    "i32": (4, -2**31, 2**31 - 1), "i64": (8, -2**63, 2**63 - 1),
}


@pytest.mark.parametrize("method", list(FIXED))
def test_fixed_ints_round_trip_and_truncation(method):
    size, lo, hi = FIXED[method]
    w = ByteWriter()
    for v in (lo, hi, 0, 1):
        getattr(w, method)(v)
    data = w.getvalue()
    assert len(data) == 4 * size
    r = ByteReader(data, "field")
    assert [getattr(r, method)() for _ in range(4)] == [lo, hi, 0, 1]
    r.expect_end()
    with pytest.raises(BitstreamError, match=f"field: truncated \\(needs {size} bytes"):
        getattr(ByteReader(data[:size - 1], "field"), method)()
    with pytest.raises(struct.error):           # the writer refuses values that do not fit
        getattr(ByteWriter(), method)(hi + 1)


def test_little_endian_layout():
    w = ByteWriter()
    w.u32(0x01020304)
    w.i32(-2)
    w.f64(1.0)
    assert w.getvalue() == bytes([4, 3, 2, 1]) + b"\xfe\xff\xff\xff" + struct.pack("<d", 1.0)


@pytest.mark.parametrize("v", [0.0, -0.0, 1.5, -3.25e-7, 1e300, math.inf, -math.inf, math.nan])
def test_floats(v):
    w = ByteWriter()
    w.f64(v)
    w.f32(v if abs(v) < 1e38 or math.isinf(v) or math.isnan(v) else 1.0)
    r = ByteReader(w.getvalue())
    got64, got32 = r.f64(), r.f32()
    if math.isnan(v):
        assert math.isnan(got64) and math.isnan(got32)
    else:
        assert got64 == v and math.copysign(1, got64) == math.copysign(1, v)
        assert got32 == np.float32(v if abs(v) < 1e38 or math.isinf(v) else 1.0)
    r.expect_end()


@pytest.mark.parametrize("v, encoded", [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02"),
                                        (2**63, b"\x80" * 9 + b"\x01")])
def test_varint_encoding(v, encoded):
    w = ByteWriter()
    w.varint(v)
    assert w.getvalue() == encoded
    assert ByteReader(encoded).varint() == v


def test_varint_errors():
    with pytest.raises(ValueError):
        ByteWriter().varint(-1)
    with pytest.raises(BitstreamError, match="num: value 300 exceeds the limit 299"):
        ByteReader(b"\xac\x02", "num").varint(max_value=299)
    with pytest.raises(BitstreamError, match="num: varint too long"):
        ByteReader(b"\xff" * 11, "num").varint()
    with pytest.raises(BitstreamError, match="num: truncated"):
        ByteReader(b"\x80\x80", "num").varint()
    with pytest.raises(BitstreamError, match="exceeds the limit"):
        ByteReader(b"\xff" * 9 + b"\x7f").varint()          # 2^70 - 1 > the default limit 2^63


def test_bytes_and_str():
    w = ByteWriter()
    w.bytes_(b"")
    w.bytes_(b"\x00\xff" * 100)
    w.str_("")
    w.str_("naïve — 日本")
    w.raw(b"tail")
    r = ByteReader(w.getvalue())
    assert r.bytes_() == b""
    assert r.bytes_(max_len=200) == b"\x00\xff" * 100
    assert r.str_() == ""
    assert r.str_() == "naïve — 日本"
    assert r.remaining() == 4 and r.raw(4) == b"tail"
    r.expect_end()


def test_bytes_and_str_errors():
    w = ByteWriter()
    w.bytes_(b"x" * 10)
    data = w.getvalue()
    with pytest.raises(BitstreamError, match="blob: field of 10 bytes exceeds the limit 9"):
        ByteReader(data, "blob").bytes_(max_len=9)
    with pytest.raises(BitstreamError, match="blob: truncated"):
        ByteReader(data[:-1], "blob").bytes_()
    with pytest.raises(BitstreamError, match="truncated"):          # a length that claims 2^62 bytes
        ByteReader(b"\x80" * 8 + b"\x40" + b"x", "blob").bytes_()
    with pytest.raises(BitstreamError, match="name: field of 5 bytes exceeds the limit 4"):
        w = ByteWriter()
        w.str_("hello")
        ByteReader(w.getvalue(), "name").str_(max_len=4)
    with pytest.raises(BitstreamError, match="name: text field is not valid UTF-8"):
        ByteReader(b"\x02\xc3\x28", "name").str_()
    with pytest.raises(BitstreamError, match="truncated"):
        ByteReader(b"abc").raw(4)
    with pytest.raises(BitstreamError, match="3 unexpected trailing bytes"):
        ByteReader(b"abc").expect_end()


@pytest.mark.parametrize("code", sorted(DTYPES))
@pytest.mark.parametrize("shape", [(), (0,), (5,), (2, 3), (1, 2, 1, 3), (2,) * MAX_NDIM])
def test_array_round_trip_every_dtype(code, shape):
    dt = DTYPES[code]
    rng = np.random.default_rng(code)
    if dt.kind == "f":
        a = np.asarray(rng.normal(size=shape), dtype=dt)
    else:
        info = np.iinfo(dt)
        a = np.asarray(rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True), dtype=dt)
    assert a.shape == shape
    # native, big-endian and Fortran-ordered inputs all store the same little-endian C-order data
    for arr in (a, a.astype(dt.newbyteorder(">")), np.array(a, order="F")):
        w = ByteWriter()
        w.array(arr)
        data = w.getvalue()
        assert data[0] == code and data[1] == len(shape)
        r = ByteReader(data)
        back = r.array(max_elements=max(a.size, 1))
        r.expect_end()
        assert back.dtype == dt and back.shape == shape
        np.testing.assert_array_equal(back, a)
        assert back.flags.writeable            # a copy, not a view of the input


def test_array_refuses_unsupported_arrays():
    with pytest.raises(ValueError, match="unsupported dtype"):
        ByteWriter().array(np.zeros(3, dtype=bool))
    with pytest.raises(ValueError, match="unsupported dtype"):
        ByteWriter().array(np.zeros(3, dtype=np.complex64))
    with pytest.raises(ValueError, match="more than 8 dimensions"):
        ByteWriter().array(np.zeros((1,) * (MAX_NDIM + 1), dtype=np.uint8))


def _array_bytes(code, shape, data=b""):
    w = ByteWriter()
    w.u8(code)
    w.u8(len(shape))
    for d in shape:
        w.varint(d)
    w.raw(data)
    return w.getvalue()


def test_array_read_errors():
    with pytest.raises(BitstreamError, match="w: unknown array dtype code 11"):
        ByteReader(_array_bytes(11, (1,), b"\x00"), "w").array(10)
    with pytest.raises(BitstreamError, match="w: array of 9 dimensions"):
        ByteReader(_array_bytes(0, (1,) * 9, b"\x00"), "w").array(10)
    with pytest.raises(BitstreamError, match=r"w: array shape \[3, 4\] exceeds the limit of 10 elements"):
        ByteReader(_array_bytes(0, (3, 4), b"\x00" * 12), "w").array(10)
    with pytest.raises(BitstreamError, match="w: array needs 12 bytes, 11 left"):
        ByteReader(_array_bytes(5, (3,), b"\x00" * 11), "w").array(10)
    with pytest.raises(BitstreamError, match="exceeds the limit"):          # a dimension over 2^40
        ByteReader(_array_bytes(0, (2**41,))).array(2**50)
    with pytest.raises(BitstreamError, match="truncated"):
        ByteReader(_array_bytes(0, (2,))[:-1]).array(10)


def test_array_zero_dimension_does_not_hide_huge_dimensions():
    with pytest.raises(BitstreamError):
        ByteReader(_array_bytes(0, (0, 2**40, 2**40, 2**40))).array(10)


FIELDS = st.one_of(
    st.tuples(st.just("u8"), st.integers(0, 2**8 - 1)), st.tuples(st.just("u16"), st.integers(0, 2**16 - 1)),
    st.tuples(st.just("u32"), st.integers(0, 2**32 - 1)), st.tuples(st.just("u64"), st.integers(0, 2**64 - 1)),
    st.tuples(st.just("i32"), st.integers(-2**31, 2**31 - 1)),
    st.tuples(st.just("i64"), st.integers(-2**63, 2**63 - 1)),
    st.tuples(st.just("f64"), st.floats(allow_nan=False)), st.tuples(st.just("varint"), st.integers(0, 2**63)),
    st.tuples(st.just("bytes_"), st.binary(max_size=40)), st.tuples(st.just("str_"), st.text(max_size=40)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(FIELDS, max_size=12))
def test_field_sequences_round_trip(fields):
    w = ByteWriter()
    for method, v in fields:
        getattr(w, method)(v)
    data = w.getvalue()
    r = ByteReader(data)
    assert [getattr(r, method)() for method, _ in fields] == [v for _, v in fields]
    r.expect_end()
    if data:    # any truncation of the stream is a BitstreamError, never a wrong value read silently past the end
        r = ByteReader(data[:-1])
        with pytest.raises(BitstreamError):
            for method, _ in fields:
                getattr(r, method)()
            r.expect_end()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 2**20))
def test_random_bytes_only_raise_bitstream_error(data, max_elements):
    for read in (lambda r: r.array(max_elements), lambda r: r.str_(), lambda r: r.bytes_(100), lambda r: r.varint()):
        r = ByteReader(data)
        try:
            read(r)
        except BitstreamError:
            pass
