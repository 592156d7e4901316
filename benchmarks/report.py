"""One self-contained HTML page from a folder of benchmark results: RD plots, every table, machine and commit.

    python -m benchmarks.report out/ [-o out/report.html] [--anchor "x265 medium"] [--metric psnr-rgb]

Reads every *.json under the folder (recursively). Each file gets a section with the machine, commit, date and
command it carries ("meta", from benchmarks.meta; older files show what they have), a table of its rate-distortion
points when it is a CompressAI-style result ({"name", "results": {"bpp": [...], ...}}), a table for every list of
rows in it, and a table of its other values. The CompressAI-style results are drawn as RD plots, one per clip, with
each curve's BD-rate against the anchor in the legend (--anchor: a curve's name or part of it; default the x265
medium curve where there is one). PNG figures found in the folder are embedded too (an RD plot drawn here replaces
the one benchmarks.rd saved for that clip). The page has no scripts and loads nothing: its CSS is inline, its images
are data: URIs, and its Content-Security-Policy forbids any other load. Written atomically to FOLDER/report.html
unless -o says otherwise.
"""
from __future__ import annotations

import argparse
import base64
import html
import importlib.util
import io
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from benchmarks.bdrate import result_key
from benchmarks.meta import git_commit, machine_line, utc_now
from codec.errors import UserError

MAX_ROWS = 1000              # rows shown per table (the rest counted in its caption)
MAX_PNG_BYTES = 8 << 20      # larger figures found in the folder are listed, not embedded
MAX_LIST_ITEMS = 12          # a list of plain values in a cell: the first ones, then a count

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d2330;
       background: #f6f7f9; }
