"""The .ncb container: round trips, the spec in docs/FORMAT.md, hostile input (only BitstreamError, little memory)."""
from __future__ import annotations

import math
import os
import re
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitstream import container
from bitstream.container import (FORMAT_MAJOR, FORMAT_MINOR, MAGIC, MAX_FILE_SIZE, PREAMBLE_SIZE, Reader, Section,
                                 Writer)
from bitstream.errors import BitstreamError
from bitstream.serial import ByteWriter

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FORMAT_MD = Path(__file__).resolve().parents[1] / "docs" / "FORMAT.md"

VIDEO = {"kind": "video", "width": 64, "height": 48, "frames": 10, "fps_num": 30000, "fps_den": 1001,
         "pix_fmt": "yuv420p"}


def sample_writer() -> Writer:
    w = Writer("nirvana", 2, dict(VIDEO, model_sha256=bytes(range(32)), scale=0.125, note="héllo", offset=-7))
    w.add_section("model", b"weights" * 10)
    w.add_section("group/0", b"\x01" * 40)
    w.add_section("group/1", b"\x02" * 33)
    w.add_section("stats", b"", required=False)
    return w


# --- building raw files, including ones the Writer refuses to write ---------------------------------------------

def frame(table: bytes, payloads: bytes = b"", major: int = FORMAT_MAJOR, minor: int = FORMAT_MINOR) -> bytes:
    """Preamble with a correct table CRC + table + payloads."""
    head = MAGIC + struct.pack("<HHI", major, minor, len(table))
    return head + struct.pack("<I", zlib.crc32(table, zlib.crc32(head))) + table + payloads


def refresh_crc(data: bytes) -> bytes:
    """Recompute the table CRC of a (mutated) file, so that the table parser itself gets the mutated bytes."""
    if len(data) < PREAMBLE_SIZE:
        return data
    (table_len,) = struct.unpack_from("<I", data, 8)
    table = data[PREAMBLE_SIZE:PREAMBLE_SIZE + table_len]
    crc = zlib.crc32(table, zlib.crc32(data[:12]))
    return data[:12] + struct.pack("<I", crc) + data[16:]


def table_fields(codec="t", version=1, header=(), sections=()):
    """The table as a list of ("varint", n) / ("u8", n) / ("raw", bytes) / ("u32", n) fields, lengths explicit."""
    f = []

    def s(b: bytes):
        f.extend([("varint", len(b)), ("raw", b)])

    s(codec.encode())
    f.append(("varint", version))
    f.append(("varint", len(header)))
    for key, code, value in header:
        s(key.encode())
        f.append(("u8", code))
        if code == 0:
            f.append(("varint", (value << 1) ^ (value >> 63)))
        elif code == 1:
            f.append(("raw", struct.pack("<d", value)))
        else:
            s(value.encode() if isinstance(value, str) else value)
    f.append(("varint", len(sections)))
    for name, flags, payload in sections:
        s(name.encode())
        f.extend([("u8", flags), ("varint", len(payload)), ("u32", zlib.crc32(payload))])
    return f


def serialize(fields) -> bytes:
    w = ByteWriter()
    for kind, v in fields:
        if kind == "raw":
            w.raw(v)
        else:
            getattr(w, kind)(v)
    return w.getvalue()


def raw_file(header=(), sections=(), *, codec="t", version=1, tail=b"", major=FORMAT_MAJOR, minor=FORMAT_MINOR):
    table = serialize(table_fields(codec, version, header, sections)) + tail
    return frame(table, b"".join(p for _, _, p in sections), major, minor)


def video_entries(**kw):
    h = dict(VIDEO, **kw)
    return [(k, 2 if isinstance(v, str) else (1 if isinstance(v, float) else 0), v) for k, v in h.items()]


def exercise(data: bytes):
    """Open and read everything; a BitstreamError is an accepted outcome, any other exception fails the test."""
    try:
        r = Reader.from_bytes(data)
    except BitstreamError as e:
        assert str(e)
        return None
    for s in r.sections:
        try:
            assert len(r.payload(s.name)) == s.length
        except BitstreamError as e:
            assert s.name in str(e)
    try:
        r.require_known(set())
    except BitstreamError:
        pass
    return r


