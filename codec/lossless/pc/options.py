"""The pc codec's options (no torch: the CLI reads them to build `--help`)."""
from __future__ import annotations

from dataclasses import dataclass

from codec.errors import UserError
from codec.options import EncodeOptions, Options, in_range, option

DEFAULT_BATCH = 2000
MAX_BATCH = 1 << 20


def _need_model(model: str | None) -> None:
    if not model:
        raise UserError("the pc codec needs --model MODEL.pcm (train one with `ncodec train pc`) or a zoo model's "
                        "name (`ncodec models`)")


@dataclass
class PCOptions(EncodeOptions):
    model: str | None = option(None, "The circuit the images are coded with: a MODEL.pcm from `ncodec train pc`, "
                                     "or a zoo model's name (`ncodec models`, e.g. mnist-pc).")
    pc_batch: int = option(DEFAULT_BATCH, "Images coded together (speed and memory; the size barely changes).")

    def check(self) -> None:
        super().check()
        _need_model(self.model)
        in_range("--pc-batch", self.pc_batch, 1, MAX_BATCH)


@dataclass
class PCDecodeOptions(Options):
    model: str | None = option(None, "The circuit the file was coded with (MODEL.pcm, or a zoo model's name).")

    def check(self) -> None:
        super().check()
        _need_model(self.model)
