"""The segmented file: one long video cut into segments, each a complete file of its codec (`--segment N`).

The file keeps the codec's name and version, and adds:
  header       segment_frames (N), segments (K)
  segments     the index: varint K, then each segment's frame count (all N but the last)
  segment/<k>  a complete .ncb file of the codec for frames k*N .. k*N + count_k (its own header and CRCs)
Decoding frames A:B opens only the segments that hold them; a damaged segment fails alone, naming its frames.
`VideoCodec.open` returns a `SegmentedVideo` for such a file and `VideoCodec.frames` renders it segment by segment.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Any, Iterator

from bitstream.atomic import write_atomic
from bitstream.container import Reader, Writer
from bitstream.errors import BitstreamError
from bitstream.serial import ByteReader, ByteWriter

INDEX = "segments"
SOURCE_FIELDS = ("chroma", "source_height", "source_width")
PREFIX = "segment/"


def write_segmented(path, codec, width: int, height: int, fps: Fraction, segment: int, parts: list[bytes]) -> bytes:
    """The segmented file from its segments' files (each one the codec's complete file)."""
    from codec.base import video_header

    counts, headers = [], []
    for k, data in enumerate(parts):
        r = Reader.from_bytes(data)
        if r.codec != codec.name or r.header.get("width") != width or r.header.get("height") != height:
            raise ValueError(f"segment {k} is not a {width}x{height} {codec.name} file")
        counts.append(int(r.header["frames"]))
        headers.append(r.header)
    # what the source was (chroma, size before a crop): kept where every segment says the same
    source = {k: headers[0][k] for k in SOURCE_FIELDS if k in headers[0] and all(h.get(k) == headers[0][k]
                                                                                 for h in headers)}
    w = Writer(codec.name, codec.version, video_header(width, height, sum(counts), fps, segment_frames=segment,
                                                       segments=len(parts), **source))
    index = ByteWriter()
    index.varint(len(parts))
    for n in counts:
        index.varint(n)
    w.add_section(INDEX, index.getvalue())
    for k, data in enumerate(parts):
        w.add_section(f"{PREFIX}{k}", data)
    data = w.to_bytes()
    if path is not None:
        write_atomic(path, data)
    return data


def segment_counts(reader: Reader) -> list[int]:
    """Frame counts of the segments, checked against the header and the sections present."""
    r = ByteReader(reader.payload(INDEX), what="segments section")
    k = r.varint(1 << 20)
    if k > len(reader.sections):
        raise BitstreamError("segments section: more segments than sections")
    counts = [r.varint(1 << 30) for _ in range(k)]
    r.expect_end()
    n = reader.header.get("segment_frames")
    if (not counts or type(n) is not int or n <= 0 or reader.header.get("segments") != k
            or sum(counts) != reader.header.get("frames") or any(not 0 < c <= n for c in counts)
            or any(c != n for c in counts[:-1])):
        raise BitstreamError("segments section disagrees with the header")
    reader.require_known(lambda s: s == INDEX or (s.startswith(PREFIX) and s[len(PREFIX):].isdigit()
                                                  and int(s[len(PREFIX):]) < k))
    return counts


def segment_reader(reader: Reader, k: int, frames: int) -> Reader:
    """Segment k's own file; a damaged one raises a BitstreamError that names it and its frames."""
    n = reader.header["segment_frames"]
    try:
        sub = Reader.from_bytes(reader.payload(f"{PREFIX}{k}"))
    except BitstreamError as e:
        raise BitstreamError(f"segment {k} (frames {k * n}:{k * n + frames}) is damaged: {e}; the other segments "
                             f"decode with --frames") from None
    h = sub.header
    if (sub.codec != reader.codec or sub.codec_version != reader.codec_version or h.get("frames") != frames
            or h.get("width") != reader.header["width"] or h.get("height") != reader.header["height"]):
        raise BitstreamError(f"segment {k} does not match the file's codec or frame size")
    return sub


class SegmentedVideo:
    """A segmented file, opened: its segments are opened one at a time as frames are asked for."""

    def __init__(self, reader: Reader, options: Any):
        from codec.base import header_fps
        from codec.device import pick_device

        self.reader, self.options = reader, options
        self.counts = segment_counts(reader)
        h = reader.header
        self.width, self.height, self.num_frames = int(h["width"]), int(h["height"]), int(h["frames"])
        self.segment_frames = int(h["segment_frames"])
        self.fps = header_fps(h)
        self.device = pick_device(options.device)

    def wanted(self, start: int, stop: int) -> list[tuple[int, int, int]]:
        """(segment k, first, stop) within each segment that holds frames start..stop."""
        n = self.segment_frames
        return [(k, max(start, k * n) - k * n, min(stop, k * n + c) - k * n) for k, c in enumerate(self.counts)
                if k * n < stop and k * n + c > start]

    def parts(self, codec, start: int, stop: int) -> Iterator[tuple[Any, int, int]]:
        for k, s, e in self.wanted(start, stop):
            yield codec.open(segment_reader(self.reader, k, self.counts[k]), self.options), s, e


def info(reader: Reader) -> dict[str, Any]:
    """Extra `ncodec info` lines for a segmented file."""
    try:
        counts = segment_counts(reader)
    except BitstreamError as e:
        return {"segments": f"unreadable ({e})"}
    h = reader.header
    return {"segments": len(counts), "segment_frames": h["segment_frames"],
            "bpp": reader.file_size * 8 / (h["frames"] * h["height"] * h["width"])}
