"""The .ncb file: magic, format version, codec name/version, typed header, CRC-checked sections.

Layout (docs/FORMAT.md is the byte-level spec; this module is its one implementation):

    preamble (16 bytes)   magic "NCB\\0" | format major u16 | minor u16 | table length u32 | table CRC32 u32
    table                 codec, codec version, header entries, section entries (name, flags, length, CRC32)
    payloads              the sections' bytes, back to back in table order; the file ends with the last one

Every size in the file is checked against the bytes that remain and against the limits below before anything is
allocated, so a malformed or hostile file costs at most a few kilobytes of memory and then a BitstreamError.
A section's CRC is checked only when its payload is asked for: one damaged section leaves the others decodable.
"""
from __future__ import annotations

import hashlib
import os
import re
import stat
import zlib
from dataclasses import dataclass
from typing import Callable, Union

import numpy as np

from bitstream.atomic import write_atomic
from bitstream.errors import BitstreamError
from bitstream.serial import ByteReader, ByteWriter

MAGIC = b"NCB\x00"
FORMAT_MAJOR = 1
FORMAT_MINOR = 0
PREAMBLE_SIZE = 16                    # magic 4, major 2, minor 2, table length 4, table CRC 4

# Limits: every one is checked on both sides (the Writer refuses to write what the Reader would refuse to read).
MAX_FILE_SIZE = 2**32                 # 4 GiB, the whole file
MAX_TABLE_SIZE = 4 * 2**20            # the table (codec, header, section entries) in bytes
MAX_CODEC_NAME = 64                   # bytes
MAX_CODEC_VERSION = 2**32 - 1
MAX_HEADER_ENTRIES = 256
MAX_KEY_LENGTH = 64                   # bytes, header keys
MAX_STR_VALUE = 4096                  # bytes, UTF-8 encoded
MAX_BYTES_VALUE = 65536
MAX_SECTIONS = 16384
MAX_SECTION_NAME = 128                # bytes
MAX_DIM = 65536                       # any width, height or latent size
MAX_COUNT = 10**7                     # frames, images or feature maps
MAX_CHANNELS = 256                    # image channels
MAX_SAMPLES = 2**40                   # product of all dimensions of the content
MAX_FPS_TERM = 2**31 - 1              # fps_num and fps_den
MAX_PIX_FMT = 32                      # bytes

# Value type codes in the header.
T_INT, T_FLOAT, T_STR, T_BYTES = 0, 1, 2, 3
FLAG_REQUIRED = 0x01

# Section digests (optional, docs/FORMAT.md): a last section "sha256" holds u8 L, then the first L bytes of the
# SHA-256 of each earlier section's payload, in table order; a reader that registers them checks each section
# against its digest when its payload is read, so damage that a recomputed CRC hides is still refused.
DIGEST_SECTION = "sha256"
DIGEST_BYTES = 8                      # what Writer.add_digests stores per section; readers take 8..32

CODEC_NAME_RE = re.compile(r"[A-Za-z0-9_.+-]+")
NAME_RE = re.compile(r"[A-Za-z0-9_.:/+-]+")    # section names and header keys

HeaderValue = Union[int, float, str, bytes]

# kind -> (int fields with their [min, max], str fields with their max length in bytes). Each field is required.
# Besides, the content's samples in all (the product of _SIZE_FIELDS, x3 for video: a pixel format carries at most
# three full planes) must stay <= MAX_SAMPLES, so a tiny file cannot make a decoder allocate for a huge claim.
KINDS: dict[str, tuple[dict[str, tuple[int, int]], dict[str, int]]] = {
    "video": ({"width": (1, MAX_DIM), "height": (1, MAX_DIM), "frames": (1, MAX_COUNT),
               "fps_num": (1, MAX_FPS_TERM), "fps_den": (1, MAX_FPS_TERM)}, {"pix_fmt": MAX_PIX_FMT}),
    "images": ({"count": (1, MAX_COUNT), "height": (1, MAX_DIM), "width": (1, MAX_DIM),
                "channels": (1, MAX_CHANNELS)}, {}),
    "features": ({"count": (1, MAX_COUNT), "latent_c": (1, MAX_DIM), "latent_h": (1, MAX_DIM),
                  "latent_w": (1, MAX_DIM)}, {}),
}
_SIZE_FIELDS = {"video": ("width", "height", "frames"), "images": ("count", "height", "width", "channels"),
                "features": ("count", "latent_c", "latent_h", "latent_w")}
