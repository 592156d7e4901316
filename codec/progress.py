"""Progress bars, result tables and JSON output: the one place every long job and every report goes through."""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Iterable, Sequence

from tqdm.auto import tqdm


def progress(iterable: Iterable | None = None, *, total: int | float | None = None, desc: str = "",
             unit: str = "it", disable: bool | None = None, **kwargs) -> tqdm:
    """A bar with count, rate and ETA on stderr; silent when stderr is not a terminal unless NCODEC_PROGRESS=1."""
    if disable is None:
        disable = not (sys.stderr.isatty() or os.environ.get("NCODEC_PROGRESS") == "1")
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True,
                file=sys.stderr, **kwargs)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
            return f"{v:.3e}"
        return f"{v:.4f}" if abs(v) < 1 else f"{v:.2f}"
    return str(v)


def format_table(rows: Sequence[dict], columns: Sequence[str] | None = None, title: str | None = None) -> str:
    """Rows of dicts as an aligned text table (columns default to the first row's keys)."""
    if not rows:
        return (title + "\n" if title else "") + "(no rows)"
    columns = list(columns or rows[0].keys())
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r.get(c), (int, float)) for r in rows if r.get(c) is not None) for c in columns]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [title] if title else []
    out += [line(columns), line(["-" * w for w in widths])] + [line(row) for row in cells]
    return "\n".join(out)


def print_table(rows: Sequence[dict], columns: Sequence[str] | None = None, title: str | None = None,
                file=None) -> None:
    print(format_table(rows, columns, title), file=file or sys.stdout)


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):                # header fields such as a model's sha256
        return v.hex()
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


def to_json(obj: Any) -> str:
    return json.dumps(_jsonable(obj), indent=2, sort_keys=False)


def write_json(path: str | os.PathLike, obj: Any, overwrite: bool = True) -> None:
    """Write JSON atomically (temporary file in the same folder, then rename; `overwrite`: bitstream.atomic's rule)."""
    from bitstream.atomic import write_atomic  # one atomic writer for every output

    write_atomic(path, (to_json(obj) + "\n").encode("utf-8"), overwrite=overwrite)
