"""NIRVANA's rate control (issue 30, deliverable 4): does `--bpp B` land the whole file within 10% of B, with the
budget spread over the groups as the fit goes?

    python -m benchmarks.nirvana_rate [--clips carphone,bunny] [--bpps 0.25,0.5] [--frames 32]
        [--steps-per-group 150] [--seeds 0] [--tolerance 0.1] [--out results/nirvana_rate]

Each run encodes with the `nirvana` codec (`ncodec.encode(..., codec="nirvana", bpp=B, steps_per_group=N)`, one
torch thread, on the CPU), writes a real .ncb file and decodes it again from the file alone (`ncodec.decode`):
bpp is the whole file's bytes x 8 / (frames x height x width) and PSNR (RGB) the decoded frames'. Printed per run:
the landed bpp, its error against B in %, whether it is within --tolerance, PSNR, and per group the bits the coder
spent against the target the rate plan gave that group when its fit started (`group_bits`, `group_target_bits` of
the encode summary), with each group's lambda.

Clips: as benchmarks.equal_epochs (`bunny` = the reduced Bunny 160x320, `carphone` 144x176, or PATH[@K]); the first
--frames frames (32 = four groups of 8 at the default --group).
Writes <out>/nirvana_rate.json: meta, the settings, every run with its per-group numbers.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from benchmarks.equal_epochs import clip_label, load_clip
from benchmarks.meta import machine_line, run_meta
from codec.errors import UserError
from codec.progress import print_table, write_json


def run_one(frames, clip: str, bpp: float, steps: int, seed: int, group: int, size: str | None) -> dict:
    import ncodec
    from codec.video import metrics

    T, H, W, _ = frames.shape
    options = {"bpp": bpp, "steps_per_group": steps, "seed": seed, "device": "cpu", "group": group}
    if size:
        options["size"] = size
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "clip.ncb"
        t0 = time.perf_counter()
        s = ncodec.encode(frames, str(out), codec="nirvana", **options)
        seconds = time.perf_counter() - t0
        decoded = ncodec.decode(str(out), device="cpu")     # from the file alone, as a user decodes it
        file_bytes = out.stat().st_size
    landed = file_bytes * 8 / (T * H * W)
    spent, targets = s["group_bits"], s.get("group_target_bits", [])
    error = 100 * (landed / bpp - 1)
    return {"clip": clip, "frames": T, "height": H, "width": W, "bpp-target": bpp, "steps-per-group": steps,
            "seed": seed, "group": s["group"], "groups": s["groups"], "params": s["params"],
            "bytes": file_bytes, "bpp": landed, "error-pct": error, "psnr-rgb": metrics.psnr(frames, decoded)[0],
            "psnr-encode": s["psnr"], "group-bits": spent, "group-target-bits": targets,
            "group-spent-over-target": [b / t if t else None for b, t in zip(spent, targets)],
            "group-share": [b / sum(spent) for b in spent],
            "group-lambda": s["group_lambda"], "group-psnr": s["group_psnr"], "group-steps": s["group_steps"],
            "other-bits": 8 * file_bytes - sum(spent), "fit-seconds": s["fit_seconds"],
            "encode-seconds": round(seconds, 2)}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.nirvana_rate", description=__doc__.splitlines()[0])
    ap.add_argument("--clips", default="carphone,bunny", help="comma-separated clip specs (benchmarks.equal_epochs)")
    ap.add_argument("--bpps", default="0.25,0.5", help="comma-separated --bpp targets")
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--steps-per-group", type=int, default=150, help="NIRVANA's --steps-per-group (first group 4x)")
    ap.add_argument("--group", type=int, default=8, help="NIRVANA's --group")
    ap.add_argument("--size", default=None, help="NIRVANA's --size (default: the codec's)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--tolerance", type=float, default=0.10, help="the landed bpp's allowed relative error")
    ap.add_argument("--out", default="results/nirvana_rate")
    args = ap.parse_args(argv)
    meta = run_meta("benchmarks.nirvana_rate", argv)

    import torch

    os.environ.setdefault("NCODEC_THREADS", "1")
    torch.set_num_threads(int(os.environ["NCODEC_THREADS"]))
    clips = [c for c in args.clips.split(",") if c]
    bpps = [float(b) for b in args.bpps.split(",") if b]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    runs: list[dict] = []
    for clip in clips:
        frames, _ = load_clip(clip, args.frames)
        T, H, W, _ = frames.shape
        print(f"{clip_label(clip)}: {T} frames of {W}x{H}", flush=True)
        for bpp in bpps:
            for seed in seeds:
                try:
                    r = run_one(frames, clip_label(clip), bpp, args.steps_per_group, seed, args.group, args.size)
                except UserError as e:
                    print(f"  --bpp {bpp} seed {seed}: error: {e}", flush=True)
                    runs.append({"clip": clip_label(clip), "bpp-target": bpp, "seed": seed, "error": str(e)})
                    continue
                r["within"] = abs(r["error-pct"]) <= 100 * args.tolerance
                print(f"  --bpp {bpp} seed {seed}: {r['bpp']:.4f} bpp ({r['error-pct']:+.1f}%), "
                      f"{r['psnr-rgb']:.2f} dB, kbit per group spent/target "
                      + " ".join(f"{b / 1e3:.1f}/{t / 1e3:.1f}" for b, t in zip(r["group-bits"],
                                                                                 r["group-target-bits"]))
                      + f" ({r['encode-seconds']:.0f} s)", flush=True)
                runs.append(r)

    ok = [r for r in runs if "error" not in r]
    table = [{"clip": r["clip"], "frames": r["frames"], "steps/group": r["steps-per-group"], "seed": r["seed"],
              "--bpp": r["bpp-target"], "bpp": f"{r['bpp']:.4f}", "error": f"{r['error-pct']:+.1f}%",
              f"within {100 * args.tolerance:.0f}%": "yes" if r["within"] else "NO",
              "PSNR dB": f"{r['psnr-rgb']:.2f}",
              "kbit per group: spent/target": " ".join(f"{b / 1e3:.1f}/{t / 1e3:.1f}"
                                                       for b, t in zip(r["group-bits"], r["group-target-bits"])),
              "lambda per group": " ".join(f"{x:.2g}" for x in r["group-lambda"])} for r in ok]
    print_table(table, title=f"NIRVANA --bpp rate control ({machine_line(meta)}; one thread)")
    out = Path(args.out)
    result = {"meta": meta, "settings": {"clips": clips, "bpps": bpps, "frames": args.frames,
                                         "steps-per-group": args.steps_per_group, "group": args.group,
                                         "size": args.size, "seeds": seeds, "tolerance": args.tolerance},
              "runs": runs, "within-all": bool(ok) and len(ok) == len(runs) and all(r["within"] for r in ok)}
    write_json(out / "nirvana_rate.json", result)
    print(out / "nirvana_rate.json")
    return 0 if len(ok) == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
