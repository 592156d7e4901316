"""Codec name -> codec class: the interface the CLI and the benchmarks call."""
from __future__ import annotations

import importlib
from typing import Any, ClassVar

import click

from codec.errors import UserError

# Modules that register built-in codecs when imported. A module listed here that is missing is skipped,
# so the CLI works while a codec family is being developed.
BUILTIN_MODULES = (
    "codec.video.inr_codec",
    "codec.video.nervpp",
    "codec.video.nirvana",
    "codec.video.pfnr",
    "codec.lossless.pc.codec",
    "codec.features.codec",
)

_REGISTRY: dict[str, type["Codec"]] = {}
_loaded = False


class Codec:
    """One codec: how it encodes inputs to a .ncb file and decodes one back.

    Subclasses set the class attributes and implement encode/decode; `info` adds lines to `ncodec info`.
    `opts` holds every `ncodec encode`/`decode` option by its parameter name (common and codec-specific).
    """

    name: ClassVar[str]
    version: ClassVar[int] = 1
    kind: ClassVar[str]                       # "video" | "images" | "features"
    takes_many_inputs: ClassVar[bool] = False  # True: several inputs go into one file (images, a PFNR library)
    description: ClassVar[str] = ""
    encode_options: ClassVar[list[click.Option]] = []
    decode_options: ClassVar[list[click.Option]] = []

    def encode(self, inputs: list[str], output: str, opts: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def decode(self, reader, output: str | None, opts: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def info(self, reader) -> dict[str, Any]:
        return {}

    def append(self, path: str, inputs: list[str], opts: dict[str, Any]) -> dict[str, Any]:
        """Add inputs to an existing file (codecs that hold a library, e.g. PFNR); rewrites it atomically."""
        raise UserError(f"codec {self.name!r} files cannot be appended to")


def register(cls: type[Codec]) -> type[Codec]:
    """Class decorator: make a codec available under `cls.name`."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise RuntimeError(f"codec {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def load_builtin_codecs() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in BUILTIN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name is None or not mod.startswith(e.name):
                raise


def names() -> list[str]:
    load_builtin_codecs()
    return sorted(_REGISTRY)


def get(name: str) -> Codec:
    load_builtin_codecs()
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise UserError(f"unknown codec {name!r} (known: {known})")
    return _REGISTRY[name]()


def classes() -> list[type[Codec]]:
    load_builtin_codecs()
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def decode_file(reader, output: str | None, opts: dict[str, Any]) -> dict[str, Any]:
    """Decode any .ncb: a --segment file (each segment a whole file of its codec) or the codec's own layout."""
    codec = get(reader.codec)
    if reader.has("segments"):
        from codec.distributed import decode_segmented
        return decode_segmented(codec, reader, output, opts)
    return codec.decode(reader, output, opts)


def file_info(reader) -> dict[str, Any]:
    """What the file's codec can say about it (empty for a codec this installation does not know)."""
    if reader.has("segments"):
        from codec.distributed import segmented_info
        return segmented_info(reader)
    return get(reader.codec).info(reader) if reader.codec in names() else {}
