"""Mutations of .ncb files for `benchmarks.fuzz`: raw damage, and edits that keep the file well-formed.

A base file is parsed once into an `Ncb` (container fields and section payloads, nested containers of a --segment
file included) and traced once: `tracing()` records every field the decoder reads from a section payload through
`bitstream.serial.ByteReader` (ints, floats, varints, length prefixes, strings, blobs, array shapes), with its
section and offset. A mutant then applies one to three operators:

    raw.*        bit flips, byte overwrites, truncations, appended junk, inserted/deleted bytes (CRCs left stale)
    hdr.*        a header value: ints set to edge values, types changed, keys dropped, added or duplicated
    table.codec  the codec name and version, the format version, a table extension
    sec.edit     sections dropped, duplicated, renamed, swapped, reordered, emptied, flags changed
    pay.bytes    bytes of one section's payload flipped, overwritten, cut, extended, inserted, deleted
    field.edit   one traced field set to an edge value (counts, lengths, shapes, bit widths, scales, names), the
                 enclosing length prefixes fixed up (mostly) so that the edit reaches the code behind them
    json.edit    one value of a JSON config section set to an edge value, lists resized, keys removed, nesting bombs
                 (header fields the config repeats, such as width, follow the edit half of the time)

All but raw.* re-serialise the container (the nested one too) with every length and CRC recomputed.

A file's section digests (its optional "sha256" section) are recomputed after the edit for 80% of the mutants, as a
hostile writer would (then the edit reaches the code behind the digest check), and left stale for the rest (damage
that the digests must catch).

Everything is a pure function of (base, rng): `mutate(base, random.Random(key))` makes the same mutant every time.
`assemble` is an unchecked twin of `bitstream.container.Writer.to_bytes` (it must write values the Writer refuses);
`check_roundtrip` checks that it rewrites every base (the Writer's output) byte for byte.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import random
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

from bitstream import container as C
from bitstream.serial import ByteReader

Path = tuple[str, ...]          # section names from the top container down (nested: ("segment/0", "weights"))
DIGEST_SECTION = getattr(C, "DIGEST_SECTION", "sha256")


# ---------------------------------------------------------------------------------------------------------------
# the container, parsed and re-assembled without checks


@dataclass
class Ncb:
    major: int
    minor: int
    codec: str | bytes
    version: int
    header: list[list]          # [key, type code, value]; unknown codes carry raw bytes
    sections: list[list]        # [name, flags, payload]
    extension: bytes = b""


def _type_code(v: Any) -> int:
    return {int: C.T_INT, float: C.T_FLOAT, str: C.T_STR, bytes: C.T_BYTES}[type(v)]


def parse(data: bytes) -> Ncb:
    """A valid file's fields (bitstream.container.Reader parses and checks it)."""
    r = C.Reader.from_bytes(data)
    return Ncb(r.format_version[0], r.format_version[1], r.codec, r.codec_version,
               [[k, _type_code(v), v] for k, v in r.header.items()],
               [[s.name, C.FLAG_REQUIRED if s.required else 0, data[s.offset:s.offset + s.length]]
                for s in r.sections])