# --- round trips -----------------------------------------------------------------------------------------------

def test_round_trip_header_types_and_sections(tmp_path):
    w = sample_writer()
    path = tmp_path / "out" / "clip.ncb"
    n = w.write(path)
    assert n == path.stat().st_size == len(w.to_bytes())
    assert [p.name for p in path.parent.iterdir()] == ["clip.ncb"]      # no temporary file left behind
    r = Reader.from_path(path)
    assert (r.codec, r.codec_version, r.format_version) == ("nirvana", 2, (FORMAT_MAJOR, FORMAT_MINOR))
    assert r.file_size == n
    assert r.header == dict(VIDEO, model_sha256=bytes(range(32)), scale=0.125, note="héllo", offset=-7)
    assert [type(r.header[k]) for k in ("width", "scale", "note", "model_sha256")] == [int, float, str, bytes]
    assert r.names() == ["model", "group/0", "group/1", "stats"]
    assert r.names("group/") == ["group/0", "group/1"]
    assert r.payload("model") == b"weights" * 10
    assert r.payload("group/1") == b"\x02" * 33
    assert r.payload("stats") == b""
    assert [s.required for s in r.sections] == [True, True, True, False]
    assert r.has("stats") and not r.has("group/2")
    last = r.sections[-2]
    assert last.offset + last.length == n        # payloads end the file, in table order
    with pytest.raises(BitstreamError, match="'group/2' is missing"):
        r.payload("group/2")


def test_numpy_scalars_are_stored_as_python_types():
    w = Writer("t", 0, {"a": np.int64(-3), "b": np.float32(0.5), "c": bytearray(b"xy")})
    r = Reader.from_bytes(w.to_bytes())
    assert r.header == {"a": -3, "b": 0.5, "c": b"xy"} and type(r.header["a"]) is int


def test_minimal_file_and_int_extremes():
    r = Reader.from_bytes(Writer("t", 0, {"lo": -2**63, "hi": 2**63 - 1}).to_bytes())
    assert r.header == {"lo": -2**63, "hi": 2**63 - 1} and r.sections == []


names = st.text(alphabet="abcXYZ019_.:/+-", min_size=1, max_size=20)
values = st.one_of(st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=True), st.text(max_size=50),
                   st.binary(max_size=50))


@FUZZ
@given(header=st.dictionaries(names, values, max_size=8),
       sections=st.dictionaries(names, st.tuples(st.binary(max_size=64), st.booleans()), max_size=6))
def test_round_trip_random(header, sections):
    w = Writer("codec-1.x", 7, header)
    for name, (payload, required) in sections.items():
        w.add_section(name, payload, required=required)
    data = w.to_bytes()
    r = Reader.from_bytes(data)
    assert list(r.header) == list(header)
    for k, v in header.items():
        got = r.header[k]
        assert type(got) is type(v)
        assert got == v or (isinstance(v, float) and math.isnan(v) and math.isnan(got))
    assert r.names() == list(sections)
    for name, (payload, required) in sections.items():
        assert r.payload(name) == payload
        assert r.section(name).required == required
    assert Writer("codec-1.x", 7, header).to_bytes() == Writer("codec-1.x", 7, header).to_bytes()   # deterministic


# --- the spec page matches the code ----------------------------------------------------------------------------

def test_format_md_limits_match_the_code():
    rows = re.findall(r"^\| `([A-Z_]+)` \| (\d+) \|", FORMAT_MD.read_text(), flags=re.M)
    assert len(rows) >= 16
    for name, value in rows:
        assert getattr(container, name) == int(value), name


