"""NeRV's sizing rule at small frames (issue 30, deliverable 3): the paper's stem against blocks first, at equal size
and epochs.

    python -m benchmarks.nerv_sizing [--clips bunny,carphone] [--size 0.1M] [--epochs 100] [--seeds 0,1]
        [--frames 32] [--rules paper-stem,blocks-first] [--out results/nerv_sizing]

Rules (both give a network of --size parameters, within 5%):
  paper-stem    the rule before issue 30 (codec/video/nerv.py at 70d3eaf), rebuilt here as `paper_stem_config`:
                stem hidden 512, fc_dim from the quadratic a*x^2 + b*x = size - stem input, then the exact count;
                where one channel is too coarse a step, the stem's hidden width absorbs the rest. At small frames
                most parameters sit behind an fc_dim of a few channels.
  blocks-first  today's `codec.video.nerv.nerv_config`: no bottleneck narrower than the blocks after it, the stem
                at most a quarter of the parameters.

Each run fits NeRV with its rule's config through the `nerv` codec's own encode (one torch thread, in its own
process), writes a real .ncb file, and decodes it again from the file alone (`ncodec.decode`: the registry's `nerv`
decoder, which reads the config the file records), so PSNR is the decoded file's and bpp the whole file's. The
paper-stem rule reaches the encode through the codec's `family` (a NeRVFamily whose `config` is the old rule); no
codec file is changed. The runs of one (clip, seed) start together, so their s/epoch are measured under the same
load and compared as a ratio against the first rule's.

Clips: as benchmarks.equal_epochs (`bunny` = the reduced Bunny 160x320, `carphone` 144x176, or PATH[@K]).
Writes <out>/nerv_sizing.json: meta, every run, the summary rows.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from benchmarks import side_by_side
from benchmarks.equal_epochs import clip_label, load_clip
from benchmarks.meta import machine_line, run_meta
from codec.errors import UserError
from codec.progress import print_table, write_json

RULES = ("paper-stem", "blocks-first")


# ---------------------------------------------------------------------------------------------------------------
# the two sizing rules


def paper_stem_config(height: int, width: int, frames: int, size: float, *, lower_width: int = 12):
    """The NeRV config nearest `size` under the rule before issue 30 (the paper's stem, hidden 512; the rule of
    codec/video/nerv.py at commit 70d3eaf, kept here so the comparison can be rerun)."""
    from codec.video.layers import choose_geometry, meta_count, solve_width
    from codec.video.nerv import SIZE_TOLERANCE, NeRV, NeRVConfig

    geo = choose_geometry(height, width, n_blocks=5, min_side=4)
    base = NeRVConfig(height, width, frames, geo.strides, geo.grid_h, geo.grid_w, fc_dim=1, lower_width=lower_width,
                      stem_hidden=512)
    cells = geo.grid_h * geo.grid_w
    k2 = base.kernel ** 2
    a = sum(k2 * s * s * (1.0 if i == 0 else 0.5 ** (2 * i - 1)) for i, s in enumerate(geo.strides))
    b = float(base.stem_hidden + 1) * cells
    budget = max(size - (80 * base.stem_hidden + base.stem_hidden), 1.0)
    guess = (-b + math.sqrt(b * b + 4 * a * budget)) / (2 * a)

    def count(fc: int, hidden: int = base.stem_hidden) -> int:
        cfg = replace(base, fc_dim=fc, stem_hidden=hidden)
        return meta_count(lambda: NeRV(cfg))

    fc = solve_width(count, size, guess, "NeRV")
    best = (abs(count(fc) - size), 0, fc, base.stem_hidden)
    if best[0] > 0.01 * size:        # one channel too coarse a step: the stem's hidden width takes up the rest
        for f in (fc - 1, fc, fc + 1):
            if f < 1:
                continue
            c0, per = count(f, 64), count(f, 65) - count(f, 64)
            hidden = int(round(64 + (size - c0) / per))
            if 64 <= hidden <= 1024:
                best = min(best, (abs(count(f, hidden) - size), abs(hidden - base.stem_hidden), f, hidden))
    err, _, fc, hidden = best
    if err > SIZE_TOLERANCE * size:
        raise UserError(f"--size {size:.0f} cannot be met within 5% for {height}x{width} with NeRV's paper stem "
                        f"(nearest {count(fc, hidden)})")
    return replace(base, fc_dim=fc, stem_hidden=hidden)


def rule_config(rule: str):
    from codec.video.nerv import nerv_config

    if rule == "paper-stem":
        return paper_stem_config
    if rule == "blocks-first":
        return nerv_config
    raise UserError(f"unknown rule {rule!r} (known: {', '.join(RULES)})")


def describe(cfg) -> dict:
    """What a config is: fc_dim, stem hidden width, block widths, parameters and the stem's share of them."""
    from codec.video.layers import meta_count
    from codec.video.nerv import NeRV

    params = meta_count(lambda: NeRV(cfg))
    cells = cfg.grid_h * cfg.grid_w
    stem = (2 * cfg.pe_levels + 1) * cfg.stem_hidden + (cfg.stem_hidden + 1) * cfg.fc_dim * cells
    return {"fc-dim": cfg.fc_dim, "stem-hidden": cfg.stem_hidden, "widths": cfg.widths(),
            "strides": list(cfg.strides), "grid": [cfg.grid_h, cfg.grid_w], "params": params,
            "stem-share": stem / params}


