"""The script to run on a lent GPU: HNeRV 1.5M on Bunny 640x1280 (132 frames), the paper's setting.

    python -m benchmarks.gpu_fit [--epochs 40,120,300 | --budgets 60,120,210] [--size 1.5M] [--codec hnerv]
        [--clip bunny --crop 640x1280] [--out results/gpu_fit] [--quick]

For each schedule (each is its own run: the cosine schedule anneals to the end of it) it runs the whole codec
(fit -> quantise -> code -> .ncb -> decode the file -> PSNR) and prints the GPU's name, torch.compile's time (its
warm-up step runs before the budget clock, so it is outside the fit's seconds and --budgets), seconds per epoch (all
of it, and steady state after the first logged interval), PSNR of the decoded file and the device class it holds
for, the file's bpp, and decoding speed (frames/s kept on the GPU, and copied to the host). Writes one JSON per run
and a summary JSON to --out. Targets (issue 3): >= 35.57 dB at <= 0.11 bpp within 210 s of fitting; decode >= 1500 fps.
--quick is a CPU smoke run (carphone, a tiny model, a few seconds).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from bitstream.container import Reader
from benchmarks.meta import machine_line, run_meta
from codec import registry
from codec.api import encode_file
from codec.base import decode_settings
from codec.data import bundled_clip
from codec.device import device_name, pick_device
from codec.errors import UserError
from codec.progress import print_table, write_json


def decode_speed(path: str, device: torch.device, batch_sizes=(8, 16, 32), repeats: int = 3) -> dict:
    """Best frames/s over batch sizes: the network alone on the device (`render`), and whole frames in host memory
    as `ncodec decode` gets them (`frames`)."""
    codec = registry.get(Reader.from_path(path).codec)
    decoded = codec.open(Reader.from_path(path), codec.DecodeOptions(device=str(device)))
    T = decoded.num_frames
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *a: None)

    def on_device(bs):
        with decode_settings(device, codec.decode_dtype(device)), torch.inference_mode():
            for _ in codec.render(decoded, 0, T, bs):
                pass

    def to_host(bs):
        for _ in codec.frames(decoded, 0, T, bs):
            pass

    best = {"decode_fps_device": 0.0, "decode_fps_host": 0.0}
    for bs in batch_sizes:
        on_device(bs)                                  # warm-up (cudnn plans, allocator)
        for key, run_once in (("decode_fps_device", on_device), ("decode_fps_host", to_host)):
            times = []
            for _ in range(repeats):
                sync()
                t0 = time.perf_counter()
                run_once(bs)
                sync()
                times.append(time.perf_counter() - t0)
            fps = T / min(times)
            if fps > best[key]:
                best[key] = fps
                best[key.replace("fps", "batch")] = bs
    return best


def steady_seconds_per_epoch(history: list[dict]) -> float | None:
    if len(history) < 3:
        return None
    a, b = history[0], history[-1]
    return (b["seconds"] - a["seconds"]) / max(b["epoch"] - a["epoch"], 1e-9)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_fit", description=__doc__.splitlines()[0])
    ap.add_argument("--codec", default="hnerv", choices=["hnerv", "nerv", "nervpp", "nirvana"])
    ap.add_argument("--lambda", dest="lmbda", type=float, default=None, help="NIRVANA's rate weight")
    ap.add_argument("--group", type=int, default=None, help="NIRVANA's frames per group")
    ap.add_argument("--size", default="1.5M")
    ap.add_argument("--clip", default="bunny")
    ap.add_argument("--crop", default="640x1280")
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--epochs", default=None, help="comma list of epoch schedules (default 40,120,300)")
    ap.add_argument("--budgets", default=None, help="comma list of wall-clock fit budgets in seconds instead")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--qat-epochs", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="results/gpu_fit")
    ap.add_argument("--quick", action="store_true", help="CPU smoke run: carphone 8 frames, tiny model")
    args = ap.parse_args(argv)
    try:
        return run(args, run_meta("benchmarks.gpu_fit", argv))
    except UserError as e:
        print(f"gpu_fit: error: {e}", file=sys.stderr)
        return 2


def run(args, meta: dict) -> int:
    if args.quick:
        args.clip, args.crop, args.frames, args.size = "carphone", "64x96", 8, "80k"
        args.epochs = args.epochs or "2,4"
    device = pick_device(args.device)
    try:
        if args.budgets:
            schedules = [("max_time", float(b)) for b in args.budgets.split(",")]
        else:
            schedules = [("epochs", int(e)) for e in (args.epochs or "40,120,300").split(",")]
    except ValueError:
        raise UserError("--epochs and --budgets take comma-separated numbers") from None
    src = str(bundled_clip(args.clip)) if not Path(args.clip).exists() else args.clip
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"device: {device_name(device)}  torch {torch.__version__}  clip {src} crop {args.crop}", flush=True)
    codec = registry.get(args.codec)
    rows = []
    for kind, value in schedules:
        tag = f"{args.codec}_{args.size}_{kind}{value:g}"
        steps = value if kind == "epochs" else None
        if args.codec == "nirvana":     # per-group networks: --size is per group, --epochs steps per group
            fit = {"steps_per_group": steps, "size": None if args.size == "1.5M" else args.size,
                   "lmbda": args.lmbda, "latent_lr": args.lr, **({"group": args.group} if args.group else {})}
        else:
            fit = {"epochs": steps, "size": args.size, "batch_size": args.batch_size, "lr": args.lr,
                   "qat_epochs": args.qat_epochs}
        options = codec.Options(device=str(device), max_frames=args.frames, crop=args.crop,
                                max_time=value if kind == "max_time" else None, **fit)
        ncb = out_dir / f"{tag}.ncb"
        t0 = time.perf_counter()
        s = encode_file(codec, src, ncb, options, overwrite=True)
        s["encoding_time"] = time.perf_counter() - t0
        s.update(decode_speed(str(ncb), device))
        s["decoding_time"] = s["frames"] / max(s["decode_fps_host"], 1e-9)
        s["psnr-rgb"], s["ms-ssim-rgb"], s["meta"] = s["psnr"], s["ms_ssim"], meta
        if args.codec == "nirvana":     # "epochs" of a NIRVANA run: the steps of a later group (the first gets 4x)
            s["epochs"] = float(s["group_steps"][-1]) if s.get("group_steps") else float("nan")
        s.setdefault("epochs", float(value) if kind == "epochs" else float("nan"))
        s.setdefault("psnr_fit", max(s.get("group_fit_psnr") or [float("nan")]))
        s["seconds_per_epoch"] = s["fit_seconds"] / max(s["epochs"], 1e-9)
        s["steady_seconds_per_epoch"] = steady_seconds_per_epoch(s.get("history", []))
        write_json(out_dir / f"{tag}.json", s)
        s.setdefault("compile_seconds", 0.0)
        rows.append({"schedule": f"{kind}={value:g}", "epochs": s["epochs"], "fit_s": s["fit_seconds"],
                     "compile_s": s["compile_seconds"],
                     "seconds_per_epoch": round(s["seconds_per_epoch"], 3),
                     "steady_seconds_per_epoch": round(s["steady_seconds_per_epoch"] or float("nan"), 3),
                     "psnr_fit": round(s["psnr_fit"], 2), "psnr": round(s["psnr"], 2),
                     "psnr_holds_for": s.get("psnr_holds_for"), "bpp": round(s["bpp"], 4),
                     "decoding_fps_device": round(s["decode_fps_device"]),
                     "decoding_fps_host": round(s["decode_fps_host"])})
        print_table(rows[-1:], title=tag)
        sys.stdout.flush()
    print_table(rows, title=f"{args.codec} {args.size} on {device_name(device)} ({machine_line(meta)})")
    write_json(out_dir / "summary.json", {"device": device_name(device), "torch": torch.__version__, "rows": rows,
                                          "meta": meta})
    return 0


if __name__ == "__main__":
    sys.exit(main())
