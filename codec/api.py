"""The Python API (re-exported by ncodec.py) and the steps the CLI shares with it.

    ncodec.encode("clip.mp4", "clip.ncb", codec="hnerv", max_time=60)      -> the summary dict
    ncodec.decode("clip.ncb", frames="2:5")                                 -> uint8 [3, H, W, 3]
    ncodec.info("clip.ncb")["codec"]                                        -> "hnerv"
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from bitstream.atomic import check_output, remove_stale, write_atomic
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


def checkpoint_prefix(output: str | os.PathLike) -> str:
    """Where an encode to `output` keeps its checkpoint (<prefix>.safetensors): beside the output."""
    return str(output) + ".ckpt"


def encode_file(codec: Codec, source: Any, output: str | os.PathLike, options: EncodeOptions,
                job: Job | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Read, encode and write one .ncb file atomically; returns the encoder's summary.

    An existing `output` is refused before any work unless `overwrite` (bitstream.atomic.check_output). After
    success the fit's checkpoint is removed unless job.keep_checkpoint."""
    job = job or Job(checkpoint=checkpoint_prefix(output))
    check_output(output, overwrite, directory=False)
    data = codec.read(source, options)
    encoded = codec.encode(data, options, job)
    size = write_atomic(output, encoded.writer.to_bytes(), overwrite=overwrite)
    summary = {"file": str(output), "bytes": size, **{k: v for k, v in encoded.summary.items() if k != "bytes"}}
    if job.checkpoint and not job.keep_checkpoint:
        from codec.checkpoint import Checkpoint

        ckpt = Checkpoint(job.checkpoint, None, every=0)
        ckpt.remove()
        remove_stale(ckpt.path)                  # a checkpoint write a killed run left half done
        if summary.get("checkpoint") == ckpt.path:
            del summary["checkpoint"]
    return summary


def open_file(path: str | os.PathLike | Reader, options: Options | None = None, **kwargs: Any
              ) -> tuple[Codec, Any, Options]:
    """(codec, decoded form, decode options) of a .ncb file; options by keyword when not given whole."""
    reader = path if isinstance(path, Reader) else Reader.from_path(path)
    codec = registry.get(reader.codec)
    if options is None:
        options = decode_options(reader.codec, **{k: v for k, v in kwargs.items() if v is not None})
    return codec, codec.open(reader, options), options


def encode(source: Any, output: str | os.PathLike, codec: str, *, overwrite: bool = False,
           keep_checkpoint: bool = False, checkpoint_every: float = 60.0, **options: Any) -> dict[str, Any]:
    """Encode `source` (a path, a list of paths, or a uint8 array: [T, H, W, 3] video, [N, H, W] or [N, H, W, C]
    images) into `output` with `codec`; options are the codec's Options fields by name. An existing `output` is
    refused (FileExistsError) unless `overwrite`; a fit's checkpoint is removed after success unless
    `keep_checkpoint`."""
    c = registry.get(codec)
    job = Job(checkpoint=checkpoint_prefix(output), checkpoint_every=checkpoint_every,
              keep_checkpoint=keep_checkpoint)
    return encode_file(c, source, output, encode_options(codec, **options), job, overwrite=overwrite)


def decode(path: str | os.PathLike, frames: str | slice | None = None, video: int | None = None,
           model: str | None = None, device: str = "auto", max_memory: str | None = None) -> np.ndarray:
    """A .ncb file's content as an array: uint8 [T, H, W, 3] for video, [N, H, W] (or [N, H, W, C]) for images,
    int64 [N] predicted classes for features. A file whose decode needs more than `max_memory` (default 4G,
    docs/FORMAT.md) is refused before anything is allocated."""
    reader = Reader.from_path(path)
    kwargs: dict[str, Any] = {"device": device, "frames": frames, "video": video, "model": model,
                              "max_memory": max_memory}
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


def info(path: str | os.PathLike, max_memory: str | None = None) -> dict[str, Any]:
    """The container's fields (codec, versions, header, sections) and what the codec adds (a codec that opens
    the file to say more refuses one over `max_memory`, codec.options, and says so in its fields)."""
    reader = Reader.from_path(path)
    options = Options(device="cpu", max_memory=max_memory)
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
            summary.update(codec.info(reader, options))
    return summary
