"""Classical video codecs (x264, x265, SVT-AV1 through PyAV) over a CRF sweep: the anchors every INR codec faces.

    python -m benchmarks.classical [CLIP ...] [--frames N] [--crop HxW] [--codecs x264,x265,av1]
        [--presets medium,veryslow] [--crfs 18,23,28] [--fps F] [--no-msssim] [--out DIR] [--quick]

CLIP is a bundled clip name (bunny, bikes, carphone), any video file or PNG folder, optionally with its own crop as
NAME:HxW (e.g. bunny:640x1280). Default: carphone, bikes, bunny and bunny:640x1280.

What is measured (the conventions of shared/research/anchors.md, with one difference in what bytes count):
  - the RGB frames are converted to yuv420p by swscale (BT.601, limited range) and fed to the encoder at the clip's
    frame rate (--fps overrides it; rate control in x264/x265 depends on it slightly), crf and preset as given,
    everything else default except that the encoders' console logs and x265's settings SEI (info=0) are off;
  - bpp = bytes of all packets x 8 / (frames x height x width). Packets carry the parameter sets in-band (no container,
    no global header), so everything a decoder needs is counted, and nothing else;
  - PSNR = mean over frames of RGB PSNR (peak 255) of the decoded frames converted back to RGB; MS-SSIM likewise;
  - encode fps includes the RGB -> YUV conversion, decode fps the YUV -> RGB conversion (FFmpeg's auto threads).
One CompressAI-style JSON per clip and codec/preset goes to --out (default results/classical/).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np

from benchmarks.meta import machine_line, run_meta
from codec.data import BUNDLED_CLIPS, bundled_clip
from codec.errors import UserError
from codec.progress import print_table, progress, write_json
from codec.video import metrics
from codec.video.io import encoder_options, parse_crop, read_video, resolve_codec

DECODERS = {"libx264": "h264", "libx265": "hevc", "libsvtav1": "libdav1d"}
SHORT_NAMES = {"libx264": "x264", "libx265": "x265", "libsvtav1": "av1"}
DEFAULT_CRFS = {"libx264": (18, 23, 28, 33, 38), "libx265": (18, 23, 28, 33, 38), "libsvtav1": (25, 35, 45, 55)}
DEFAULT_CRFS_VERYSLOW_X265 = (23, 28, 33)  # x265 veryslow runs at about 1 frame/s on 720p: three points
QUICK_CRFS = {"libx264": (23, 33), "libx265": (23, 33), "libsvtav1": (35, 55)}
DEFAULT_CLIPS = ("carphone", "bikes", "bunny", "bunny:640x1280")
AV1_PRESET = "6"


def encode_classical(frames: np.ndarray, fps: Fraction | float | int | None = None, codec: str = "libx265",
                     preset: str | int = "medium", crf: int | float = 28, ms_ssim: bool = True,
                     device: str = "cpu", keep_decoded: bool = False) -> dict:
    """Encode RGB frames [T, H, W, 3] uint8 with a classical codec, decode them, and measure rate and quality.

    Returns {codec, preset, crf, frames, height, width, bytes, bpp, psnr, ms_ssim (None if off), encode_fps,
    decode_fps, encoding_time, decoding_time (seconds for the whole clip)} and, with keep_decoded, "decoded": the
    decoded RGB frames.
    """
    codec = resolve_codec(codec)
    if codec not in DECODERS:
        raise UserError(f"{codec} is not a classical lossy codec here; choose x264, x265 or av1")
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise UserError(f"expected uint8 RGB frames [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    T, H, W, _ = frames.shape
    if H % 2 or W % 2:
        raise UserError(f"yuv420p needs an even width and height, got {W}x{H}: crop the clip")
    rate = Fraction(fps if fps is not None else 25).limit_denominator(1_000_000)

    enc = av.CodecContext.create(codec, "w")
    enc.width, enc.height, enc.pix_fmt = W, H, "yuv420p"
    enc.time_base, enc.framerate = 1 / rate, rate
    enc.options = encoder_options(codec, crf, preset)
    packets: list[av.Packet] = []
    try:
        start = time.perf_counter()
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            packets += enc.encode(frame)
        packets += enc.encode(None)
        encode_s = time.perf_counter() - start
    except av.FFmpegError as e:
        raise UserError(f"{codec} failed (crf {crf}, preset {preset}): {e}") from None
    num_bytes = sum(p.size for p in packets)

    dec = av.CodecContext.create(DECODERS[codec], "r")
    dec.thread_type = "AUTO"
    decoded = np.empty_like(frames)
    n = 0
    start = time.perf_counter()
    for packet in [*packets, None]:
        for frame in dec.decode(packet):
            if n < T:
                decoded[n] = frame.to_ndarray(format="rgb24")
            n += 1
    decode_s = time.perf_counter() - start
    if n != T:
        raise RuntimeError(f"{codec} decoded {n} frames from {T} encoded")

    result = {"codec": codec, "preset": str(preset), "crf": crf, "frames": T, "height": H, "width": W,
              "bytes": num_bytes, "bpp": metrics.bpp(num_bytes, T, H, W),
              "psnr": metrics.psnr(frames, decoded)[0],
              "ms_ssim": metrics.ms_ssim(frames, decoded, device=device) if ms_ssim else None,
              "encode_fps": T / encode_s, "decode_fps": T / decode_s, "encoding_time": encode_s,
              "decoding_time": decode_s}
    if keep_decoded:
        result["decoded"] = decoded
    return result


def parse_clip_spec(spec: str, default_crop: tuple[int, int] | None = None) -> tuple[str, str, tuple | None]:
    """'bunny:640x1280' -> (label 'bunny-640x1280', path, (640, 1280)); a plain name or path uses default_crop."""
    crop = default_crop
    m = re.fullmatch(r"(.+):(\d+[xX_]\d+)", spec)
    if m:
        spec, crop = m.group(1), parse_crop(m.group(2))
    if spec.lower() in BUNDLED_CLIPS:
        path, label = str(bundled_clip(spec)), spec.lower()
    else:
        path, label = spec, Path(spec.rstrip("/")).stem or "clip"
    if crop:
        label += f"-{crop[0]}x{crop[1]}"
    return label, path, crop


def sweep_plan(codecs: Sequence[str], presets: Sequence[str], crfs: Sequence[float] | None,
               quick: bool = False, av1_presets: Sequence[str] = (AV1_PRESET,)) -> list[tuple[str, str, list]]:
    """[(encoder, preset, [crf, ...]), ...] for the codecs asked for."""
    plan = []
    for name in codecs:
        codec = resolve_codec(name)
        if codec not in DECODERS:
            raise UserError(f"{name} is not a classical lossy codec here; choose x264, x265 or av1")
        for preset in (av1_presets if codec == "libsvtav1" else presets):
            if crfs:
                points = list(crfs)
            elif quick:
                points = list(QUICK_CRFS[codec])
            elif codec == "libx265" and preset == "veryslow":
                points = list(DEFAULT_CRFS_VERYSLOW_X265)
            else:
                points = list(DEFAULT_CRFS[codec])
            plan.append((codec, str(preset), points))
    return plan


def result_json(label: str, clip_desc: str, codec: str, preset: str, rows: list[dict],
                meta: dict | None = None) -> dict:
    """The CompressAI-style record of one codec/preset sweep on one clip (CompressAI eval_model's key names;
    encoding_time and decoding_time are seconds for the whole clip, the unit coded), with the run's meta."""
    return {
        "name": f"{SHORT_NAMES[codec]} {'preset ' + preset if codec == 'libsvtav1' else preset}",
        "description": f"{codec} preset {preset} on {clip_desc}: RGB -> yuv420p, crf sweep, bpp from packet bytes "
                       f"(in-band headers), PSNR/MS-SSIM on RGB averaged over frames; PyAV {av.__version__}",
        "clip": label,
        "results": {
            "crf": [r["crf"] for r in rows],
            "bpp": [r["bpp"] for r in rows],
            "psnr-rgb": [r["psnr"] for r in rows],
            "ms-ssim-rgb": [r["ms_ssim"] for r in rows],
            "encoding_time": [r.get("encoding_time", r["frames"] / r["encode_fps"]) for r in rows],
            "decoding_time": [r.get("decoding_time", r["frames"] / r["decode_fps"]) for r in rows],
            "encoding_fps": [r["encode_fps"] for r in rows],
            "decoding_fps": [r["decode_fps"] for r in rows],
        },
        "meta": meta if meta is not None else run_meta(),
    }


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.classical", description=__doc__.splitlines()[0])
    ap.add_argument("clips", nargs="*", help="bundled name, file or PNG folder, optionally NAME:HxW")
    ap.add_argument("--frames", type=int, default=None, help="first N frames of each clip (default all)")
    ap.add_argument("--crop", default=None, help="centre crop HxW for clips without their own")
    ap.add_argument("--codecs", default="x264,x265,av1")
    ap.add_argument("--presets", default="medium,veryslow", help="x264/x265 presets")
    ap.add_argument("--av1-presets", default=AV1_PRESET, help="SVT-AV1 presets (integers)")
    ap.add_argument("--crfs", default=None, help="crf list for every codec (default: per codec)")
    ap.add_argument("--fps", type=float, default=None, help="frame rate given to the encoders (default: the clip's)")
    ap.add_argument("--no-msssim", action="store_true", help="skip MS-SSIM (slow on a CPU for 720p)")
    ap.add_argument("--device", default="cpu", help="device for MS-SSIM (cpu, cuda)")
    ap.add_argument("--out", default="results/classical", help="folder for the JSON files")
    ap.add_argument("--quick", action="store_true", help="smoke run: 10 frames, 2 crfs, medium, carphone")
    args = ap.parse_args(argv)
    try:
        run(args, run_meta("benchmarks.classical", argv))
    except UserError as e:
        print(f"classical: error: {e}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace, meta: dict | None = None) -> None:
    meta = meta or run_meta("benchmarks.classical")
    clips = args.clips or (["carphone"] if args.quick else list(DEFAULT_CLIPS))
    frames = args.frames or (10 if args.quick else None)
    presets = ["medium"] if args.quick and args.presets == "medium,veryslow" else _csv(args.presets)
    try:
        crfs = [float(c) if "." in c else int(c) for c in _csv(args.crfs)] if args.crfs else None
    except ValueError:
        raise UserError(f"bad --crfs {args.crfs!r}: expected numbers separated by commas") from None
    plan = sweep_plan(_csv(args.codecs), presets, crfs, args.quick, _csv(args.av1_presets))
    default_crop = parse_crop(args.crop) if args.crop else None
    specs = [parse_clip_spec(c, default_crop) for c in clips]
    out_dir = Path(args.out)

    bar = progress(total=len(specs) * sum(len(p[2]) for p in plan), desc="classical", unit="point")
    for label, path, crop in specs:
        clip = read_video(path, frames=frames, crop=crop)
        fps = args.fps or clip.fps
        T, H, W = clip.frames.shape[:3]
        desc = f"{label} ({T} frames, {W}x{H}, {float(fps):.3f} fps)"
        table = []
        for codec, preset, points in plan:
            rows = []
            for crf in points:
                bar.set_postfix_str(f"{label} {SHORT_NAMES[codec]} {preset} crf {crf}")
                rows.append(encode_classical(clip.frames, fps, codec, preset, crf, ms_ssim=not args.no_msssim,
                                             device=args.device))
                bar.update(1)
            write_json(out_dir / f"{label}_{SHORT_NAMES[codec]}_{preset}.json",
                       result_json(label, desc, codec, preset, rows, meta))
            table += rows
        bar.clear()
        columns = ["codec", "preset", "crf", "bpp", "psnr-rgb"] + ([] if args.no_msssim else ["ms-ssim-rgb"])
        print_table([{"codec": r["codec"], "preset": r["preset"], "crf": r["crf"], "bpp": r["bpp"],
                      "psnr-rgb": r["psnr"], "ms-ssim-rgb": r["ms_ssim"], "encoding_fps": r["encode_fps"],
                      "decoding_fps": r["decode_fps"]} for r in table], columns + ["encoding_fps", "decoding_fps"],
                    title=f"{desc} on {machine_line(meta)}")
        print()
    bar.close()
    print(f"results in {out_dir}/")


if __name__ == "__main__":
    sys.exit(main())