def nerv_codec(rule: str):
    """The `nerv` codec whose encode sizes the network by `rule` (the file it writes is a plain `nerv` file)."""
    from codec.video.inr_codec import NeRVCodec, NeRVFamily

    config = rule_config(rule)

    class RuleFamily(NeRVFamily):
        def config(self, h, w, t, size):
            return config(h, w, t, size)

    class RuleCodec(NeRVCodec):
        @property
        def family(self):
            return RuleFamily()

    return RuleCodec()


# ---------------------------------------------------------------------------------------------------------------
# one run, in its own process (--worker)


def run_one(task: dict) -> dict:
    import ncodec
    from codec.api import encode_file
    from codec.base import Job
    from codec.video import metrics
    from codec.video.options import NeRVOptions

    frames, _ = load_clip(task["clip"], task["frames"])
    T, H, W, _ = frames.shape
    cfg = rule_config(task["rule"])(H, W, T, float(task["size"]))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "clip.ncb"
        options = NeRVOptions(device="cpu", size=task["size"], epochs=task["epochs"], seed=task["seed"])
        s = encode_file(nerv_codec(task["rule"]), frames, out, options, Job(checkpoint=None, show_bar=False))
        decoded = ncodec.decode(str(out), device="cpu")     # from the file alone, as a user decodes it
        info = ncodec.info(str(out))
        file_bytes = out.stat().st_size
    stored = {k: info.get(k) for k in ("fc_dim", "widths", "decoder_params")}
    if stored["fc_dim"] != cfg.fc_dim:
        raise UserError(f"the file records fc_dim {stored['fc_dim']}, the {task['rule']} rule gave {cfg.fc_dim}")
    return {**describe(cfg), "psnr-rgb": metrics.psnr(frames, decoded)[0], "psnr-encode": s["psnr"],
            "psnr-fit": s["psnr_fit"], "bytes": file_bytes, "bpp": file_bytes * 8 / (T * H * W),
            "fit-seconds": s["fit_seconds"], "s-per-epoch": s["fit_seconds"] / task["epochs"],
            "frames-shape": [T, H, W]}


def worker(task: dict) -> int:
    return side_by_side.worker(run_one, task)


def run_together(tasks: list[dict], group: int) -> list[dict]:
    """The tasks as worker processes started at the same moment, one torch thread each."""
    return side_by_side.run_together("benchmarks.nerv_sizing", tasks, group,
                                     ("clip", "size", "epochs", "seed", "rule"))