header, main { max-width: 1200px; margin: 0 auto; padding: 0 20px; }
header { padding-top: 18px; }
h1 { font-size: 22px; margin: 8px 0; }
h2 { font-size: 17px; margin: 28px 0 6px; padding-top: 10px; border-top: 1px solid #d5d9e0; word-break: break-all; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.sub { color: #5a6272; margin: 0 0 12px; }
nav ol { columns: 2; font-size: 13px; padding-left: 22px; }
a { color: #1f5fbf; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 6px 0 10px;
          font-size: 13px; }
dl.meta dt { color: #5a6272; }
dl.meta dd { margin: 0; word-break: break-all; }
code { font: 12px/1.4 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
.scroll { overflow-x: auto; margin: 6px 0 14px; background: #fff; border: 1px solid #d5d9e0; border-radius: 4px;
          width: fit-content; max-width: 100%; }
table { border-collapse: collapse; font-size: 12.5px; min-width: 480px; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: 6px 8px; color: #1d2330;
          white-space: normal; }
th, td { padding: 3px 8px; border-bottom: 1px solid #eceef2; text-align: left; vertical-align: top; }
th { background: #eef1f6; position: sticky; top: 0; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.none { color: #9aa1ad; }
tr:nth-child(even) td { background: #fafbfc; }
figure { margin: 10px 0 18px; background: #fff; border: 1px solid #d5d9e0; border-radius: 4px; padding: 8px;
         display: inline-block; max-width: 100%; box-sizing: border-box; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: 13px; color: #5a6272; margin-top: 4px; }
.note { color: #8a5a00; }
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(v: Any) -> str:
    """A cell's text: numbers as the benchmarks print them, plain lists shortened, other structures as JSON."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        if v == int(v) and abs(v) < 1e15:
            return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.1f}"
        if abs(v) < 1e-3 or abs(v) >= 1e6:
            return f"{v:.4g}"
        return f"{v:.4f}" if abs(v) < 1 else f"{v:.2f}" if abs(v) < 1000 else f"{v:.1f}"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return v
    if isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v):
        shown = ", ".join(fmt(x) for x in v[:MAX_LIST_ITEMS])
        more = f", … ({len(v)} values)" if len(v) > MAX_LIST_ITEMS else ""
        return f"[{shown}{more}]"
    return json.dumps(v, separators=(", ", ": "), allow_nan=True)


class Table:
    def __init__(self, caption: str, rows: list[dict], columns: list[str] | None = None):
        self.caption, self.total = caption, len(rows)
        self.rows = rows[:MAX_ROWS]
        if columns is None:
            columns = []
            for r in self.rows:
                columns += [k for k in r if k not in columns]
        self.columns = columns

    @property
    def full_caption(self) -> str:
        return self.caption + (f" (first {MAX_ROWS} of {self.total} rows)" if self.total > MAX_ROWS else "")

    def html(self) -> str:
        head = "".join(f"<th>{esc(c)}</th>" for c in self.columns)
        body = []
        for r in self.rows:
            cells = []
            for c in self.columns:
                v = r.get(c)
                cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) else \
                    ' class="none"' if v is None else ""
                cells.append(f"<td{cls}>{esc(fmt(v))}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        return (f'<div class="scroll"><table><caption>{esc(self.full_caption)}</caption>'
                f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def is_rows(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def is_result(data: Any) -> bool:
    """A CompressAI-style result: {"results": {"bpp": [...], ...}} with lists of points."""
    res = data.get("results") if isinstance(data, dict) else None
    return isinstance(res, dict) and result_key(res, "bpp") is not None and \
        isinstance(res[result_key(res, "bpp")], list)


def meta_of(data: Any) -> dict:
    """{"machine", "commit", "date", "command"} as text, from the file's meta or what older files carry."""
    meta = data.get("meta") if isinstance(data, dict) else None
    if isinstance(meta, dict):
        m = meta.get("machine")
        return {"machine": machine_line(m) if isinstance(m, dict) else str(m or "unknown"),
                "commit": str(meta.get("commit") or "unknown"), "date": str(meta.get("date") or "unknown"),
                "command": str(meta.get("command") or "unknown")}
    old = next((data[k] for k in ("machine", "device") if isinstance(data, dict) and isinstance(data.get(k), str)),
               None)
    return {"machine": (old + " (no meta: written before benchmarks.meta)") if old else "unknown (no meta)",
            "commit": "unknown", "date": "unknown", "command": "unknown"}


def tables_of(data: Any, name: str) -> list[Table]:
    """The file's tables: its RD points, each list of rows (by its key path), and its other values."""
    tables: list[Table] = []
    values: list[dict] = []

    def walk(v: Any, path: str) -> None:
        if is_rows(v):
            tables.append(Table(f"{name} · {path or 'rows'}", v))
        elif isinstance(v, dict):
            for k, x in v.items():
                if k == "meta" and isinstance(x, dict) and "commit" in x:    # shown above the tables
                    continue
                if not path and (k == "results" and is_result(data) or k == "description"):
                    continue                                        # the RD points table; the text above it
                walk(x, f"{path}.{k}" if path else str(k))
        else:
            values.append({"key": path or "value", "value": v})

    if is_result(data):
        res = data["results"]
        n = max((len(x) for x in res.values() if isinstance(x, list)), default=0)
        rows = [{k: (x[i] if isinstance(x, list) and i < len(x) else x) for k, x in res.items()} for i in range(n)]
        tables.append(Table(f"{name} · {data.get('name', 'results')}: RD points", rows))
    walk(data, "")
    if values:
        tables.append(Table(f"{name} · values", values, ["key", "value"]))
    return tables


def find_json(root: Path) -> list[Path]:
    """Every *.json under root, in path order, leaving out hidden files and folders (atomic writes' temporaries)."""
    return sorted(p for p in root.rglob("*.json")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))


def png_bytes(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
    return buf.getvalue()


def figure(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def rd_plots(results: list[tuple[Path, dict]], root: Path, metric: str, anchor: str | None) -> tuple[list, list]:
    """[(group, png, caption)] and notes: one RD plot per clip (the "clip" key, else the folder) of the results."""
    from benchmarks.plot import draw_rd, find_anchor, load_curve

    groups: dict[str, list] = {}
    for path, data in results:
        folder = path.parent.relative_to(root).as_posix()
        group = str(data.get("clip") or (root.resolve().name if folder == "." else folder))
        groups.setdefault(group, []).append((path, data))
    plots, notes = [], []
    for group, members in groups.items():
        curves = []
        for path, data in members:
            try:
                curves.append(load_curve(dict(data, name=data.get("name", path.stem)), metric,
                                         path.relative_to(root)))
            except UserError as e:
                notes.append(f"{path.relative_to(root)}: not plotted: {e}")
        if not curves:
            continue
        want = anchor if anchor is not None else next((c["name"] for c in curves if "x265 medium" in c["name"]),
                                                      None)
        try:
            index = find_anchor(curves, want)
        except UserError:
            index = None
            notes.append(f"{group}: no curve named like {want!r}: no BD-rates")
        a = f"; BD-rate against {curves[index]['name']}" if index is not None else ""
        fig = draw_rd(curves, metric, f"{group}: rate-distortion", False, index)
        plots.append((group, png_bytes(fig), f"RD plot: {group} ({len(curves)} curves, {metric}{a})"))
    return plots, notes


def build(root: str | Path, metric: str = "psnr-rgb", anchor: str | None = None) -> tuple[str, int]:
    """The page's HTML and the number of result files in it."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder")
    files = find_json(root)
    if not files:
        raise UserError(f"no *.json results under {root}")
    loaded, unreadable = [], []
    for p in files:
        try:
            loaded.append((p, json.loads(p.read_text(encoding="utf-8"))))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            unreadable.append({"file": p.relative_to(root).as_posix(), "error": str(e).splitlines()[0][:200]})

    summary = []
    for i, (p, data) in enumerate(loaded):
        m = meta_of(data)
        summary.append({"file": p.relative_to(root).as_posix(),
                        "name": data.get("name", "") if isinstance(data, dict) else "", **m})
    results = [(p, d) for p, d in loaded if is_result(d)]
    plots, notes = [], []
    if results:
        if importlib.util.find_spec("matplotlib") is None:          # a machine without it still gets the tables
            notes.append("matplotlib is not installed: no RD plots")
        else:
            plots, notes = rd_plots(results, root, metric, anchor)
    plotted = {g for g, _, _ in plots}
    pngs = []
    for p in sorted(root.rglob("*.png")):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.stem.endswith("_rd") and p.stem[:-3] in plotted:
            continue                                    # drawn again above from the JSON, with BD-rates
        size = p.stat().st_size
        if size > MAX_PNG_BYTES:
            notes.append(f"{rel.as_posix()}: {size} bytes, not embedded")
        elif p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n":
            pngs.append((rel.as_posix(), p.read_bytes()))

    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>ncodec benchmark report: {esc(root.name or root)}</title>",
           f"<style>{CSS}</style></head><body><header>",
           f"<h1>ncodec benchmark report: {esc(root.as_posix())}</h1>",
           f'<p class="sub">{len(loaded)} result files; generated {esc(utc_now())} by commit '
           f"{esc(git_commit())}</p>"]
    nav = [f'<li><a href="#f{i}">{esc(s["file"])}</a></li>' for i, s in enumerate(summary)]
    out.append(f"<nav><ol>{''.join(nav)}</ol></nav></header><main>")
    out.append(Table("Results: the machine, commit, date and command of each file", summary,
                     ["file", "name", "machine", "commit", "date", "command"]).html())
    if unreadable:
        out.append(Table("Files that could not be read", unreadable, ["file", "error"]).html())
    if plots or notes:
        out.append("<h2>Rate-distortion</h2>")
        out += [figure(png, caption) for _, png, caption in plots]
        out += [f'<p class="note">{esc(n)}</p>' for n in notes]
    if pngs:
        out.append("<h2>Figures in the folder</h2>")
        out += [figure(png, rel) for rel, png in pngs]
    for i, ((p, data), s) in enumerate(zip(loaded, summary)):
        rel = s["file"]
        out.append(f'<section id="f{i}"><h2>{esc(rel)}</h2><dl class="meta">')
        out += [f"<dt>{k}</dt><dd>{esc(s[k])}</dd>" for k in ("machine", "commit", "date", "command")]
        out.append("</dl>")
        if isinstance(data, dict) and data.get("description"):
            out.append(f'<p class="sub">{esc(data["description"])}</p>')
        out += [t.html() for t in tables_of(data, rel)]
        out.append("</section>")
    out.append("</main></body></html>")
    return "\n".join(out) + "\n", len(loaded)


def write_report(root: str | Path, output: str | Path | None = None, metric: str = "psnr-rgb",
                 anchor: str | None = None) -> Path:
    from bitstream.atomic import write_atomic

    page, _ = build(root, metric, anchor)
    out = Path(output) if output else Path(root) / "report.html"
    write_atomic(out, page.encode("utf-8"))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="folder of result JSON (searched recursively)")
    ap.add_argument("-o", "--output", default=None, help="HTML file to write (default FOLDER/report.html)")
    ap.add_argument("--metric", default="psnr-rgb", help="quality axis of the RD plots (default psnr-rgb)")
    ap.add_argument("--anchor", default=None,
                    help="the curve BD-rates are against, by name or part of it (default: x265 medium if present)")
    args = ap.parse_args(argv)
    try:
        out = write_report(args.folder, args.output, args.metric, args.anchor)
    except UserError as e:
        print(f"report: error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
