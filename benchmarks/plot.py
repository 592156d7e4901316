"""Rate-distortion plot of CompressAI-style result files, with each curve's BD-rate against an anchor in the legend.

    python -m benchmarks.plot RESULT.json [RESULT.json ...] -o plot.png [--metric psnr-rgb] [--title T] [--logx]
        [--anchor FILE_OR_NAME | --no-bd]
Each file is one curve ({"name", "results": {"bpp": [...], metric: [...]}}), drawn in order of bpp. The anchor (by
default the first file, as in benchmarks.bdrate) is named in every other curve's legend entry with that curve's
BD-rate against it ("HNeRV (ncodec): BD-rate +1450% vs x265 medium"). Points of a curve with model sizes (an INR
codec's "size" or "params" list) are labelled with their size ("0.1M"). The legend sits below the axes, clear of
the data.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Sequence

from benchmarks.bdrate import bd_of, load_results, rd_points, result_key
from codec.errors import UserError

_AXIS_LABELS = {"psnr-rgb": "PSNR (RGB) [dB]", "ms-ssim-rgb": "MS-SSIM (RGB)", "psnr": "PSNR [dB]"}


def size_label(value) -> str | None:
    """A point's model size as a short label: "0.1M" as given, parameters 98304 -> "0.098M", "lambda0.01" -> λ."""
    if value is None:
        return None
    if isinstance(value, str):
        m = re.fullmatch(r"lambda(.+)", value)
        return f"λ={m.group(1)}" if m else value
    if isinstance(value, (int, float)) and value > 0:
        return f"{value / 1e6:.3g}M" if value >= 1e6 else f"{value / 1e6:.2g}M"
    return None


def format_bd(bd: float) -> str:
    return f"{bd:+.0f}%" if abs(bd) >= 100 else f"{bd:+.1f}%"


def load_curve(data: dict, metric: str, path) -> dict:
    """One curve of a loaded result file (load_results): its points in order of rate, with their size labels."""
    res = data["results"]
    rate, quality = rd_points(data, metric, path)
    if not rate:
        raise UserError(f"{path} has no finite {metric} points")
    # a label per point from the INR codecs' sizes (kept in step with rd_points, which drops null points)
    bpp = res[result_key(res, "bpp")]
    sizes = res.get("size") or res.get("params")
    labels = []
    if isinstance(sizes, list) and len(sizes) == len(bpp):
        q_all = res[result_key(res, metric)]
        labels = [size_label(s) for s, r, q in zip(sizes, bpp, q_all) if r is not None and q is not None]
    order = sorted(range(len(rate)), key=rate.__getitem__)
    return {"name": str(data["name"]), "rate": [rate[i] for i in order], "quality": [quality[i] for i in order],
            "labels": [labels[i] for i in order] if labels else [], "data": data, "path": path}


def find_anchor(curves: list[dict], anchor) -> int | None:
    """The index of the anchor among curves: given as an index, one of the files, or a curve's name or part of it."""
    if anchor is None:
        return None
    if isinstance(anchor, int):
        return anchor
    for i, c in enumerate(curves):                  # a path among the files
        try:
            if Path(c["path"]).resolve() == Path(anchor).resolve():
                return i
        except (OSError, TypeError):
            pass
    for i, c in enumerate(curves):                  # a curve's name, exact, then a part of it
        if c["name"] == str(anchor):
            return i
    for i, c in enumerate(curves):
        if str(anchor).lower() in c["name"].lower():
            return i
    raise UserError(f"anchor {anchor!r} is neither one of the files nor a curve's name "
                    f"({', '.join(c['name'] for c in curves)})")


def draw_rd(curves: list[dict], metric: str = "psnr-rgb", title: str | None = None, logx: bool = False,
            anchor: int | None = None):
    """The figure for curves from load_curve; legend entries carry each curve's BD-rate against curves[anchor]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = len(curves)
    fig = plt.figure(figsize=(7.5, 4.6 + 0.19 * entries), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    markers = "os^vDP*Xph<>"
    a = curves[anchor] if anchor is not None else None
    for i, c in enumerate(curves):
        label = c["name"]
        if a is not None:
            if i == anchor:
                label += " (anchor)"
            else:
                try:
                    bd = bd_of(a["data"], c["data"], metric, a["path"], c["path"])["bd_rate_%"]
                    label += f": BD-rate {format_bd(bd)} vs {a['name']}"
                except UserError as e:
                    why = "no shared quality range" if "share no" in str(e) else "too few points"
                    label += f": BD-rate n/a vs {a['name']} ({why})"
        line, = ax.plot(c["rate"], c["quality"], marker=markers[i % len(markers)], markersize=5, linewidth=1.5,
                        label=label)
        for x, y, text in zip(c["rate"], c["quality"], c["labels"]):
            if text:
                ax.annotate(text, (x, y), textcoords="offset points", xytext=(5, -11), fontsize=7,
                            color=line.get_color())
    ax.set_xlabel("bits per pixel (bpp)")
    ax.set_ylabel(_AXIS_LABELS.get(metric, metric))
    if logx:
        ax.set_xscale("log")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.margins(x=0.08, y=0.08)
    fig.legend(loc="outside lower center", fontsize=8, ncols=1, frameon=False)
    return fig


def plot_rd(files: Sequence[str | Path], output: str | Path, metric: str = "psnr-rgb", title: str | None = None,
            logx: bool = False, anchor: str | Path | int | None = None) -> Path:
    """Draw one line per result file and write the figure (PNG, PDF or SVG by extension) atomically. anchor: one of
    the files (its path, its index or its curve's name) that the legend gives every other curve's BD-rate against;
    None: no BD-rates."""
    import matplotlib.pyplot as plt

    from bitstream.atomic import atomic_output

    if not files:
        raise UserError("no result files to plot")
    curves = [load_curve(load_results(f), metric, f) for f in files]
    fig = draw_rd(curves, metric, title, logx, find_anchor(curves, anchor))
    out = Path(output)
    suffix = out.suffix.lower().lstrip(".") or "png"
    with atomic_output(out) as tmp:
        fig.savefig(tmp, format=suffix, bbox_inches="tight", pad_inches=0.1)   # with any label past the axes
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.plot", description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", help="CompressAI-style result JSON files")
    ap.add_argument("-o", "--output", default="rd.png", help="image to write (default rd.png)")
    ap.add_argument("--metric", default="psnr-rgb", help="quality key in the results (default psnr-rgb)")
    ap.add_argument("--title", default=None)
    ap.add_argument("--logx", action="store_true", help="logarithmic bpp axis")
    ap.add_argument("--anchor", default=None,
                    help="the curve BD-rates are against: one of the files or a curve's name (default the first)")
    ap.add_argument("--no-bd", action="store_true", help="no BD-rates in the legend")
    args = ap.parse_args(argv)
    anchor = None if args.no_bd else (args.anchor if args.anchor is not None else 0)
    try:
        out = plot_rd(args.files, args.output, args.metric, args.title, args.logx, anchor)
    except UserError as e:
        print(f"plot: error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
