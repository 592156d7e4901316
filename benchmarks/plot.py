"""Rate-distortion plot of CompressAI-style result files.

    python -m benchmarks.plot RESULT.json [RESULT.json ...] -o plot.png [--metric psnr-rgb] [--title T] [--logx]
Each file is one curve ({"name", "results": {"bpp": [...], metric: [...]}}), drawn in order of bpp.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from benchmarks.bdrate import rd_points, load_results
from codec.errors import UserError

_AXIS_LABELS = {"psnr-rgb": "PSNR (RGB) [dB]", "ms-ssim-rgb": "MS-SSIM (RGB)", "psnr": "PSNR [dB]"}


def plot_rd(files: Sequence[str | Path], output: str | Path, metric: str = "psnr-rgb", title: str | None = None,
            logx: bool = False) -> Path:
    """Draw one line per result file and write the figure (PNG, PDF or SVG by extension) atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bitstream.atomic import atomic_output

    if not files:
        raise UserError("no result files to plot")
    curves = []
    for f in files:
        data = load_results(f)
        rate, quality = rd_points(data, metric, f)
        if not rate:
            raise UserError(f"{f} has no finite {metric} points")
        order = sorted(range(len(rate)), key=rate.__getitem__)
        curves.append((str(data["name"]), [rate[i] for i in order], [quality[i] for i in order]))

    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    markers = "os^vDP*Xph<>"
    for i, (name, rate, quality) in enumerate(curves):
        ax.plot(rate, quality, marker=markers[i % len(markers)], markersize=5, linewidth=1.5, label=name)
    ax.set_xlabel("bits per pixel (bpp)")
    ax.set_ylabel(_AXIS_LABELS.get(metric, metric))
    if logx:
        ax.set_xscale("log")
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out = Path(output)
    suffix = out.suffix.lower().lstrip(".") or "png"
    with atomic_output(out) as tmp:
        fig.savefig(tmp, format=suffix)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.plot", description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", help="CompressAI-style result JSON files")
    ap.add_argument("-o", "--output", default="rd.png", help="image to write (default rd.png)")
    ap.add_argument("--metric", default="psnr-rgb", help="quality key in the results (default psnr-rgb)")
    ap.add_argument("--title", default=None)
    ap.add_argument("--logx", action="store_true", help="logarithmic bpp axis")
    args = ap.parse_args(argv)
    try:
        out = plot_rd(args.files, args.output, args.metric, args.title, args.logx)
    except UserError as e:
        print(f"plot: error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
