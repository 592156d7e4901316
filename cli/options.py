"""Click options from a codec's Options dataclass: the CLI's flags are the codec's fields, nothing more."""
from __future__ import annotations

from typing import Any

import click

from codec.options import OptionSpec, specs


def click_options(cls: type, skip: set[str] = frozenset()) -> list[click.Option]:
    """One click.Option per CLI field of `cls`. Defaults stay None on the click side, so that only what the user
    typed reaches the Options class, whose own defaults and checks then apply."""
    out = []
    for s in specs(cls):
        if not s.cli or s.name in skip:
            continue
        out.append(_click_option(s))
    return out


def _click_option(s: OptionSpec) -> click.Option:
    default = "" if s.default is None else f" [default: {s.default}]"
    if s.type is bool:
        return click.Option([s.flag, s.name], is_flag=True, default=None, help=s.help)
    return click.Option([s.flag, s.name], type=s.type, default=None, metavar=s.metavar,
                        help=s.help + default)


def given(values: dict[str, Any], cls: type) -> dict[str, Any]:
    """The values of `cls`'s fields that the user gave on the command line."""
    names = {s.name for s in specs(cls)}
    return {k: v for k, v in values.items() if k in names and v is not None}
