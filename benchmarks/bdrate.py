"""Bjontegaard delta rate and delta PSNR (VCEG-M33): how much rate (or quality) a test codec saves over an anchor.

BD-rate: fit log(rate) as a cubic polynomial of PSNR for each curve, integrate both over the PSNR range the two curves
share, and turn the mean difference of log-rates into a percentage: exp(mean diff) - 1. Negative = the test codec
needs fewer bits than the anchor for the same quality. BD-PSNR swaps the axes: PSNR as a cubic of log(rate),
averaged over the shared log-rate range. The method needs 4 points per curve; with 3 the fit is quadratic (said in
the result's note by bd_rate_json), and fewer is refused.

    python -m benchmarks.bdrate ANCHOR.json TEST.json [TEST.json ...] [--metric psnr-rgb]
reads CompressAI-style result files ({"name", "results": {"bpp": [...], "psnr-rgb": [...]}}).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from codec.errors import UserError


def _curve(rate: Sequence[float], quality: Sequence[float], what: str) -> tuple[np.ndarray, np.ndarray]:
    r, q = np.asarray(rate, np.float64), np.asarray(quality, np.float64)
    if r.shape != q.shape or r.ndim != 1:
        raise UserError(f"{what}: rate and quality lists must be 1-D and the same length")
    keep = np.isfinite(r) & np.isfinite(q)
    r, q = r[keep], q[keep]
    if len(r) < 3:
        raise UserError(f"{what}: BD needs at least 3 finite rate-quality points (4 for the standard cubic), "
                        f"got {len(r)}")
    if np.any(r <= 0):
        raise UserError(f"{what}: rates must be positive")
    return np.log(r), q


def _mean_gap(x_a: np.ndarray, y_a: np.ndarray, x_t: np.ndarray, y_t: np.ndarray, axis: str) -> float:
    """Mean of (fit_t - fit_a) over the shared range of x, where each fit is y as a polynomial of x."""
    lo, hi = max(x_a.min(), x_t.min()), min(x_a.max(), x_t.max())
    if not hi > lo:
        raise UserError(f"the two curves share no {axis} range ([{x_a.min():.4g}, {x_a.max():.4g}] vs "
                        f"[{x_t.min():.4g}, {x_t.max():.4g}])")
    areas = []
    for x, y in ((x_a, y_a), (x_t, y_t)):
        poly = np.polyint(np.polyfit(x, y, min(3, len(x) - 1)))
        areas.append(np.polyval(poly, hi) - np.polyval(poly, lo))
    return float((areas[1] - areas[0]) / (hi - lo))


def bd_rate(rate_anchor, psnr_anchor, rate_test, psnr_test) -> float:
    """BD-rate of test vs anchor in percent (negative = test saves bits at equal PSNR)."""
    lr_a, q_a = _curve(rate_anchor, psnr_anchor, "anchor")
    lr_t, q_t = _curve(rate_test, psnr_test, "test")
    return float(np.expm1(_mean_gap(q_a, lr_a, q_t, lr_t, "quality")) * 100.0)


def bd_psnr(rate_anchor, psnr_anchor, rate_test, psnr_test) -> float:
    """BD-PSNR of test vs anchor in dB (positive = test has higher quality at equal rate)."""
    lr_a, q_a = _curve(rate_anchor, psnr_anchor, "anchor")
    lr_t, q_t = _curve(rate_test, psnr_test, "test")
    return _mean_gap(lr_a, q_a, lr_t, q_t, "rate")


def load_results(path: str | Path) -> dict:
    """A CompressAI-style result file: {"name": str, "results": {"bpp": [...], metric: [...]}}."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read results {path}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict) or \
            result_key(data["results"], "bpp") is None:
        raise UserError(f"{path} is not a result file: it needs a 'results' object with a 'bpp' list")
    data.setdefault("name", Path(path).stem)
    return data


# CompressAI's eval_model names first, then the spellings earlier ncodec results used (read back, never written)
ALIASES = {"psnr-rgb": ("psnr_rgb", "psnr"), "ms-ssim-rgb": ("ms_ssim_rgb", "ms-ssim", "ms_ssim"),
           "bpp": ("bits_per_pixel",), "encoding_time": ("encode_seconds",), "decoding_time": ("decode_seconds",)}


def result_key(res: dict, metric: str) -> str | None:
    """The key under which `res` holds `metric`: the name itself, or an older spelling of it (None if neither)."""
    if metric in res:
        return metric
    for canonical, old in ALIASES.items():
        if metric == canonical or metric in old:
            return next((k for k in (canonical, *old) if k in res), None)
    return None


def rd_points(data: dict, metric: str, path) -> tuple[list[float], list[float]]:
    res = data["results"]
    key = result_key(res, metric)
    if key is None:
        raise UserError(f"{path} has no {metric!r} results (it has {', '.join(res)})")
    # null marks a missing value (e.g. an infinite PSNR written as JSON): drop the point
    pairs = [(r, q) for r, q in zip(res[result_key(res, "bpp")], res[key]) if r is not None and q is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def bd_of(anchor: dict, test: dict, metric: str = "psnr-rgb", anchor_path="anchor", test_path="test") -> dict:
    """BD-rate (and BD-quality) of one loaded result (load_results) against another."""
    ra, qa = rd_points(anchor, metric, anchor_path)
    rt, qt = rd_points(test, metric, test_path)
    out = {"anchor": anchor["name"], "test": test["name"], "metric": metric,
           "bd_rate_%": bd_rate(ra, qa, rt, qt), f"bd_{metric}": bd_psnr(ra, qa, rt, qt)}
    if min(len(ra), len(rt)) < 4:
        out["note"] = "quadratic fit (fewer than 4 points)"
    return out


def bd_rate_json(anchor: str | Path, test: str | Path, metric: str = "psnr-rgb") -> dict:
    """BD-rate (and BD-quality) of one result file against another."""
    return bd_of(load_results(anchor), load_results(test), metric, anchor, test)


def main(argv: Sequence[str] | None = None) -> int:
    from codec.progress import print_table

    ap = argparse.ArgumentParser(prog="python -m benchmarks.bdrate", description=__doc__.splitlines()[0])
    ap.add_argument("anchor", help="anchor result JSON")
    ap.add_argument("tests", nargs="+", help="result JSON files to compare with the anchor")
    ap.add_argument("--metric", default="psnr-rgb", help="quality key in the results (default psnr-rgb)")
    args = ap.parse_args(argv)
    try:
        rows = [bd_rate_json(args.anchor, t, args.metric) for t in args.tests]
    except UserError as e:
        print(f"bdrate: error: {e}", file=sys.stderr)
        return 2
    columns = ["anchor", "test", "bd_rate_%", f"bd_{args.metric}"]
    columns += ["note"] if any("note" in r for r in rows) else []
    print_table(rows, columns, title=f"BD vs {rows[0]['anchor']} ({args.metric}); negative BD-rate = fewer bits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