def leb128(v: int) -> bytes:
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _text(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return leb128(len(b)) + b


def assemble(n: Ncb) -> bytes:
    """The file with every length and CRC computed from its contents (docs/FORMAT.md), nothing checked."""
    t = bytearray(_text(n.codec) + leb128(n.version) + leb128(len(n.header)))
    for key, code, v in n.header:
        t += _text(key) + bytes([code & 0xFF])
        if code == C.T_INT:
            t += leb128(((v << 1) ^ (v >> 63)) & (2**64 - 1))
        elif code == C.T_FLOAT:
            t += struct.pack("<d", v)
        elif code in (C.T_STR, C.T_BYTES):
            t += _text(v)
        else:
            t += bytes(v)
    t += leb128(len(n.sections))
    for name, flags, payload in n.sections:
        t += _text(name) + bytes([flags & 0xFF]) + leb128(len(payload)) + struct.pack("<I", zlib.crc32(payload))
    t += n.extension
    head = C.MAGIC + struct.pack("<HHI", n.major & 0xFFFF, n.minor & 0xFFFF, len(t))
    return head + struct.pack("<I", zlib.crc32(bytes(t), zlib.crc32(head))) + bytes(t) + b"".join(
        p for _, _, p in n.sections)


def check_roundtrip(data: bytes) -> None:
    """assemble(parse(x)) == x, and the same for nested containers: the mutants are the Writer's format."""
    n = parse(data)
    if assemble(n) != data:
        raise AssertionError("benchmarks.fuzz_mutate.assemble does not reproduce the container byte for byte")
    for _, _, p in n.sections:
        if is_container(p):
            check_roundtrip(p)


def fix_digests(data: bytes) -> bytes:
    """The file with its section digests recomputed (the optional last section "sha256": u8 L, then L bytes of the
    SHA-256 of each earlier section, docs/FORMAT.md), nested files first, as a hostile writer would make them: a
    digest catches damage, not a deliberate edit. A file that does not parse, with a stale CRC (raw damage stays raw)
    or whose digest section's length byte is itself damaged is returned as it is."""
    try:
        r = C.Reader.from_bytes(data)
    except ValueError:
        return data
    if any(zlib.crc32(data[s.offset:s.offset + s.length]) != s.crc32 for s in r.sections):
        return data
    n = parse(data)
    if n.minor != C.FORMAT_MINOR:           # parse() does not keep a newer minor's table extension
        return data
    changed = False
    for sec in n.sections:
        if is_container(sec[2]):
            new = fix_digests(sec[2])
            changed |= new != sec[2]
            sec[2] = new
    if n.sections and n.sections[-1][0] == DIGEST_SECTION and n.sections[-1][2]:
        old = n.sections[-1][2]
        k = old[0]
        if 8 <= k <= 32:
            new = bytes([k]) + b"".join(hashlib.sha256(p).digest()[:k] for _, _, p in n.sections[:-1])
            changed |= new != old
            n.sections[-1][2] = new
    return assemble(n) if changed else data


def is_container(payload: bytes) -> bool:
    if not payload.startswith(C.MAGIC):
        return False
    try:
        C.Reader.from_bytes(payload)
        return True
    except ValueError:
        return False


def containers(data: bytes, path: Path = ()) -> list[Path]:
    """Paths of the file's containers: () and every section that is itself a valid .ncb."""
    out = [path]
    for name, _, p in parse(data).sections:
        if is_container(p):
            out += containers(p, path + (name,))
    return out


def get_payload(data: bytes, path: Path) -> bytes:
    n = parse(data)
    for name, _, p in n.sections:
        if name == path[0]:
            return p if len(path) == 1 else get_payload(p, path[1:])
    raise KeyError(path)


def edit_container(data: bytes, path: Path, fn: Callable[[Ncb], None]) -> bytes:
    """`fn` edits the container at `path` (() = the file); the enclosing containers are re-assembled around it."""
    n = parse(data)
    if not path:
        fn(n)
        return assemble(n)
    for sec in n.sections:
        if sec[0] == path[0]:
            sec[2] = edit_container(sec[2], path[1:], fn)
            return assemble(n)
    raise KeyError(path)


def set_payload(data: bytes, path: Path, payload: bytes) -> bytes:
    def fn(n: Ncb) -> None:
        for sec in n.sections:
            if sec[0] == path[-1]:
                sec[2] = payload
    return edit_container(data, path[:-1], fn)


# ---------------------------------------------------------------------------------------------------------------
# tracing what the decoder reads


@dataclass(frozen=True)
class Field:
    path: Path           # the section (possibly nested) whose payload holds the field
    offset: int          # in that payload
    size: int            # bytes the field occupies (a length prefix included for bytes_/str_)
    kind: str            # the ByteReader method: u8 ... f64, varint, bytes_, str_, raw, array
    parent: str | None   # the method it was read inside (a length prefix: bytes_; a shape: array)
    value: Any           # int/float value; content length for bytes_/str_/raw; shape for array


@dataclass
class Trace:
    fields: dict[tuple, Field] = field(default_factory=dict)

    def add(self, f: Field) -> None:
        self.fields.setdefault((f.path, f.offset, f.kind), f)

    def list(self) -> list[Field]:
        return sorted(self.fields.values(), key=lambda f: (f.path, f.offset, f.kind))


_READ_METHODS = ("u8", "u16", "u32", "u64", "i32", "i64", "f32", "f64", "varint", "bytes_", "str_", "raw", "array")


@contextlib.contextmanager
def tracing():
    """Record every ByteReader read from a section payload while the block runs (decode and info a valid file)."""
    trace = Trace()
    origins: dict[int, tuple[Path, int, Any]] = {}     # id(bytes) -> (path, offset, the object: keeps the id)
    stack: list[str] = []
    saved = {m: getattr(ByteReader, m) for m in _READ_METHODS}
    saved_init, saved_payload, saved_reader_init = ByteReader.__init__, C.Reader.payload, C.Reader.__init__

    def register(obj, path, offset):
        origins[id(obj)] = (path, offset, obj)

    def reader_init(self, data):
        o = origins.get(id(data))
        self._fz_path = o[0] if o is not None and o[1] == 0 else ()
        saved_reader_init(self, data)

    def payload(self, name):
        out = saved_payload(self, name)
        register(out, getattr(self, "_fz_path", ()) + (name,), 0)
        return out

    def br_init(self, data, what="data"):
        o = origins.get(id(data))
        self._fz = (o[0], o[1]) if o is not None else None
        saved_init(self, data, what)

    def wrap(name):
        orig = saved[name]

        def method(self, *a, **k):
            origin = getattr(self, "_fz", None)
            if origin is None:
                return orig(self, *a, **k)
            start = self._pos
            stack.append(name)
            try:
                v = orig(self, *a, **k)
            finally:
                stack.pop()
            path, base = origin
            size = self._pos - start
            if name in ("bytes_", "str_", "raw"):
                n = len(v.encode("utf-8")) if name == "str_" else len(v)
                if name != "str_":
                    register(v, path, base + self._pos - n)
                value = n
            elif name == "array":
                value = tuple(v.shape)
            else:
                value = v
            trace.add(Field(path, base + start, size, name, stack[-1] if stack else None, value))
            return v
        return method

    try:
        ByteReader.__init__ = br_init
        C.Reader.payload = payload
        C.Reader.__init__ = reader_init
        for m in _READ_METHODS:
            setattr(ByteReader, m, wrap(m))
        yield trace
    finally:
        ByteReader.__init__, C.Reader.payload, C.Reader.__init__ = saved_init, saved_payload, saved_reader_init
        for m, f in saved.items():
            setattr(ByteReader, m, f)


# ---------------------------------------------------------------------------------------------------------------
# edge values

_EDGE_INTS = [0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 63, 64, 127, 128, 255, 256, 1023, 1024, 4095, 4096, 65535, 65536,
              65537, 2**20, 2**24, 2**28, 2**30, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**48, 2**53, 2**62,
              2**63 - 1, 2**63, 2**64 - 1, -1, -2, -128, -(2**31), -(2**63)]
_EDGE_FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 1e-45, 1e-300, 1e38, 3.4e38, 1e300, -1e300, math.inf, -math.inf, math.nan]
_INT_RANGES = {"u8": (0, 255), "u16": (0, 2**16 - 1), "u32": (0, 2**32 - 1), "u64": (0, 2**64 - 1),
               "i32": (-(2**31), 2**31 - 1), "i64": (-(2**63), 2**63 - 1), "varint": (0, 2**64 - 1)}
