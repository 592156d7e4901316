"""Rate-distortion of NeRV and HNeRV at several sizes, beside the classical codecs, with BD-rate against x265 medium.

    python -m benchmarks.rd [--clip bunny --crop 640x1280] [--codecs nerv,hnerv,nervpp,nirvana]
        [--sizes 0.35M,0.75M,1.5M,3M] [--lambdas 0.003,0.01,0.03,0.1] [--epochs 300 | --max-time S] [--device auto]
        [--out results/rd] [--classical results/classical] [--quick]

Default: the papers' setting (Bunny 640x1280, 132 frames, 300 epochs per size: a GPU job). --quick is a CPU run
on carphone (first 30 frames, three small sizes, 60 s of fitting each, HNeRV and NIRVANA unless --codecs says
otherwise).
Every point is a whole .ncb file: bpp = file bytes x 8 / pixels, PSNR of the frames the decoder produces.
Writes CompressAI-style JSON per codec, the x265/x264 curves on the same frames (read from --classical when a
file for this clip exists, otherwise measured here with x265 medium), an RD plot, and a table of what the
adaptive per-tensor coding saves against a fixed-length code and against HNeRV's one-table Huffman code.
NIRVANA's points come from --lambdas (its rate weight; --sizes is then ignored for it, each group network keeping
its default size, and --epochs means its steps per group), and every codec also gets a BD-rate against HNeRV when
HNeRV was run.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks.bdrate import bd_of, load_results
from benchmarks.classical import encode_classical, parse_clip_spec, result_json
from benchmarks.meta import machine_line, run_meta
from benchmarks.plot import plot_rd
from codec import registry
from codec.api import encode_file
from codec.device import device_name, pick_device
from codec.errors import UserError
from codec.progress import print_table, write_json
from codec.video.io import read_video

NAMES = {"nerv": "NeRV (ncodec)", "hnerv": "HNeRV (ncodec)", "nervpp": "NeRV++ (ncodec)",
         "nirvana": "NIRVANA (ncodec)"}


def run_codec(codec: str, src: str, crop, frames, sizes, epochs, max_time, device, out_dir: Path, label: str,
              batch_size=None, lambdas=(), meta: dict | None = None) -> tuple[dict, list[dict]]:
    rows = []
    # NIRVANA's rate is set by lambda (loss = MSE + lambda * bpp); the NeRV family's by the model size
    points = [(None, lam) for lam in lambdas] if codec == "nirvana" else [(size, None) for size in sizes]
    for size, lam in points:
        tag = size if lam is None else f"lambda{lam:g}"
        ncb = out_dir / f"{label}_{codec}_{tag}.ncb"
        c = registry.get(codec)
        fit = ({"steps_per_group": epochs, "lmbda": lam} if codec == "nirvana" else
               {"epochs": epochs, "size": size, "batch_size": batch_size})
        options = c.Options(device=device, max_frames=frames, crop=crop, max_time=max_time, **fit)
        t0 = time.perf_counter()
        s = encode_file(c, src, ncb, options, overwrite=True)
        encoding_time = time.perf_counter() - t0          # the whole encode: fit, quantise, code, verify
        c = s.get("coding") or {}
        fps = s.get("decode_fps")
        # CompressAI's eval_model names: psnr-rgb, ms-ssim-rgb, bpp, encoding_time and decoding_time (seconds for
        # the unit coded, here the whole clip)
        rows.append({"codec": codec, "size": tag, "params": s["params"], "bytes": s["bytes"], "bpp": s["bpp"],
                     "psnr-rgb": s["psnr"], "ms-ssim-rgb": s["ms_ssim"], "fit_seconds": s["fit_seconds"],
                     "encoding_time": encoding_time,
                     "decoding_time": s["frames"] / fps if fps and s.get("frames") else None,
                     "epochs": s.get("epochs"), "decode_fps": fps,
                     "fixed_length_bytes": c.get("fixed_length_bytes"),
                     "huffman_one_table_bytes": c.get("huffman_one_table_bytes"),
                     "huffman_per_tensor_bytes": c.get("huffman_per_tensor_bytes")})
        print_table(rows[-1:], title=f"{codec} {size}")
    sched = f"{epochs} epochs" if epochs else f"{max_time:g} s"
    record = {"name": f"{NAMES[codec]}, {sched}", "description": f"{codec} on {label}, {sched} per size, "
              f"whole .ncb file bytes, RGB PSNR of the decoded frames", "clip": label,
              "results": {"size": [r["size"] for r in rows], "params": [r["params"] for r in rows],
                          "bpp": [r["bpp"] for r in rows], "psnr-rgb": [r["psnr-rgb"] for r in rows],
                          "ms-ssim-rgb": [r["ms-ssim-rgb"] for r in rows],
                          "encoding_time": [r["encoding_time"] for r in rows],
                          "decoding_time": [r["decoding_time"] for r in rows],
                          "fit_seconds": [r["fit_seconds"] for r in rows]},
              "meta": meta or run_meta("benchmarks.rd")}
    write_json(out_dir / f"{label}_{codec}.json", record)
    return record, rows


def classical_curves(label: str, clip, classical_dir: Path, out_dir: Path, quick: bool,
                     meta: dict | None = None) -> list[Path]:
    """The classical result files for this clip: existing ones, or x265 medium measured now."""
    found = sorted(classical_dir.glob(f"{label}_*.json")) if classical_dir.is_dir() else []
    if any("x265_medium" in p.name for p in found):
        return found
    crfs = (23, 28, 33, 38) if quick else (18, 23, 28, 33, 38)
    rows = [encode_classical(clip.frames, clip.fps, "libx265", "medium", crf, ms_ssim=True) for crf in crfs]
    T, H, W = clip.frames.shape[:3]
    path = out_dir / f"{label}_x265_medium.json"
    write_json(path, result_json(label, f"{label} ({T} frames, {W}x{H})", "libx265", "medium", rows,
                                 meta or run_meta("benchmarks.rd")))
    return found + [path]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.rd", description=__doc__.splitlines()[0])
    ap.add_argument("--clip", default=None, help="bundled name or file (default bunny; carphone with --quick)")
    ap.add_argument("--crop", default=None, help="centre crop HxW (default 640x1280 for bunny)")
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--codecs", default=None,
                    help="default nerv,hnerv,nervpp,nirvana (hnerv,nirvana with --quick)")
    ap.add_argument("--sizes", default=None, help="default 0.35M,0.75M,1.5M,3M (0.1M,0.15M,0.2M with --quick)")
    ap.add_argument("--lambdas", default=None, help="NIRVANA's points (default 0.003,0.01,0.03,0.1)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="epochs per size (default 300; NIRVANA: steps per group, default its own)")
    ap.add_argument("--max-time", type=float, default=None, help="fit seconds per size instead of epochs")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="results/rd")
    ap.add_argument("--classical", default="results/classical", help="folder of benchmarks.classical results")
    ap.add_argument("--quick", action="store_true", help="CPU run: carphone, 30 frames, 3 sizes, 60 s each")
    args = ap.parse_args(argv)
    try:
        return run(args, run_meta("benchmarks.rd", argv))
    except UserError as e:
        print(f"rd: error: {e}", file=sys.stderr)
        return 2


def run(args, meta: dict | None = None) -> int:
    meta = meta or run_meta("benchmarks.rd")
    q = args.quick
    clip_name = args.clip or ("carphone" if q else "bunny")
    crop = args.crop or ("640x1280" if clip_name == "bunny" else None)
    frames = args.frames or (30 if q else None)
    codecs = (args.codecs or ("hnerv,nirvana" if q else "nerv,hnerv,nervpp,nirvana")).split(",")
    try:
        lambdas = [float(v) for v in (args.lambdas or "0.003,0.01,0.03,0.1").split(",")]
    except ValueError:
        raise UserError("--lambdas takes comma-separated numbers") from None
    sizes = (args.sizes or ("0.1M,0.15M,0.2M" if q else "0.35M,0.75M,1.5M,3M")).split(",")
    epochs, max_time = args.epochs, args.max_time
    if epochs is None and max_time is None:
        epochs, max_time = (None, 60.0) if q else (300, None)
    device = str(pick_device(args.device))
    label, src, crop_t = parse_clip_spec(clip_name + (f":{crop}" if crop else ""))
    if frames:
        label += f"-{frames}f"
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_line(meta)
    print(f"device: {device_name(pick_device(device))} ({machine}); clip {src} crop {crop} frames {frames or 'all'}")

    records, all_rows = [], []
    for codec in codecs:
        rec, rows = run_codec(codec, src, crop, frames, sizes, epochs if codec != "nirvana" else args.epochs,
                              max_time, device, out_dir, label, args.batch_size, lambdas, meta)
        records.append(out_dir / f"{label}_{codec}.json")
        all_rows += rows

    clip = read_video(src, frames=frames, crop=crop_t)
    anchors = classical_curves(label, clip, Path(args.classical), out_dir, q, meta)
    x265 = next((p for p in anchors if "x265_medium" in p.name), None)
    plot = plot_rd([*records, *anchors], out_dir / f"{label}_rd.png", anchor=x265,
                   title=f"{label}: INR codecs vs classical ({machine})")

    hnerv = out_dir / f"{label}_hnerv.json" if "hnerv" in codecs else None
    bd_rows = []
    for anchor_name, anchor in (("x265 medium", x265), ("HNeRV (ncodec)", hnerv)):
        if anchor is None:
            continue
        for rec in records:
            if rec == anchor:
                continue
            data = load_results(rec)
            row = {"codec": data["name"], "anchor": anchor_name}
            try:
                bd = bd_of(load_results(anchor), data, "psnr-rgb", anchor, rec)
                row["bd_rate_%"], row["bd_psnr_db"] = bd["bd_rate_%"], bd["bd_psnr-rgb"]
            except (UserError, ValueError, TypeError) as e:
                row["note"] = str(e).splitlines()[0][:100]
            bd_rows.append(row)

    print_table([{k: r[k] for k in ("codec", "size", "params", "bpp", "psnr-rgb", "ms-ssim-rgb", "fit_seconds",
                                    "epochs")} for r in all_rows],
                title=f"{label} on {device_name(pick_device(device))} ({machine})")
    print_table(bd_rows, title="BD-rate against x265 medium and HNeRV (negative = fewer bits at equal PSNR)")
    saving = [{"codec": r["codec"], "size": r["size"], "file_bytes": r["bytes"],
               "fixed_length_bytes": round(r["fixed_length_bytes"]),
               "huffman_one_table_bytes": round(r["huffman_one_table_bytes"]),
               "saving_vs_fixed_%": round(100 * (1 - r["bytes"] / r["fixed_length_bytes"]), 2),
               "saving_vs_huffman_%": round(100 * (1 - r["bytes"] / r["huffman_one_table_bytes"]), 2)}
              for r in all_rows if r["fixed_length_bytes"]]         # NIRVANA codes residuals: no such table
    print_table(saving, title="whole file vs the stored symbols at fixed length and under one Huffman table "
                              "(HNeRV's scheme; its table and side info not counted)")
    write_json(out_dir / f"{label}_summary.json", {"device": device_name(pick_device(device)), "rows": all_rows,
                                                   "bd": bd_rows, "coding": saving, "plot": str(plot),
                                                   "meta": meta})
    print(f"plot: {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
