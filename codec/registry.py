"""Codec names -> where each codec and its options live. Nothing is imported until it is asked for: the options
modules are light (no torch), so the CLI's help does not load the codecs."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from codec.errors import UserError

if TYPE_CHECKING:
    from codec.base import Codec

# name: (codec class, encode options, decode options), each as "module:attribute"
CODECS: dict[str, tuple[str, str, str]] = {
    "nerv": ("codec.video.inr_codec:NeRVCodec", "codec.video.options:NeRVOptions",
             "codec.video.options:VideoDecodeOptions"),
    "hnerv": ("codec.video.inr_codec:HNeRVCodec", "codec.video.options:HNeRVOptions",
              "codec.video.options:VideoDecodeOptions"),
    "nervpp": ("codec.video.nervpp:NeRVPPCodec", "codec.video.options:NeRVPPOptions",
               "codec.video.options:VideoDecodeOptions"),
    "nirvana": ("codec.video.nirvana:NirvanaCodec", "codec.video.options:NirvanaOptions",
                "codec.video.options:VideoDecodeOptions"),
    "pfnr": ("codec.video.pfnr:PFNRCodec", "codec.video.options:PFNROptions",
             "codec.video.options:PFNRDecodeOptions"),
    "pc": ("codec.lossless.pc.codec:PCCodec", "codec.lossless.pc.options:PCOptions",
           "codec.lossless.pc.options:PCDecodeOptions"),
    "student": ("codec.features.codec:StudentCodec", "codec.features.options:StudentOptions",
                "codec.features.options:StudentDecodeOptions"),
}


def _load(ref: str):
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def names() -> list[str]:
    return sorted(CODECS)


def _entry(name: str) -> tuple[str, str, str]:
    if name not in CODECS:
        raise UserError(f"unknown codec {name!r} (known: {', '.join(names())})")
    return CODECS[name]


def get(name: str) -> "Codec":
    """The codec called `name` (imports its module: torch and all)."""
    return _load(_entry(name)[0])()


def options(name: str) -> type:
    """The codec's encode Options class, without importing the codec."""
    return _load(_entry(name)[1])


def decode_options(name: str) -> type:
    return _load(_entry(name)[2])