def test_format_md_worked_example_is_what_the_writer_writes():
    text = FORMAT_MD.read_text()
    block = text.split("<!-- example-begin -->")[1].split("<!-- example-end -->")[0]
    hexes = []
    for line in block.strip().strip("`").strip().splitlines():
        hexes += re.match(r"((?:[0-9a-f]{2} )*[0-9a-f]{2})", line).group(1).split()
    expected = bytes.fromhex("".join(hexes))
    w = Writer("demo", 3, {"kind": "images", "count": 1, "height": 8, "width": 8, "channels": 1})
    w.add_section("data", b"\x00\x01\x02\x03")
    w.add_section("note", b"hi", required=False)
    assert w.to_bytes() == expected
    assert Reader.from_bytes(expected).sections[1] == Section("note", False, 99, 2, zlib.crc32(b"hi"))


# --- versions ---------------------------------------------------------------------------------------------------

def test_newer_major_refused_with_upgrade_message():
    data = raw_file(major=FORMAT_MAJOR + 1)
    msg = f"file format {FORMAT_MAJOR + 1}.x is newer than this ncodec supports ({FORMAT_MAJOR}.x): upgrade ncodec"
    with pytest.raises(BitstreamError, match=re.escape(msg)):
        Reader.from_bytes(data)
    # refused on the version alone, whatever follows (a newer major may lay out the rest differently)
    with pytest.raises(BitstreamError, match="newer than this ncodec"):
        Reader.from_bytes(MAGIC + struct.pack("<HH", 2, 0) + b"\xff" * 8)


def test_major_zero_refused():
    with pytest.raises(BitstreamError, match="format 0.3 is not a valid"):
        Reader.from_bytes(raw_file(major=0, minor=3))


def test_newer_minor_read_and_its_table_extension_skipped():
    sections = [("a", 1, b"xyz")]
    r = Reader.from_bytes(raw_file(sections=sections, minor=FORMAT_MINOR + 1, tail=b"future fields"))
    assert r.format_version == (FORMAT_MAJOR, FORMAT_MINOR + 1)
    assert r.payload("a") == b"xyz"
    with pytest.raises(BitstreamError, match="13 unexpected bytes after the section list"):
        Reader.from_bytes(raw_file(sections=sections, tail=b"future fields"))


def test_unknown_optional_section_skipped_unknown_required_refused():
    w = Writer("hnerv", 1, {})
    w.add_section("model", b"m")
    w.add_section("preview", b"p", required=False)
    r = Reader.from_bytes(w.to_bytes())
    r.require_known({"model"})
    r.require_known(lambda name: name == "model")
    w.add_section("entropy/v2", b"e")
    r = Reader.from_bytes(w.to_bytes())
    with pytest.raises(BitstreamError, match=r"required section 'entropy/v2' is unknown to codec 'hnerv'.*upgrade"):
        r.require_known({"model"})
    r.require_known(lambda name: name in ("model", "entropy/v2"))


# --- damage ------------------------------------------------------------------------------------------------------

def test_damaged_section_fails_alone():
    data = bytearray(sample_writer().to_bytes())
    r = Reader.from_bytes(bytes(data))
    g0 = r.section("group/0")
    data[g0.offset + 5] ^= 0x10
    r = Reader.from_bytes(bytes(data))        # the table is intact, so the file opens
    with pytest.raises(BitstreamError, match="section 'group/0': checksum mismatch"):
        r.payload("group/0")
    assert r.payload("group/1") == b"\x02" * 33
    assert r.payload("model") == b"weights" * 10


def test_damaged_table_detected():
    good = sample_writer().to_bytes()
    for pos in (6, 9, PREAMBLE_SIZE + 3, PREAMBLE_SIZE + 40):
        bad = bytearray(good)
        bad[pos] ^= 0x01
        with pytest.raises(BitstreamError, match="header table"):
            Reader.from_bytes(bytes(bad))


def test_truncated_and_padded_files():
    good = sample_writer().to_bytes()
    with pytest.raises(BitstreamError, match=r"section 'stats'|section 'group/1': 33 bytes .* run past the end"):
        Reader.from_bytes(good[:-1])
    with pytest.raises(BitstreamError, match="section 'group/1': 33 bytes at offset .* run past the end"):
        Reader.from_bytes(good[:-2])
    with pytest.raises(BitstreamError, match="1 unexpected bytes after the last section"):
        Reader.from_bytes(good + b"\x00")
    with pytest.raises(BitstreamError, match="bad magic"):
        Reader.from_bytes(b"PK\x03\x04" + good[4:])
    with pytest.raises(BitstreamError, match="bad magic"):
        Reader.from_bytes(b"")
    with pytest.raises(BitstreamError, match="preamble: truncated"):
        Reader.from_bytes(good[:10])
    with pytest.raises(BitstreamError, match="table length .* runs past the end"):
        Reader.from_bytes(good[:PREAMBLE_SIZE + 5])