_PACK = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q", "i32": "i", "i64": "q", "f32": "f", "f64": "d"}


def edge_int(rng: random.Random, v: int, lo: int, hi: int) -> int:
    """A value likely to break a bound: near the old one, a power of two, a type's limit, huge, or negative."""
    for _ in range(20):
        r = rng.random()
        if r < 0.3:
            x = v + rng.choice([-1, 1, -2, 2, rng.randint(-16, 16), v, -v, v * 2, v // 2, v * 10, v * 1000])
        elif r < 0.8:
            x = rng.choice(_EDGE_INTS)
        elif r < 0.9:
            x = (1 << rng.randint(0, 64)) + rng.choice([-1, 0, 1])
        else:
            x = rng.randint(lo, min(hi, max(2 * abs(v), 64)))
        if lo <= x <= hi and x != v:
            return x
    return lo if v != lo else hi


def edge_float(rng: random.Random, v: float) -> float:
    r = rng.random()
    if r < 0.7:
        return rng.choice(_EDGE_FLOATS)
    return rng.choice([-v, v * 2, v / 2, v * 1e6, v * 1e-6, v + 1])


def junk(rng: random.Random, n: int) -> bytes:
    if rng.random() < 0.3:
        return bytes([rng.choice([0x00, 0xFF, 0x80, 0x7F])]) * n
    return bytes(rng.getrandbits(8) for _ in range(n))


# ---------------------------------------------------------------------------------------------------------------
# the base a mutant starts from


@dataclass
class Base:
    """A valid file and what is known of it: its containers, traced fields, JSON sections and section names."""
    name: str
    data: bytes
    fields: list[Field]
    containers: list[Path] = field(default_factory=list)
    json_sections: list[Path] = field(default_factory=list)
    payload_sections: list[Path] = field(default_factory=list)
    codecs: list[str] = field(default_factory=list)   # codec names to swap in
    editable: list[Field] = field(default_factory=list)   # the fields field.edit picks from

    @classmethod
    def make(cls, name: str, data: bytes, fields: list[Field], codecs: list[str]) -> "Base":
        check_roundtrip(data)
        conts = containers(data)
        pay, js = [], []
        for path in conts:
            raw = data if not path else get_payload(data, path)
            for sec_name, _, p in parse(raw).sections:
                sp = path + (sec_name,)
                pay.append(sp)          # a nested file's bytes too: damage under a fixed outer CRC
                try:
                    if isinstance(json.loads(p.decode("utf-8")), (dict, list)):
                        js.append(sp)
                except (ValueError, UnicodeDecodeError):
                    pass
        # a varint's own bytes and the bytes_ inside a str_ are parts of one field: edited as that field
        editable = [f for f in fields if f.parent != "varint" and not (f.kind == "bytes_" and f.parent == "str_")]
        return cls(name, data, fields, conts, js, pay, codecs, editable)

    def operators(self) -> tuple[list[str], list[float]]:
        """The operators that apply to this base, and their weights."""
        ops = [(n, w) for n, w, _ in OPERATORS
               if not (n == "json.edit" and not self.json_sections) and not (n == "field.edit" and not self.editable)]
        return [n for n, _ in ops], [w for _, w in ops]


# ---------------------------------------------------------------------------------------------------------------
# operators: each takes (rng, base, data) -> (new data, description)


def _pos(rng: random.Random, data: bytes, base: Base) -> int:
    """A position, biased to the preamble/table and to section boundaries."""
    r = rng.random()
    if r < 0.2:
        return rng.randrange(min(len(data), 64))
    if r < 0.35:
        n = parse(base.data)
        bounds = [len(base.data) - sum(len(p) for _, _, p in n.sections)]
        for _, _, p in n.sections:
            bounds.append(bounds[-1] + len(p))
        return max(0, min(len(data) - 1, rng.choice(bounds) + rng.randint(-3, 3)))
    return rng.randrange(len(data))


def raw_bitflip(rng, base, data):
    b = bytearray(data)
    k = rng.choice([1, 1, 1, 2, 3, 8])
    where = []
    for _ in range(k):
        i = _pos(rng, data, base)
        b[i] ^= 1 << rng.randrange(8)
        where.append(i)
    return bytes(b), f"flip {k} bit(s) at {where[:4]}"


def raw_byte(rng, base, data):
    b = bytearray(data)
    i = _pos(rng, data, base)
    k = min(rng.choice([1, 1, 2, 4, 8]), len(b) - i)
    b[i:i + k] = junk(rng, k)
    return bytes(b), f"overwrite {k} byte(s) at {i}"


def raw_truncate(rng, base, data):
    i = _pos(rng, data, base) if rng.random() < 0.7 else len(data) - rng.randint(1, 8)
    return data[:max(0, i)], f"truncate to {max(0, i)} of {len(data)} bytes"


def raw_append(rng, base, data):
    if rng.random() < 0.1:
        return data + data, "append a copy of the file"
    k = rng.choice([1, 4, 16, 256, 4096])
    return data + junk(rng, k), f"append {k} junk bytes"


def raw_insert_delete(rng, base, data):
    i = _pos(rng, data, base)
    k = rng.choice([1, 1, 2, 4, 16])
    if rng.random() < 0.5:
        return data[:i] + junk(rng, k) + data[i:], f"insert {k} bytes at {i}"
    return data[:i] + data[i + k:], f"delete {k} bytes at {i}"


def _container(rng, base) -> Path:
    return rng.choice(base.containers)


def hdr_int(rng, base, data):
    path = _container(rng, base)
    desc = []

    def fn(n: Ncb):
        ints = [e for e in n.header if e[1] == C.T_INT]
        if not ints:
            return
        e = rng.choice(ints)
        new = edge_int(rng, e[2], -(2**63), 2**63 - 1)
        desc.append(f"header {e[0]} {e[2]} -> {new}")
        e[2] = new
    return edit_container(data, path, fn), f"{_where(path)}{''.join(desc) or 'no int header'}"


def hdr_other(rng, base, data):
    path = _container(rng, base)
    desc = []

    def fn(n: Ncb):
        r = rng.random()
        e = rng.choice(n.header) if n.header else None
        if e is None or r < 0.15:
            key = rng.choice(["kind", "width", "frames", "count", "videos", "segments", "batch", "x" * 64, "zz"])
            n.header.append([key, C.T_INT, rng.choice([0, 1, 7, 2**40])])
            desc.append(f"add header {key}")
        elif r < 0.3:
            n.header.remove(e)
            desc.append(f"drop header {e[0]}")
        elif r < 0.55:       # another type: the same value as float/str/bytes, or an unknown type code
            code = rng.choice([C.T_INT, C.T_FLOAT, C.T_STR, C.T_BYTES, 4, 255])
            old = e[2]
            if code == C.T_INT:
                v = int(old) if isinstance(old, (int, float)) and math.isfinite(old) else len(old)
            elif code == C.T_FLOAT:
                v = float(old) if isinstance(old, (int, float)) else 1.0
            elif code == C.T_STR:
                v = str(old) if not isinstance(old, bytes) else old.hex()
            elif code == C.T_BYTES:
                v = str(old).encode()
            else:
                v = b""
            e[1], e[2] = code, v
            desc.append(f"header {e[0]} as type {code}")
        elif r < 0.65:
            n.header.append(list(e))
            desc.append(f"duplicate header {e[0]}")
        elif e[1] == C.T_STR:
            v = rng.choice(["", "video", "images", "features", "yuv420p", "x" * 33, "x" * 4096, "\u00e9" * 3,
                            e[2][:-1], e[2] + "0"])
            desc.append(f"header {e[0]} {e[2]!r} -> {v[:20]!r}")
            e[2] = v
        elif e[1] == C.T_BYTES:
            v = rng.choice([b"", e[2][:-1], e[2] + b"\0", bytes(len(e[2])), bytes([e[2][0] ^ 1]) + e[2][1:]])
            desc.append(f"header {e[0]} bytes edited ({len(e[2])} -> {len(v)})")
            e[2] = v
        elif e[1] == C.T_FLOAT:
            v = edge_float(rng, e[2])
            desc.append(f"header {e[0]} -> {v}")
            e[2] = v
        else:
            e[2] = edge_int(rng, e[2], -(2**63), 2**63 - 1)
            desc.append(f"header {e[0]} -> {e[2]}")
    return edit_container(data, path, fn), _where(path) + "".join(desc)


def table_codec(rng, base, data):
    path = _container(rng, base)
    desc = []

    def fn(n: Ncb):
        r = rng.random()
        if r < 0.4:
            new = rng.choice(base.codecs + ["", "x", "nope", "NERV", "a" * 65])
            desc.append(f"codec {n.codec!r} -> {new!r}")
            n.codec = new
        elif r < 0.7:
            new = edge_int(rng, n.version, 0, 2**64 - 1)
            desc.append(f"codec version {n.version} -> {new}")
            n.version = new
        elif r < 0.85:
            n.major, n.minor = rng.choice([(0, 0), (1, 1), (2, 0), (1, 65535), (65535, 0)])
            desc.append(f"format {n.major}.{n.minor}")
        else:
            n.extension = junk(rng, rng.choice([1, 8, 64]))
            if rng.random() < 0.5:
                n.minor = 1
            desc.append(f"table extension of {len(n.extension)} bytes, format {n.major}.{n.minor}")
    return edit_container(data, path, fn), _where(path) + "".join(desc)


def _section_names(n: Ncb) -> list[str]:
    return [s[0] for s in n.sections]


def _other_name(rng, names: list[str]) -> str:
    """A plausible section name: the next index of a numbered family, a known name, or junk."""
    name = rng.choice(names) if names else "x"
    head, sep, tail = name.rpartition("/")
    cands = ["config", "weights", "embed", "steps", "pixels", "names", "latents", "segments", "zz", "a" * 128,
             "s1/meta", "s3/mask", "group/9", "segment/2", "segment/01", "group/-1", "s0/head", "s99999/meta"]
    if sep and tail.isdigit():
        cands += [f"{head}/{int(tail) + 1}", f"{head}/{int(tail) + 1000}", f"{head}/0{tail}"]
    if name.startswith("s") and "/" in name:
        k = name[1:name.index("/")]
        if k.isdigit():
            cands += [f"s{int(k) + 1}{name[name.index('/'):]}"]
    return rng.choice(cands)


def sec_edit(rng, base, data):
    path = _container(rng, base)
    desc = []

    def fn(n: Ncb):
        secs = n.sections
        if not secs:
            return
        r = rng.random()
        s = rng.choice(secs)
        if r < 0.2:
            secs.remove(s)
            desc.append(f"drop section {s[0]}")
        elif r < 0.35:
            new = [_other_name(rng, _section_names(n)), s[1], s[2]]
            secs.insert(rng.randrange(len(secs) + 1), new)
            desc.append(f"copy section {s[0]} as {new[0]}")
        elif r < 0.5 and len(secs) > 1:
            t = rng.choice([x for x in secs if x is not s])
            s[2], t[2] = t[2], s[2]
            desc.append(f"swap payloads of {s[0]} and {t[0]}")
        elif r < 0.6 and len(secs) > 1:
            rng.shuffle(secs)
            desc.append("reorder sections")
        elif r < 0.75:
            old = s[1]
            s[1] = rng.choice([0, 1, 2, 3, 0x80, 0xFF])
            desc.append(f"section {s[0]} flags {old} -> {s[1]}")
        elif r < 0.9:
            old = s[0]
            s[0] = _other_name(rng, _section_names(n))
            desc.append(f"rename section {old} -> {s[0]}")
        else:
            s[2] = b""
            desc.append(f"empty section {s[0]}")
    return edit_container(data, path, fn), _where(path) + "".join(desc)


def _where(path: Path) -> str:
    return f"[{'/'.join(path)}] " if path else ""


def pay_bytes(rng, base, data):
    path = rng.choice(base.payload_sections)
    p = bytearray(get_payload(data, path))
    r = rng.random()
    if not p or r < 0.1:
        k = rng.choice([1, 4, 64])
        new, desc = bytes(p) + junk(rng, k), f"append {k} bytes"
    elif r < 0.4:
        k = rng.choice([1, 1, 2, 4])
        for _ in range(k):
            i = rng.randrange(len(p))
            p[i] ^= 1 << rng.randrange(8)
        new, desc = bytes(p), f"flip {k} bit(s)"
    elif r < 0.6:
        i = rng.randrange(len(p))
        k = min(rng.choice([1, 2, 4, 8, 32]), len(p) - i)
        p[i:i + k] = junk(rng, k)
        new, desc = bytes(p), f"overwrite {k} byte(s) at {i}"
    elif r < 0.75:
        i = rng.randrange(len(p))
        new, desc = bytes(p[:i]), f"cut to {i} of {len(p)} bytes"
    elif r < 0.9:
        i = rng.randrange(len(p) + 1)
        k = rng.choice([1, 2, 4, 16])
        new, desc = bytes(p[:i]) + junk(rng, k) + bytes(p[i:]), f"insert {k} bytes at {i}"
    else:
        i = rng.randrange(len(p))
        k = rng.choice([1, 2, 4, 16])
        new, desc = bytes(p[:i] + p[i + k:]), f"delete {k} bytes at {i}"
    return set_payload(data, path, new), f"section {'/'.join(path)}: {desc} (CRC fixed)"


def _replace(payload: bytes, fields: list[Field], f: Field, new: bytes, fix_lengths: bool) -> bytes:
    """Put `new` in place of field `f`; with fix_lengths, every bytes_/str_ field whose content holds it gets its
    length prefix rewritten (innermost first, since a rewritten prefix may change length itself)."""
    edits = [(f.offset, f.size, new)]
    if fix_lengths:
        delta = len(new) - f.size
        chain = []
        for g in fields:
            if g.path != f.path or g.kind != "bytes_" or g is f:
                continue
            content = g.offset + g.size - g.value
            inside = content <= f.offset and f.offset + f.size <= content + g.value
            if inside and (g.offset, g.size) != (f.offset, f.size):
                chain.append(g)
        for g in sorted(chain, key=lambda g: -(g.offset + g.size - g.value)):     # innermost content first
            prefix = leb128(g.value + delta)
            old_prefix = g.size - g.value
            edits.append((g.offset, old_prefix, prefix))
            delta += len(prefix) - old_prefix
    out = bytearray(payload)
    for off, size, b in sorted(edits, key=lambda e: -e[0]):
        out[off:off + size] = b
    return bytes(out)


def _encode_int(kind: str, v: int) -> bytes:
    if kind == "varint":
        return leb128(v)
    return struct.pack("<" + _PACK[kind], v)


def field_edit(rng, base, data):
    f = rng.choice(base.editable)
    payload = get_payload(data, f.path)
    fix = rng.random() < 0.85
    where = f"{'/'.join(f.path)}@{f.offset} {f.kind}" + (f" in {f.parent}" if f.parent else "")
    if f.kind in _INT_RANGES:
        lo, hi = _INT_RANGES[f.kind]
        r = rng.random()
        if f.kind == "varint" and r < 0.08:       # the same value, over-long: 11 bytes are refused, 10 are not
            k = rng.choice([2, 10, 11])
            raw = bytearray(leb128(f.value))
            while len(raw) < k:
                raw[-1] |= 0x80
                raw.append(0)
            new, desc = bytes(raw), f"{f.value} as a {k}-byte varint"
        else:
            v = edge_int(rng, f.value, lo, hi)
            new, desc = _encode_int(f.kind, v), f"{f.value} -> {v}"
    elif f.kind in ("f32", "f64"):
        v = edge_float(rng, f.value)
        fmt = "<" + _PACK[f.kind]
        try:
            new = struct.pack(fmt, v)
        except OverflowError:
            new = struct.pack(fmt, math.inf)
        desc = f"{f.value:.4g} -> {v}"
    elif f.kind in ("bytes_", "str_"):
        prefix = f.size - f.value
        content = payload[f.offset + prefix:f.offset + f.size]
        r = rng.random()
        if r < 0.25:
            c = content[:rng.randrange(len(content) + 1)] if content else b""
        elif r < 0.45:
            c = content + junk(rng, rng.choice([1, 4, 64]))
        elif r < 0.6 and content:
            c = bytearray(content)
            c[rng.randrange(len(c))] ^= 1 << rng.randrange(8)
            c = bytes(c)
        elif r < 0.7:
            c = b""
        elif r < 0.8 and f.kind == "str_":
            c = rng.choice([b"\xff\xfe", "\u00e9".encode() * 100, b"x" * 300])
        else:
            others = [g for g in base.fields if g.kind == f.kind and g.path == f.path and g.offset != f.offset]
            g = rng.choice(others) if others else f
            c = payload[g.offset + g.size - g.value:g.offset + g.size]
        new, desc = leb128(len(c)) + c, f"content {len(content)} -> {len(c)} bytes"
    elif f.kind == "raw" or f.kind == "array":
        region = bytearray(payload[f.offset:f.offset + f.size])
        data_start = 0
        if f.kind == "array":            # dtype, ndim, dims precede the values
            data_start = 2 + sum(len(leb128(d)) for d in f.value)
        if len(region) <= data_start:
            return pay_bytes(rng, base, data)
        i = rng.randrange(data_start, len(region))
        k = min(rng.choice([1, 4, 8]), len(region) - i)
        region[i:i + k] = junk(rng, k)
        new, desc, fix = bytes(region), f"values overwritten at +{i}", False
    else:
        return pay_bytes(rng, base, data)
    out = _replace(payload, base.fields, f, new, fix)
    return set_payload(data, f.path, out), f"field {where}: {desc}" + ("" if fix else " (lengths left)")


def _json_paths(v: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(v, dict):
        for k, x in v.items():
            out += _json_paths(x, path + (k,))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            out += _json_paths(x, path + (i,))
    return out


def _json_get(v, path):
    for p in path:
        v = v[p]
    return v


def _json_value(rng, old: Any) -> Any:
    r = rng.random()
    if isinstance(old, bool) or old is None:
        return rng.choice([0, 1, "true", None, True, False, []])
    if isinstance(old, int) and r < 0.75:
        return edge_int(rng, old, -(2**63), 2**64)
    if isinstance(old, float) and r < 0.75:
        return edge_float(rng, old)
    if isinstance(old, str) and r < 0.75:
        return rng.choice(["", "gelu", "relu", "silu", "tanh", "x" * 1000, old + "x", old.upper(), "1", "NaN"])
    return rng.choice([0, -1, 1, 4096, 65536, 2**31, 2**63, 1e308, -0.5, 0.5, math.nan, math.inf, True, None, "1",
                       [], {}, [1], [2**31], [0] * 64])


_DROPPED = object()


def json_edit(rng, base, data):
    path = rng.choice(base.json_sections)
    text = get_payload(data, path)
    conf = json.loads(text.decode("utf-8"))
    r = rng.random()
    sync = None
    if r < 0.06:        # a nesting bomb or a huge config in place of the whole section
        depth = rng.choice([1000, 100000])
        new = rng.choice([b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth,
                          b" " * (1 << 16) + text, b'{"model":' + b"[" * depth + b"]" * depth + b"}"])
        desc = f"nesting/size bomb of {len(new)} bytes"
    elif r < 0.12:
        cut = rng.randrange(len(text))
        new = rng.choice([text[:cut], text[:cut] + b"\xff" + text[cut:], text.replace(b":", b"=", 1)])
        desc = "broken JSON text"
    else:
        paths = _json_paths(conf)
        p = rng.choice(paths[1:] or paths)
        old = _json_get(conf, p)
        parent = _json_get(conf, p[:-1]) if p else None
        r2 = rng.random()
        if isinstance(old, list) and r2 < 0.5:
            choice = rng.random()
            if choice < 0.3:
                val = old + [copy.deepcopy(old[-1]) if old else 1] * rng.choice([1, 2, 10])
            elif choice < 0.6:
                val = old[:rng.randrange(len(old) + 1)] if old else []
            elif choice < 0.8:
                val = [copy.deepcopy(old[0]) if old else 1] * rng.choice([64, 10000])
            else:
                val = [rng.choice([0, -1, 2**31, 1.5, "x", None])] * max(1, len(old))
            desc = f"list {'.'.join(map(str, p))} of {len(old)} -> {len(val)}"
        elif isinstance(parent, dict) and r2 < 0.6:
            del parent[p[-1]]
            val, desc = _DROPPED, f"drop key {'.'.join(map(str, p))}"
        elif isinstance(parent, dict) and r2 < 0.65:
            parent[str(p[-1]) + "_x"] = parent.pop(p[-1])
            val, desc = _DROPPED, f"rename key {'.'.join(map(str, p))}"
        else:
            val = _json_value(rng, old)
            desc = f"{'.'.join(map(str, p))}: {str(old)[:30]} -> {str(val)[:30]}"
        if val is not _DROPPED:
            if not p:
                conf = val
            else:
                parent[p[-1]] = val
        if p and p[-1] in ("width", "height", "frames") and isinstance(val, int) and rng.random() < 0.5:
            sync = (p[-1], val)
        new = json.dumps(conf, separators=(",", ":")).encode()
    out = set_payload(data, path, new)
    if sync is not None:       # keep the header in step with the config, so the edit reaches the network's build
        key, v = sync

        def fn(n: Ncb):
            for e in n.header:
                if e[0] == key and e[1] == C.T_INT and -(2**63) <= v < 2**63:
                    e[2] = v
        out = edit_container(out, path[:-1], fn)
        desc += f" (header {key} too)"
    return out, f"json {'/'.join(path)}: {desc}"


# name, weight, operator
OPERATORS: list[tuple[str, float, Callable]] = [
    ("raw.bitflip", 6, raw_bitflip),
    ("raw.byte", 4, raw_byte),
    ("raw.truncate", 4, raw_truncate),
    ("raw.append", 2, raw_append),
    ("raw.insert_delete", 2, raw_insert_delete),
    ("hdr.int", 10, hdr_int),
    ("hdr.other", 6, hdr_other),
    ("table.codec", 4, table_codec),
    ("sec.edit", 8, sec_edit),
    ("pay.bytes", 14, pay_bytes),
    ("field.edit", 28, field_edit),
    ("json.edit", 12, json_edit),
]
_FUNCS = {o[0]: o[2] for o in OPERATORS}


def mutate(base: Base, rng: random.Random) -> tuple[bytes, str, str]:
    """(mutant bytes, operator family of the first step, description). One step usually; two or three sometimes,
    so that combined edits (a count and the data it counts) reach deeper code."""
    steps = 1 if rng.random() < 0.85 else rng.choice([2, 3])
    data, descs, first = base.data, [], None
    names, weights = base.operators()
    for i in range(steps):
        name = rng.choices(names, weights)[0]
        if i and name.startswith("raw."):       # later steps keep the file parseable
            name = "field.edit"
        try:
            data, desc = _FUNCS[name](rng, base, data)
        except (ValueError, KeyError, IndexError, RecursionError) as e:    # an earlier step left nothing to parse
            if i == 0:
                raise RuntimeError(f"{name} failed on the base {base.name}: {e!r}") from e
            break
        first = first or name
        descs.append(f"{name}: {desc}")
    if rng.random() < 0.8:                  # mostly as an attacker writes it; else as damage the digests must catch
        fixed = fix_digests(data)
        if fixed != data:
            data = fixed
            descs.append("digests recomputed")
    return data, first, " + ".join(descs)
