"""The student codec's options (no torch: the CLI reads them to build `--help`)."""
from __future__ import annotations

from dataclasses import dataclass

from codec.errors import UserError
from codec.options import EncodeOptions, Options, option


def _need_model(model: str | None) -> None:
    if not model:
        raise UserError("the student codec needs --model STUDENT (train one with `ncodec train student`) or a zoo "
                        "model's name (`ncodec models`)")


@dataclass
class StudentOptions(EncodeOptions):
    model: str | None = option(None, "The student network: a STUDENT.safetensors from `ncodec train student`, or "
                                     "a zoo model's name (`ncodec models`, e.g. digits-student).")

    def check(self) -> None:
        super().check()
        _need_model(self.model)


@dataclass
class StudentDecodeOptions(Options):
    model: str | None = option(None, "The student the file was encoded with (a file, or a zoo model's name).")

    def check(self) -> None:
        super().check()
        _need_model(self.model)