@pytest.mark.parametrize("sections, match", [
    ([("a", 1, b""), ("a", 1, b"")], "section 'a' appears twice"),
    ([("a", 3, b"")], r"section 'a': unknown flags 0x03"),
    ([("", 1, b"")], "section 0 name"),
    ([("bad name", 1, b"")], "section 0 name 'bad name'"),
])
def test_bad_section_entries(sections, match):
    with pytest.raises(BitstreamError, match=match):
        Reader.from_bytes(raw_file(sections=sections))


@pytest.mark.parametrize("header, match", [
    ([("k", 0, 1), ("k", 0, 2)], "key 'k' appears twice"),
    ([("k", 9, b"")], "header 'k': unknown value type 9"),
    ([("k", 2, b"\xff\xfe")], "header 'k': text field is not valid UTF-8"),
    ([("k", 2, "x" * 4097)], "header 'k': field of 4097 bytes exceeds the limit 4096"),
    ([("k" * 65, 0, 1)], "header entry 0 key: field of 65 bytes exceeds the limit 64"),
    ([("kind", 2, "audio")], "kind 'audio' is not one of video, images, features"),
    ([("kind", 0, 1)], "kind 1 is not one of"),
])
def test_bad_header_entries(header, match):
    with pytest.raises(BitstreamError, match=match):
        Reader.from_bytes(raw_file(header=header))


# --- header sanity: tiny files that claim enormous content ------------------------------------------------------

def test_tiny_file_claiming_enormous_video_refused():
    data = raw_file(header=video_entries(width=65536, height=65536, frames=10**6))
    assert len(data) < 150
    with pytest.raises(BitstreamError, match=r"video of 65536x65536x1000000 claims \d+ samples, over the limit 2\^40"):
        Reader.from_bytes(data)
    with pytest.raises(BitstreamError, match=r"width = 100000 is out of range \[1, 65536\]"):
        Reader.from_bytes(raw_file(header=video_entries(width=100000)))
    with pytest.raises(BitstreamError, match=r"frames = 20000000 is out of range"):
        Reader.from_bytes(raw_file(header=video_entries(frames=2 * 10**7)))
    with pytest.raises(BitstreamError, match="video needs an int 'height', found float 48.0"):
        Reader.from_bytes(raw_file(header=video_entries(height=48.0)))
    with pytest.raises(BitstreamError, match="video needs a str 'pix_fmt', found nothing"):
        Reader.from_bytes(raw_file(header=[e for e in video_entries() if e[0] != "pix_fmt"]))
    with pytest.raises(BitstreamError, match=r"fps_den = 0 is out of range"):
        Reader.from_bytes(raw_file(header=video_entries(fps_den=0)))
    assert Reader.from_bytes(raw_file(header=video_entries(width=1920, height=1080, frames=10**5))).header["frames"]


@pytest.mark.parametrize("header, match", [
    ({"kind": "images", "count": 10**7, "height": 4096, "width": 4096, "channels": 3}, "images of .* over the limit"),
    ({"kind": "images", "count": 1, "height": 8, "width": 8, "channels": 0}, r"channels = 0 is out of range"),
    ({"kind": "images", "count": 1, "height": 8, "width": 8}, "images needs an int 'channels'"),
    ({"kind": "features", "count": 10**6, "latent_c": 320, "latent_h": 64, "latent_w": 64},
     "features of .* over the limit"),
    ({"kind": "features", "count": 1, "latent_c": 320, "latent_h": -1, "latent_w": 4}, "latent_h = -1 is out of"),
    ({"kind": "features", "count": "1", "latent_c": 3, "latent_h": 1, "latent_w": 4}, "needs an int 'count'"),
])
def test_images_and_features_sanity(header, match):
    entries = [(k, 2 if isinstance(v, str) else 0, v) for k, v in header.items()]
    with pytest.raises(BitstreamError, match=match):
        Reader.from_bytes(raw_file(header=entries))
    with pytest.raises(ValueError, match=match):          # the Writer refuses to write it in the first place
        Writer("t", 1, header)