def summarise(runs: list[dict], baseline: str) -> list[dict]:
    """One row per (clip, rule): PSNR mean ± half the range over seeds, bpp, params, s/epoch and its ratio to the
    baseline rule's run of the same group (same moment)."""
    rows = []
    for clip in dict.fromkeys(r["clip"] for r in runs):
        here = [r for r in runs if r["clip"] == clip and "error" not in r]
        base = {r["group"]: r["s-per-epoch"] for r in here if r["rule"] == baseline}
        for rule in dict.fromkeys(r["rule"] for r in here):
            rs = [r for r in here if r["rule"] == rule]
            p = [r["psnr-rgb"] for r in rs]
            ratios = [r["s-per-epoch"] / base[r["group"]] for r in rs if r["group"] in base]
            first = rs[0]
            rows.append({"clip": clip, "rule": rule, "size": first["size"], "epochs": first["epochs"],
                         "seeds": len(rs), "psnr-rgb": float(np.mean(p)), "psnr-spread": (max(p) - min(p)) / 2,
                         "psnr-each": [round(v, 2) for v in p], "bpp": float(np.mean([r["bpp"] for r in rs])),
                         "params": first["params"], "fc-dim": first["fc-dim"], "stem-hidden": first["stem-hidden"],
                         "widths": first["widths"], "stem-share": first["stem-share"],
                         "s-per-epoch": float(np.mean([r["s-per-epoch"] for r in rs])),
                         "time-ratio": float(np.mean(ratios)) if ratios else None})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.nerv_sizing", description=__doc__.splitlines()[0])
    ap.add_argument("--clips", default="bunny,carphone", help="comma-separated clip specs (benchmarks.equal_epochs)")
    ap.add_argument("--rules", default=",".join(RULES), help="the first is the baseline times are against")
    ap.add_argument("--size", default="0.1M")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--out", default="results/nerv_sizing")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    meta = run_meta("benchmarks.nerv_sizing", argv)
    from codec.video.layers import parse_size

    rules = [r for r in args.rules.split(",") if r]
    for r in rules:
        rule_config(r)
    clips = [c for c in args.clips.split(",") if c]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    size = str(int(parse_size(args.size)))
    runs: list[dict] = []
    for clip in clips:
        frames, _ = load_clip(clip, args.frames)
        T, H, W, _ = frames.shape
        print(f"{clip_label(clip)}: {T} frames of {W}x{H}", flush=True)
        for rule in rules:
            d = describe(rule_config(rule)(H, W, T, float(size)))
            print(f"  {rule}: fc_dim {d['fc-dim']}, stem hidden {d['stem-hidden']}, widths "
                  f"{','.join(map(str, d['widths']))}, {d['params']} params, stem {100 * d['stem-share']:.0f}%",
                  flush=True)
        for seed in seeds:
            t0 = time.perf_counter()
            group = [{"clip": clip, "size": size, "epochs": args.epochs, "seed": seed, "rule": r,
                      "frames": args.frames} for r in rules]
            done = run_together(group, len(runs))
            for r in done:
                if "error" in r:
                    print(f"  {r['rule']} seed {seed}: error: {r['error']}", flush=True)
                else:
                    print(f"  {r['rule']} seed {seed}: {r['psnr-rgb']:.2f} dB {r['bpp']:.4f} bpp "
                          f"{r['s-per-epoch']:.2f} s/epoch", flush=True)
            print(f"  (group in {time.perf_counter() - t0:.0f} s)", flush=True)
            runs += done

    rows = summarise(runs, rules[0])
    table = [{"clip": clip_label(r["clip"]), "rule": r["rule"], "size": f"{float(r['size']) / 1e6:.3g}M",
              "epochs": r["epochs"], "seeds": r["seeds"], "params": r["params"],
              "fc_dim/hidden": f"{r['fc-dim']}/{r['stem-hidden']}", "stem": f"{100 * r['stem-share']:.0f}%",
              "PSNR dB": f"{r['psnr-rgb']:.2f} ± {r['psnr-spread']:.2f}", "bpp": f"{r['bpp']:.4f}",
              "s/epoch": f"{r['s-per-epoch']:.2f}",
              f"x {rules[0]}": "" if r["time-ratio"] is None else f"{r['time-ratio']:.2f}"} for r in rows]
    print_table(table, title=f"NeRV sizing rules at equal size and epochs ({machine_line(meta)}; one thread per run)")
    out = Path(args.out)
    result = {"meta": meta, "clips": {clip_label(c): c for c in clips}, "rules": rules, "baseline": rules[0],
              "runs": runs, "summary": rows}
    write_json(out / "nerv_sizing.json", result)
    print(out / "nerv_sizing.json")
    return 0 if rows and not any("error" in r for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
