"""Many clips, one Ray task each: every input becomes <output>/<stem>.ncb, recorded in <output>/ncodec-manifest.json
so that a rerun of the same command skips what is complete."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from bitstream.atomic import write_atomic
from codec.errors import UserError
from codec.scale.manifest import MANIFEST, Manifest, input_sha, options_hash, read_input, sha256_bytes
from codec.scale.ray_tasks import import_ray, ray_session, run_tasks, task_row, tasks_failed


def output_names(inputs: list[str]) -> list[str]:
    """clip.mp4 -> clip.ncb; repeated stems get -2, -3, ... in input order."""
    seen: dict[str, int] = {}
    names = []
    for path in inputs:
        stem = Path(str(path).rstrip("/\\")).stem or "clip"
        n = seen.get(stem, 0) + 1
        seen[stem] = n
        names.append(f"{stem}.ncb" if n == 1 else f"{stem}-{n}.ncb")
    return names


def encode_many(codec, inputs: list[str], output: str, options, workers: int | None = None,
                ray_address: str | None = None) -> dict:
    """Encode every input to <output>/<stem>.ncb with `codec`, one Ray task per clip, at most `workers` at once.

    Returns {"clips": [per-clip rows], totals...}. Outputs already complete (manifest) are skipped."""
    import_ray()                               # before any work: without Ray, say how to get it
    if codec.many_inputs:
        raise UserError(f"codec {codec.name!r} puts all inputs in one file: run it without --workers")
    if getattr(options, "resume", False):
        raise UserError("--resume is for one clip; with several, a rerun skips the finished ones by itself")
    outdir = Path(output)
    if outdir.exists() and not outdir.is_dir():
        raise UserError(f"-o {output}: with several inputs or --workers the output is a folder, and this is a file")
    for path in inputs:
        if not os.path.exists(path):
            raise UserError(f"no such file or folder: {path}")
    outdir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(outdir / MANIFEST)
    opts_sha = options_hash(codec, options)
    names = output_names(inputs)

    rows: dict[str, dict] = {}
    jobs = []
    for path, name in zip(inputs, names):
        sha = input_sha(path)                   # hashed here; read again only when its task is submitted
        row = manifest.complete(name, outdir / name, sha, opts_sha)
        if row is not None:
            rows[name] = {**row, "status": "skipped (complete)"}
            continue
        jobs.append({"name": name, "load": (lambda p=path: read_input(p))})

    def on_done(job, result):
        data = result["data"]
        write_atomic(outdir / job["name"], data)
        row = task_row(str(outdir / job["name"]), {**result["summary"], "bytes": len(data)}, result["worker"],
                       "encoded")
        manifest.record(job["name"], job["input_sha"], opts_sha, sha256_bytes(data), row)
        rows[job["name"]] = row

    t0 = time.perf_counter()
    failures: list = []
    used = 0
    if jobs:
        with ray_session(ray_address) as ray:
            used, failures = run_tasks(ray, codec, jobs, options, workers, f"{codec.name} clips", "clip",
                                       len(inputs), len(inputs) - len(jobs), on_done)
    seconds = time.perf_counter() - t0
    ordered = [rows[n] for n in names if n in rows]
    if failures:
        raise tasks_failed("clips", failures, len(inputs), ordered)
    encoded = [r for r in ordered if r["status"] == "encoded"]
    frames = sum(int(r.get("frames") or 0) for r in encoded)
    return {"clips": ordered, "codec": codec.name, "output": str(outdir), "encoded": len(encoded),
            "skipped": len(ordered) - len(encoded), "workers": used, "seconds": round(seconds, 2),
            "clips_per_minute": round(60 * len(encoded) / max(seconds, 1e-9), 2),
            "frames_per_second": round(frames / max(seconds, 1e-9), 2),
            "mean_psnr": float(np.mean([r["psnr"] for r in ordered])) if ordered else float("nan"),
            "total_bytes": int(sum(int(r.get("bytes") or 0) for r in ordered)),
            "manifest": str(manifest.path)}