def test_writer_refuses_what_the_reader_would_refuse():
    with pytest.raises(ValueError, match="codec name 'my codec'"):
        Writer("my codec", 1, {})
    with pytest.raises(ValueError, match="codec version"):
        Writer("t", -1, {})
    with pytest.raises(ValueError, match="codec version"):
        Writer("t", 2**32, {})
    with pytest.raises(TypeError, match="bool is not a stored type"):
        Writer("t", 1, {"flag": True})
    with pytest.raises(TypeError, match="list is not one of"):
        Writer("t", 1, {"shape": [1, 2]})
    with pytest.raises(ValueError, match="does not fit in 64 bits"):
        Writer("t", 1, {"big": 2**63})
    with pytest.raises(ValueError, match="header key 'a b'"):
        Writer("t", 1, {"a b": 1})
    with pytest.raises(ValueError, match="str longer than 4096"):
        Writer("t", 1, {"s": "x" * 4097})
    with pytest.raises(ValueError, match="bytes longer than 65536"):
        Writer("t", 1, {"b": b"x" * 65537})
    with pytest.raises(ValueError, match="over the limit 256"):
        Writer("t", 1, {f"k{i}": i for i in range(257)})
    w = Writer("t", 1, {})
    w.add_section("a", b"")
    with pytest.raises(ValueError, match="section 'a' added twice"):
        w.add_section("a", b"")
    with pytest.raises(ValueError, match="section name ''"):
        w.add_section("", b"")
    with pytest.raises(ValueError, match="section name 'é'"):
        w.add_section("é", b"")


# --- files on disk -----------------------------------------------------------------------------------------------

def test_from_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        Reader.from_path(tmp_path / "missing.ncb")
    with pytest.raises(IsADirectoryError):
        Reader.from_path(tmp_path)
    if os.path.exists("/dev/null"):
        with pytest.raises(OSError, match="not a regular file"):
            Reader.from_path("/dev/null")
    (tmp_path / "empty.ncb").write_bytes(b"")
    with pytest.raises(BitstreamError, match="bad magic"):
        Reader.from_path(tmp_path / "empty.ncb")


def test_oversized_file_refused_without_reading(tmp_path):
    big = tmp_path / "big.ncb"
    with open(big, "wb") as f:
        f.write(MAGIC)
        f.truncate(MAX_FILE_SIZE + 1)          # sparse: no disk space used
    tracemalloc.start()
    try:
        with pytest.raises(BitstreamError, match="exceeds the limit"):
            Reader.from_path(big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


# --- hostile input: only BitstreamError, never much memory -------------------------------------------------------

@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data):
    exercise(data)
    exercise(MAGIC + data)
    exercise(refresh_crc(MAGIC + b"\x01\x00\x00\x00" + data))       # format 1.0, random table with a valid CRC


def _valid_file(draw) -> bytes:
    header = draw(st.dictionaries(names, values, max_size=5))
    if draw(st.booleans()):
        header.update(VIDEO)
    w = Writer("t", draw(st.integers(0, 5)), header)
    for name, (payload, required) in draw(st.dictionaries(names, st.tuples(st.binary(max_size=40), st.booleans()),
                                                          max_size=4)).items():
        w.add_section(name, payload, required=required)
    return w.to_bytes()