_SAMPLES_PER_ELEMENT = {"video": 3, "images": 1, "features": 1}


@dataclass(frozen=True)
class Section:
    """One entry of the section table; `offset` is from the start of the file."""
    name: str
    required: bool
    offset: int
    length: int
    crc32: int


def _check_name(name: str, max_len: int, what: str, pattern: re.Pattern, err: type[Exception]) -> None:
    n = len(name.encode("utf-8"))
    if not 1 <= n <= max_len:
        raise err(f"{what} {name!r}: length {n} is not in [1, {max_len}]")
    if not pattern.fullmatch(name):
        raise err(f"{what} {name!r}: only the characters {pattern.pattern[:-1]} are allowed")


def check_header(header: dict[str, HeaderValue], err: type[Exception] = BitstreamError) -> None:
    """Check the `kind` conventions: the fields exist, have the right types, and claim a sane amount of content."""
    if "kind" not in header:
        return
    kind = header["kind"]
    if not isinstance(kind, str) or kind not in KINDS:
        raise err(f"header: kind {kind!r} is not one of {', '.join(KINDS)}")
    ints, strs = KINDS[kind]
    for key, (lo, hi) in ints.items():
        v = header.get(key)
        if type(v) is not int:
            raise err(f"header: {kind} needs an int {key!r}, found {_describe(v)}")
        if not lo <= v <= hi:
            raise err(f"header: {key} = {v} is out of range [{lo}, {hi}] for kind {kind!r}")
    for key, max_len in strs.items():
        v = header.get(key)
        if not isinstance(v, str):
            raise err(f"header: {kind} needs a str {key!r}, found {_describe(v)}")
        if not 1 <= len(v.encode("utf-8")) <= max_len:
            raise err(f"header: {key} {v!r} must be 1 to {max_len} bytes long")
    samples = _SAMPLES_PER_ELEMENT[kind]
    for key in _SIZE_FIELDS[kind]:
        samples *= header[key]
    if samples > MAX_SAMPLES:
        dims = "x".join(str(header[k]) for k in _SIZE_FIELDS[kind])
        raise err(f"header: {kind} of {dims} claims {samples} samples, "
                  f"over the limit 2^{MAX_SAMPLES.bit_length() - 1}")


def _zigzag(v: int) -> int:
    """Signed 64-bit -> unsigned, small magnitudes small: 0, -1, 1, -2 ... -> 0, 1, 2, 3 ..."""
    return (v << 1) ^ (v >> 63)


def _unzigzag(u: int) -> int:
    return (u >> 1) ^ -(u & 1)


def _describe(v) -> str:
    return "nothing" if v is None else f"{type(v).__name__} {v!r}"[:80]


def _normalise_value(key: str, v) -> HeaderValue:
    """Python/numpy scalars -> the four stored types; anything else is the caller's mistake."""
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"header {key!r}: bool is not a stored type; use an int")
    if isinstance(v, (int, np.integer)):
        v = int(v)
        if not -2**63 <= v < 2**63:
            raise ValueError(f"header {key!r}: int {v} does not fit in 64 bits")
        return v
    if isinstance(v, (float, np.floating)):
        return float(v)
    if isinstance(v, str):
        if len(v.encode("utf-8")) > MAX_STR_VALUE:
            raise ValueError(f"header {key!r}: str longer than {MAX_STR_VALUE} bytes")
        return v
    if isinstance(v, (bytes, bytearray, memoryview)):
        v = bytes(v)
        if len(v) > MAX_BYTES_VALUE:
            raise ValueError(f"header {key!r}: bytes longer than {MAX_BYTES_VALUE}")
        return v
    raise TypeError(f"header {key!r}: {type(v).__name__} is not one of int, float, str, bytes")


