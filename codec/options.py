"""Codec options as dataclasses: each field's type, default and help are the codec's whole option surface.

The CLI builds a codec's flags from its `Options` (cli/options.py), the Python API passes them by name, and each
check lives once, in the class's `check()`. This module imports no torch, so `ncodec encode --codec X --help` is fast.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from codec.errors import UserError


def option(default: Any, help: str, *, flag: str | None = None, metavar: str | None = None,
           cli: bool = True) -> Any:
    """A dataclass field with its CLI help; `flag` overrides --field-name, `cli=False` keeps it off the CLI."""
    return field(default=default, metadata={"help": help, "flag": flag, "metavar": metavar, "cli": cli})


@dataclass(frozen=True)
class OptionSpec:
    """One option as the CLI and the API see it."""

    name: str            # the field name, and the API's keyword
    flag: str            # --name-with-dashes unless the field says otherwise
    type: type           # int, float, str or bool
    default: Any
    help: str
    metavar: str | None
    cli: bool


def specs(cls: type) -> list[OptionSpec]:
    """The options of an Options class, in declaration order (base classes first)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        t = _base_type(hints[f.name])
        m = f.metadata
        out.append(OptionSpec(f.name, m.get("flag") or "--" + f.name.replace("_", "-"), t, f.default,
                              m.get("help", ""), m.get("metavar"), m.get("cli", True)))
    return out


def _base_type(hint: Any) -> type:
    """int | None -> int; the CLI and the API coerce to it."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    t = args[0] if args else hint
    if t not in (int, float, str, bool):
        raise TypeError(f"option type {hint!r} is not int, float, str or bool")
    return t


def _coerce(spec: OptionSpec, value: Any) -> Any:
    if value is None or isinstance(value, spec.type) and not (spec.type is int and isinstance(value, bool)):
        return value
    try:
        if spec.type is bool:
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            return bool(value)
        if spec.type is int and isinstance(value, float):
            if value != int(value):
                raise ValueError
            return int(value)
        return spec.type(value)
    except (TypeError, ValueError):
        raise UserError(f"{spec.flag}: expected {spec.type.__name__}, got {value!r}") from None


@dataclass
class Options:
    """Options every codec takes, encoding and decoding; a codec's own classes extend it."""

    device: str = option("auto", "auto (CUDA when present), cpu, cuda, cuda:N.")
    max_memory: str | None = option(
        None, "Memory cap, e.g. 8G: a file whose decode needs more is refused before anything is allocated, and "
              "so is an encode whose file would be (default 4G; docs/FORMAT.md, Bounds).", metavar="SIZE")

    def __post_init__(self) -> None:
        for s in specs(type(self)):
            setattr(self, s.name, _coerce(s, getattr(self, s.name)))
        self.check()

    def check(self) -> None:
        """Raise UserError for an impossible value; subclasses extend it (and call super().check())."""
        self.memory_cap()

    def memory_cap(self) -> int:
        """--max-memory in bytes (DEFAULT_MAX_MEMORY when not given)."""
        return DEFAULT_MAX_MEMORY if self.max_memory is None else parse_memory(self.max_memory)

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any], codec: str = "") -> "Options":
        """Build from keyword arguments; an unknown name is a UserError that lists the known ones."""
        known = {s.name for s in specs(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            who = f"codec {codec!r}" if codec else cls.__name__
            raise UserError(f"{who} has no option {unknown[0]!r} (its options: {', '.join(sorted(known))})")
        return cls(**kwargs)

    def replace(self, **changes: Any) -> "Options":
        return dataclasses.replace(self, **changes)


@dataclass
class EncodeOptions(Options):
    seed: int = option(0, "Random seed (fits are reproducible).")


# ---------------------------------------------------------------------------------------------------------------
# bounds: what a file may ask a decoder to build (codec.base.Codec.check_bounds applies them; docs/FORMAT.md)

DEFAULT_MAX_MEMORY = 4 << 30       # bytes a decode may need before --max-memory must say so
MAX_PARAMETERS = 1 << 28           # values of one network (or model), whatever --max-memory says
_MEMORY_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_memory(text: str | int | float) -> int:
    """'8G', '512M', '1.5GiB', '2e9' (bytes) -> bytes; the units are binary (K = 1024)."""
    s = str(text).strip().lower().replace("ib", "").rstrip("b") if isinstance(text, str) else text
    unit = 1
    if isinstance(s, str) and s and s[-1] in _MEMORY_UNITS:
        unit, s = _MEMORY_UNITS[s[-1]], s[:-1]
    try:
        value = float(s) * unit
    except (TypeError, ValueError):
        raise UserError(f"--max-memory {text!r}: expected a size like 8G, 512M or 2e9 (bytes)") from None
    if not math.isfinite(value) or value < 1:
        raise UserError(f"--max-memory {text!r}: must be a positive size")
    return int(value)


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (what --max-memory reads back)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"


# ---------------------------------------------------------------------------------------------------------------
# checks shared by several codecs' options


def positive(name: str, value: int | float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise UserError(f"{name} must be positive, got {value}")


def in_range(name: str, value: int | float | None, lo: float, hi: float, hi_open: bool = False) -> None:
    if value is None:
        return
    ok = lo <= value < hi if hi_open else lo <= value <= hi
    if not ok:
        raise UserError(f"{name} must be in [{lo}, {hi}{')' if hi_open else ']'}, got {value}")


def one_of(name: str, value: Any, allowed: tuple) -> None:
    if value is not None and value not in allowed:
        raise UserError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value}")


def not_both(a: tuple[str, Any], b: tuple[str, Any]) -> None:
    if a[1] is not None and b[1] is not None:
        raise UserError(f"give {a[0]} or {b[0]}, not both")