@st.composite
def mutated_files(draw):
    data = bytearray(_valid_file(draw))
    table_end = PREAMBLE_SIZE + struct.unpack_from("<I", data, 8)[0]
    # mutate a chosen region evenly (a damaged magic is one easy case, tested already)
    regions = {"preamble": (4, PREAMBLE_SIZE), "table": (PREAMBLE_SIZE, table_end), "payloads": (table_end, len(data))}
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite"]))
        lo, hi = regions[draw(st.sampled_from(["table", "payloads", "preamble"]))]
        hi = min(hi, len(data))
        if lo >= hi:
            continue
        pos = draw(st.integers(lo, hi - 1))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 8))]
        else:
            data[pos:pos + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x00",
                                                      b"\x80\x80\x80\x80", b"\xff\xff\xff\x0f"]))
    if draw(st.booleans()):
        data = refresh_crc(bytes(data))     # reach the table parser with the mutation instead of the CRC check
    return bytes(data)


@FUZZ
@given(mutated_files())
def test_mutated_files(data):
    exercise(data)


def _measured(data: bytes) -> int:
    tracemalloc.start()
    try:
        exercise(data)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@st.composite
def lying_lengths(draw):
    """A valid table whose length/count fields are replaced by arbitrary (often huge) values, CRC made valid."""
    header = [("kind", 2, "images"), ("count", 0, 1), ("height", 0, 8), ("width", 0, 8), ("channels", 0, 3),
              ("blob", 3, b"abc"), ("name", 2, "x")]
    sections = [("model", 1, b"m" * 10), ("group/0", 1, b"g" * 5), ("extra", 0, b"")]
    fields = table_fields("codec", 1, header, sections)
    slots = [i for i, (kind, _) in enumerate(fields) if kind in ("varint", "u8")]
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.sampled_from(slots))
        kind = fields[i][0]
        big = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([2**31, 2**32, 2**40, 10**12, 2**63]))
        fields[i] = (kind, draw(big if kind == "varint" else st.integers(0, 255)))
    table = serialize(fields)
    payloads = b"".join(p for _, _, p in sections)
    data = frame(table, payloads)
    if draw(st.booleans()):     # also lie about the table length itself
        data = refresh_crc(data[:8] + struct.pack("<I", draw(st.sampled_from([0, 2**22, 2**32 - 1]))) + data[12:])
    return data


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lying_lengths())
def test_lying_lengths_cost_little_memory(data):
    assert _measured(data) < 1 << 20


def test_huge_claims_cost_little_memory():
    t = [("varint", 1), ("raw", b"t"), ("varint", 1)]           # codec "t" version 1
    claims = {
        "video of 65536x65536x10000000 claims": raw_file(header=video_entries(width=65536, height=65536,
                                                                              frames=10**7)),
        "header entry count: value 1000000000 exceeds the limit 256": frame(serialize(t + [("varint", 10**9)])),
        "section count: value 1000000000 exceeds the limit 16384":
            frame(serialize(t + [("varint", 0), ("varint", 10**9)])),
        "section 'a': 4294967296 bytes at offset 33 run past the end": frame(serialize(
            t + [("varint", 0), ("varint", 1), ("varint", 1), ("raw", b"a"), ("u8", 1), ("varint", 2**32),
                 ("u32", 0)])),
        "section 'a': value 4294967297 exceeds the limit": frame(serialize(
            t + [("varint", 0), ("varint", 1), ("varint", 1), ("raw", b"a"), ("u8", 1), ("varint", 2**32 + 1),
                 ("u32", 0)])),
        "codec name: field of 4611686018427387904 bytes exceeds the limit 64": frame(serialize([("varint", 2**62)])),
        "header 'k': field of 1099511627776 bytes exceeds the limit 65536": frame(serialize(
            t + [("varint", 1), ("varint", 1), ("raw", b"k"), ("u8", 3), ("varint", 2**40)])),
        "header table length 4294967295 exceeds the limit": MAGIC + struct.pack("<HHII", 1, 0, 2**32 - 1, 0),
        "header table length 4194304 runs past the end": MAGIC + struct.pack("<HHII", 1, 0, 2**22, 0),
    }
    for message, data in claims.items():
        assert len(data) < 200
        with pytest.raises(BitstreamError, match=re.escape(message)):
            Reader.from_bytes(data)
        assert _measured(data) < 1 << 18