class Writer:
    """Collects a header and sections, then writes one .ncb file."""

    def __init__(self, codec: str, codec_version: int, header: dict[str, HeaderValue]) -> None:
        _check_name(codec, MAX_CODEC_NAME, "codec name", CODEC_NAME_RE, ValueError)
        if type(codec_version) is not int or not 0 <= codec_version <= MAX_CODEC_VERSION:
            raise ValueError(f"codec version {codec_version!r} is not an int in [0, {MAX_CODEC_VERSION}]")
        if len(header) > MAX_HEADER_ENTRIES:
            raise ValueError(f"header has {len(header)} entries, over the limit {MAX_HEADER_ENTRIES}")
        self.codec = codec
        self.codec_version = codec_version
        self.header: dict[str, HeaderValue] = {}
        for key, v in header.items():
            if not isinstance(key, str):
                raise TypeError(f"header key {key!r} is not a str")
            _check_name(key, MAX_KEY_LENGTH, "header key", NAME_RE, ValueError)
            self.header[key] = _normalise_value(key, v)
        check_header(self.header, ValueError)
        self._sections: dict[str, tuple[bytes, bool]] = {}
        self._sealed = False

    def add_section(self, name: str, payload: bytes, *, required: bool = True) -> None:
        """Append a section; `required` sections must be understood by the decoder, optional ones may be skipped."""
        _check_name(name, MAX_SECTION_NAME, "section name", NAME_RE, ValueError)
        if self._sealed:
            raise ValueError(f"section {name!r} added after the digests (add_digests comes last)")
        if name in self._sections:
            raise ValueError(f"section {name!r} added twice")
        if len(self._sections) >= MAX_SECTIONS:
            raise ValueError(f"more than {MAX_SECTIONS} sections")
        payload = bytes(payload)
        if len(payload) > MAX_FILE_SIZE:
            raise ValueError(f"section {name!r}: {len(payload)} bytes exceed the file size limit {MAX_FILE_SIZE}")
        self._sections[name] = (payload, bool(required))

    def add_digests(self, length: int = DIGEST_BYTES) -> None:
        """Append the optional "sha256" section: a digest of every section added so far (the last section)."""
        if not 8 <= length <= 32:
            raise ValueError(f"digest length {length} is not in 8..32")
        digests = b"".join(hashlib.sha256(p).digest()[:length] for p, _ in self._sections.values())
        self.add_section(DIGEST_SECTION, bytes([length]) + digests, required=False)
        self._sealed = True

    def to_bytes(self) -> bytes:
        t = ByteWriter()
        t.str_(self.codec)
        t.varint(self.codec_version)
        t.varint(len(self.header))
        for key, v in self.header.items():
            t.str_(key)
            if isinstance(v, int):
                t.u8(T_INT)
                t.varint(_zigzag(v))
            elif isinstance(v, float):
                t.u8(T_FLOAT)
                t.f64(v)
            elif isinstance(v, str):
                t.u8(T_STR)
                t.str_(v)
            else:
                t.u8(T_BYTES)
                t.bytes_(v)
        t.varint(len(self._sections))
        for name, (payload, required) in self._sections.items():
            t.str_(name)
            t.u8(FLAG_REQUIRED if required else 0)
            t.varint(len(payload))
            t.u32(zlib.crc32(payload))
        table = t.getvalue()
        if len(table) > MAX_TABLE_SIZE:
            raise ValueError(f"header table of {len(table)} bytes exceeds the limit {MAX_TABLE_SIZE}")
        size = PREAMBLE_SIZE + len(table) + sum(len(p) for p, _ in self._sections.values())
        if size > MAX_FILE_SIZE:
            raise ValueError(f"file of {size} bytes exceeds the limit {MAX_FILE_SIZE}")
        pre = ByteWriter()
        pre.raw(MAGIC)
        pre.u16(FORMAT_MAJOR)
        pre.u16(FORMAT_MINOR)
        pre.u32(len(table))
        head = pre.getvalue()
        pre.u32(zlib.crc32(table, zlib.crc32(head)))
        return b"".join([pre.getvalue(), table, *(p for p, _ in self._sections.values())])

    def write(self, path: str | os.PathLike) -> int:
        """Write the file atomically (temporary file + rename); returns the bytes written."""
        return write_atomic(path, self.to_bytes())


