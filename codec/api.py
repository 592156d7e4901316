"""The Python API (re-exported by ncodec.py) and the steps the CLI shares with it.

    ncodec.encode("clip.mp4", "clip.ncb", codec="hnerv", max_time=60)      -> the summary dict
    ncodec.decode("clip.ncb", frames="2:5")                                 -> uint8 [3, H, W, 3]
    ncodec.info("clip.ncb")["codec"]                                        -> "hnerv"
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from bitstream.container import Reader
from codec import registry
from codec.base import Codec, Job
from codec.errors import UserError
from codec.options import EncodeOptions, Options


def codecs() -> list[str]:
    return registry.names()


def encode_options(codec: str, **options: Any) -> EncodeOptions:
    return registry.options(codec).from_kwargs(options, codec)


def decode_options(codec: str, **options: Any) -> Options:
    return registry.decode_options(codec).from_kwargs(options, codec)


def encode_file(codec: Codec, source: Any, output: str | os.PathLike, options: EncodeOptions,
                job: Job | None = None) -> dict[str, Any]:
    """Read, encode and write one .ncb file atomically; returns the encoder's summary."""
    job = job or Job(checkpoint=str(output) + ".ckpt")
    data = codec.read(source, options)
    encoded = codec.encode(data, options, job)
    size = encoded.writer.write(output)
    return {"file": str(output), "bytes": size, **{k: v for k, v in encoded.summary.items() if k != "bytes"}}


def open_file(path: str | os.PathLike | Reader, options: Options | None = None, **kwargs: Any
              ) -> tuple[Codec, Any, Options]:
    """(codec, decoded form, decode options) of a .ncb file; options by keyword when not given whole."""
    reader = path if isinstance(path, Reader) else Reader.from_path(path)
    codec = registry.get(reader.codec)
    if options is None:
        options = decode_options(reader.codec, **{k: v for k, v in kwargs.items() if v is not None})
    return codec, codec.open(reader, options), options


def encode(source: Any, output: str | os.PathLike, codec: str, **options: Any) -> dict[str, Any]:
    """Encode `source` (a path, a list of paths, or a uint8 array: [T, H, W, 3] video, [N, H, W] or [N, H, W, C]
    images) into `output` with `codec`; options are the codec's Options fields by name."""
    c = registry.get(codec)
    return encode_file(c, source, output, encode_options(codec, **options))


def decode(path: str | os.PathLike, frames: str | slice | None = None, video: int | None = None,
           model: str | None = None, device: str = "auto") -> np.ndarray:
    """A .ncb file's content as an array: uint8 [T, H, W, 3] for video, [N, H, W] (or [N, H, W, C]) for images,
    int64 [N] predicted classes for features."""
    reader = Reader.from_path(path)
    kwargs: dict[str, Any] = {"device": device, "frames": frames, "video": video, "model": model}
    if isinstance(frames, slice):          # the API's slice is the CLI's A:B
        if frames.step not in (None, 1):
            raise UserError("decode: frames takes no step")
        kwargs["frames"] = f"{'' if frames.start is None else frames.start}:{'' if frames.stop is None else frames.stop}"
    known = {s for s in registry.decode_options(reader.codec).__dataclass_fields__}
    given = {k: v for k, v in kwargs.items() if v is not None or k == "device"}
    unknown = sorted(k for k in given if k not in known)
    if unknown:
        raise UserError(f"decode: {unknown[0]!r} does not apply to a {reader.codec} file")
    codec, decoded, options = open_file(reader, **given)
    return codec.array(decoded, options)


def info(path: str | os.PathLike) -> dict[str, Any]:
    """The container's fields (codec, versions, header, sections) and what the codec adds."""
    reader = Reader.from_path(path)
    summary: dict[str, Any] = {
        "file": str(path), "bytes": reader.file_size, "format": "%d.%d" % tuple(reader.format_version),
        "codec": reader.codec, "codec_version": reader.codec_version, "header": dict(reader.header),
        "sections": [{"name": s.name, "bytes": s.length, "required": s.required, "crc32": f"{s.crc32:08x}"}
                     for s in reader.sections],
    }
    if reader.codec in registry.CODECS:
        codec = registry.get(reader.codec)
        if reader.has("segments") and codec.kind == "video":
            from codec.video import segmented
            summary.update(segmented.info(reader))
        else:
            summary.update(codec.info(reader))
    return summary