class Reader:
    """A parsed .ncb file: framing and header are validated on opening, section payloads when asked for."""

    codec: str
    codec_version: int
    format_version: tuple[int, int]
    header: dict[str, HeaderValue]
    sections: list[Section]
    file_size: int

    def __init__(self, data: bytes) -> None:
        """Use from_bytes / from_path."""
        self._data = data
        self._digests: dict[str, bytes] = {}
        self.file_size = len(data)
        if self.file_size > MAX_FILE_SIZE:
            raise BitstreamError(f"file of {self.file_size} bytes exceeds the limit {MAX_FILE_SIZE}")
        self._parse_preamble()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> "Reader":
        return cls(bytes(data))

    @classmethod
    def from_path(cls, path: str | os.PathLike) -> "Reader":
        """Read and parse a file; OSError (missing, a folder, unreadable) propagates for the CLI to report."""
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise OSError(f"{os.fspath(path)}: not a regular file")
            if st.st_size > MAX_FILE_SIZE:
                raise BitstreamError(f"{os.fspath(path)}: file of {st.st_size} bytes exceeds the limit "
                                     f"{MAX_FILE_SIZE} of an .ncb file")
            data = f.read(st.st_size + 1)        # bounded even if the file grows meanwhile; +1 shows it did
        return cls(data)

    def _parse_preamble(self) -> None:
        data = self._data
        if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
            raise BitstreamError("not an ncodec file (bad magic)")
        if len(data) < PREAMBLE_SIZE:
            raise BitstreamError(f"preamble: truncated ({len(data)} bytes, needs {PREAMBLE_SIZE})")
        r = ByteReader(data[:PREAMBLE_SIZE], "preamble")
        r.raw(len(MAGIC))
        major, minor = r.u16(), r.u16()
        if major > FORMAT_MAJOR:
            raise BitstreamError(f"file format {major}.x is newer than this ncodec supports "
                                 f"({FORMAT_MAJOR}.x): upgrade ncodec")
        if major < 1:
            raise BitstreamError(f"file format {major}.{minor} is not a valid ncodec format version")
        self.format_version = (major, minor)
        table_len, table_crc = r.u32(), r.u32()
        if table_len > MAX_TABLE_SIZE:
            raise BitstreamError(f"header table length {table_len} exceeds the limit {MAX_TABLE_SIZE}")
        if table_len > len(data) - PREAMBLE_SIZE:
            raise BitstreamError(f"header table length {table_len} runs past the end of the file "
                                 f"({len(data)} bytes)")
        table = data[PREAMBLE_SIZE:PREAMBLE_SIZE + table_len]
        crc = zlib.crc32(table, zlib.crc32(data[:PREAMBLE_SIZE - 4]))
        if crc != table_crc:
            raise BitstreamError(f"header table: checksum mismatch (stored {table_crc:#010x}, computed {crc:#010x}): "
                                 "the file is damaged")
        self._parse_table(ByteReader(table, "header table"), PREAMBLE_SIZE + table_len)

    def _parse_table(self, r: ByteReader, payload_start: int) -> None:
        r.what = "codec name"
        self.codec = r.str_(MAX_CODEC_NAME)
        _check_name(self.codec, MAX_CODEC_NAME, "codec name", CODEC_NAME_RE, BitstreamError)
        r.what = "codec version"
        self.codec_version = r.varint(MAX_CODEC_VERSION)

        r.what = "header entry count"
        count = r.varint(MAX_HEADER_ENTRIES)
        self.header = {}
        for i in range(count):
            r.what = f"header entry {i} key"
            key = r.str_(MAX_KEY_LENGTH)
            _check_name(key, MAX_KEY_LENGTH, f"header entry {i} key", NAME_RE, BitstreamError)
            if key in self.header:
                raise BitstreamError(f"header: key {key!r} appears twice")
            r.what = f"header {key!r}"
            code = r.u8()
            if code == T_INT:
                self.header[key] = _unzigzag(r.varint(2**64 - 1))
            elif code == T_FLOAT:
                self.header[key] = r.f64()
            elif code == T_STR:
                self.header[key] = r.str_(MAX_STR_VALUE)
            elif code == T_BYTES:
                self.header[key] = r.bytes_(MAX_BYTES_VALUE)
            else:
                raise BitstreamError(f"header {key!r}: unknown value type {code}")
        check_header(self.header)

        r.what = "section count"
        count = r.varint(MAX_SECTIONS)
        self.sections = []
        self._by_name: dict[str, Section] = {}
        offset = payload_start
        for i in range(count):
            r.what = f"section {i} name"
            name = r.str_(MAX_SECTION_NAME)
            _check_name(name, MAX_SECTION_NAME, f"section {i} name", NAME_RE, BitstreamError)
            if name in self._by_name:
                raise BitstreamError(f"section {name!r} appears twice")
            r.what = f"section {name!r}"
            flags = r.u8()
            if flags & ~FLAG_REQUIRED:
                raise BitstreamError(f"section {name!r}: unknown flags {flags:#04x}")
            length = r.varint(MAX_FILE_SIZE)
            crc = r.u32()
            if length > self.file_size - offset:
                raise BitstreamError(f"section {name!r}: {length} bytes at offset {offset} run past the end "
                                     f"of the file ({self.file_size} bytes): truncated or damaged")
            sec = Section(name, bool(flags & FLAG_REQUIRED), offset, length, crc)
            self.sections.append(sec)
            self._by_name[name] = sec
            offset += length
        if r.remaining() and self.format_version[1] <= FORMAT_MINOR:
            # A newer minor version may append fields to the table that this reader skips; ours may not.
            raise BitstreamError(f"header table: {r.remaining()} unexpected bytes after the section list")
        if offset != self.file_size:
            raise BitstreamError(f"{self.file_size - offset} unexpected bytes after the last section")

    def has(self, name: str) -> bool:
        return name in self._by_name

    def section(self, name: str) -> Section:
        if name not in self._by_name:
            raise BitstreamError(f"section {name!r} is missing from this {self.codec} file")
        return self._by_name[name]

    def payload(self, name: str) -> bytes:
        """The section's bytes, its CRC32 checked now: a damaged section fails alone."""
        sec = self.section(name)
        view = memoryview(self._data)[sec.offset:sec.offset + sec.length]
        crc = zlib.crc32(view)
        if crc != sec.crc32:
            raise BitstreamError(f"section {name!r}: checksum mismatch (stored {sec.crc32:#010x}, "
                                 f"computed {crc:#010x}): the section is damaged")
        want = self._digests.get(name)
        if want is not None and hashlib.sha256(view).digest()[:len(want)] != want:
            raise BitstreamError(f"section {name!r}: its SHA-256 differs from the file's digest of it: the section "
                                 f"is damaged")
        return bytes(view)

    def read_digests(self) -> None:
        """Register the file's section digests (its "sha256" section, if any) so that `payload` checks them; a
        malformed digest section is a BitstreamError. Files without one read as before."""
        if not self.has(DIGEST_SECTION):
            return
        if self.sections[-1].name != DIGEST_SECTION:
            raise BitstreamError(f"section {DIGEST_SECTION!r} is not the last section")
        data = self.payload(DIGEST_SECTION)
        covered = self.sections[:-1]
        length = data[0] if data else 0
        if not 8 <= length <= 32 or len(data) != 1 + length * len(covered):
            raise BitstreamError(f"section {DIGEST_SECTION!r}: {len(data)} bytes do not hold digests of "
                                 f"{len(covered)} sections")
        self._digests = {sec.name: data[1 + i * length:1 + (i + 1) * length] for i, sec in enumerate(covered)}

    def names(self, prefix: str = "") -> list[str]:
        """Section names starting with `prefix`, in file order (e.g. names("group/"))."""
        return [s.name for s in self.sections if s.name.startswith(prefix)]

    def require_known(self, known: set[str] | Callable[[str], bool]) -> None:
        """Refuse a file with a required section the decoder does not know; unknown optional ones are skipped."""
        is_known = known if callable(known) else known.__contains__
        for s in self.sections:
            if s.required and not is_known(s.name):
                raise BitstreamError(f"required section {s.name!r} is unknown to codec {self.codec!r} "
                                     f"(file written by its version {self.codec_version}): upgrade ncodec")
