"""One long video as segments fitted in parallel, one Ray task each, stored in one file (codec/video/segmented.py),
and that file's segments decoded in parallel.

The video is read segment by segment (codec.video.io.iter_video) as tasks are submitted, so it is never held whole.
Finished segments wait in <output>.parts/ (with their manifest) until the file is assembled, so a rerun after a crash
refits only the missing ones. The finished file is recorded in <output>.manifest.json, so a rerun after success does
nothing.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections import deque
from pathlib import Path
from typing import Iterator

import numpy as np

from bitstream.atomic import write_atomic
from codec.base import parse_frame_range
from codec.errors import UserError
from codec.scale.manifest import MANIFEST, Manifest, input_sha, options_hash, sha256_bytes
from codec.scale.ray_tasks import (MAX_RETRIES, import_ray, plan_resources, ray_session, render_task, run_tasks,
                                   task_row, tasks_failed)
from codec.video import segmented


def manifest_path(output: str | os.PathLike) -> Path:
    """Where a segmented file's manifest lives: beside it."""
    return Path(f"{output}.manifest.json")


def segmentable_codecs() -> list[str]:
    from codec import registry

    return [n for n in registry.names() if registry.get(n).segmentable]


def encode_segmented(codec, input: str, output: str, options, segment: int, workers: int | None = None,
                     ray_address: str | None = None) -> dict:
    """Split one video into segments of `segment` frames, fit them in parallel (one Ray task each) and store them as
    sections of one .ncb file. The options (--epochs, --max-time, --size, --bpp, ...) apply to each segment."""
    import_ray()
    if not codec.segmentable:
        raise UserError(f"--segment: codec {codec.name!r} cannot be split into segments "
                        f"(use one of: {', '.join(segmentable_codecs())})")
    if getattr(options, "resume", False):
        raise UserError("--resume is for one fit; with --segment a rerun keeps the finished segments by itself")
    if isinstance(segment, bool) or not isinstance(segment, int) or segment <= 0:
        raise UserError(f"--segment must be a positive number of frames, got {segment!r}")
    out = Path(output)
    if out.is_dir():
        raise UserError(f"-o {output}: --segment writes one .ncb file, and this is a folder")
    if not os.path.exists(input):
        raise UserError(f"no such file or folder: {input}")

    t0 = time.perf_counter()
    in_sha = input_sha(input)
    opts_sha = options_hash(codec, options, segment=segment)
    final = Manifest(manifest_path(out))
    done = final.complete(out.name, out, in_sha, opts_sha)
    if done is not None:
        return {**done, "status": "skipped (complete)", "seconds": round(time.perf_counter() - t0, 2),
                "manifest": str(final.path)}

    from codec.video.io import frame_count, iter_video

    max_frames, crop = getattr(options, "max_frames", None), getattr(options, "crop", None)
    pieces = iter_video(input, segment, max_frames, crop)
    first = next(pieces)                       # an unreadable input fails here, before Ray starts
    # the pieces are already cut and cropped: each task encodes its piece whole
    task_options = options.replace(**{f: None for f in ("max_frames", "crop") if hasattr(options, f)})
    parts_dir = Path(f"{out}.parts")
    parts_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(parts_dir / MANIFEST)
    names: list[str] = []
    counts: list[int] = []
    rows: dict[str, dict] = {}

    def jobs():
        for k, piece in enumerate(itertools.chain([first], pieces)):
            name = f"{out.stem}.seg{k:05d}.ncb"
            names.append(name)
            counts.append(piece.num_frames)
            seg_sha = sha256_bytes(f"{in_sha}:{k}".encode())     # the segment length, frames, crop: in opts_sha
            row = manifest.complete(name, parts_dir / name, seg_sha, opts_sha)
            if row is not None:
                rows[name] = {**row, "status": "skipped (complete)"}
                continue
            yield {"name": name, "k": k, "start": k * segment, "frames": piece.num_frames,
                   "load": (lambda p=piece, h=seg_sha: ({"frames": p.frames, "fps": p.fps, "pix_fmt": p.pix_fmt,
                                                         "source_size": p.source_size}, h))}

    def on_done(job, result):
        data = result["data"]
        write_atomic(parts_dir / job["name"], data)
        a = job["start"]
        row = task_row(f"segment {job['k']} (frames {a}:{a + job['frames']})",
                       {**result["summary"], "bytes": len(data)}, result["worker"], "encoded")
        manifest.record(job["name"], job["input_sha"], opts_sha, sha256_bytes(data), row)
        rows[job["name"]] = row

    hints = [n for n in (max_frames, frame_count(input)) if n]
    with ray_session(ray_address) as ray:
        used, failures = run_tasks(ray, codec, jobs(), task_options, workers, f"{codec.name} segments", "seg",
                                   -(-min(hints) // segment) if hints else None, 0, on_done)
    ordered = [rows[n] for n in names if n in rows]
    if failures:
        raise tasks_failed("segments", failures, len(names), ordered)

    from codec.video import metrics

    T, H, W = sum(counts), first.height, first.width
    data = segmented.write_segmented(out, codec, W, H, first.fps, segment,
                                     [(parts_dir / n).read_bytes() for n in names])
    # the file's PSNR as the codecs define it (mean of per-frame PSNR), from each segment's own decoded measure
    psnr = sum(n * float(r["psnr"]) for n, r in zip(counts, ordered)) / T
    summary = {"file": str(out), "bytes": len(data), "bpp": metrics.bpp(len(data), T, H, W), "psnr": psnr,
               "frames": T, "height": H, "width": W, "segments": len(counts), "segment_frames": segment,
               "fit_seconds": round(sum(float(r.get("fit_seconds") or 0) for r in ordered), 2), "codec": codec.name}
    final.record(out.name, in_sha, opts_sha, sha256_bytes(data), summary)
    for n in names:
        with contextlib.suppress(FileNotFoundError):
            (parts_dir / n).unlink()
    with contextlib.suppress(OSError):
        manifest.path.unlink()
        parts_dir.rmdir()
    return {**summary, "workers": used, "seconds": round(time.perf_counter() - t0, 2), "manifest": str(final.path),
            "clips": ordered}


def decode_parallel(codec, decoded, output: str | None, options, workers: int | None = None,
                    ray_address: str | None = None) -> dict:
    """Decode a segmented file (or frames A:B of it) to `output` (None: decode and discard), its segments rendered
    as parallel Ray tasks and written in order."""
    from codec.progress import progress
    from codec.video.io import stream_frames

    if not isinstance(decoded, segmented.SegmentedVideo):
        raise UserError("--workers decodes the segments of a --segment file in parallel, and this file has none: "
                        "decode it without --workers")
    a, b = parse_frame_range(getattr(options, "frames", None), decoded.num_frames)
    wanted = decoded.wanted(a, b)
    t0 = time.perf_counter()
    with ray_session(ray_address) as ray:
        n, resources, threads, device = plan_resources(ray, workers, options.device)
        task_options = options.replace(device=device)
        remote = ray.remote(render_task).options(max_retries=MAX_RETRIES, **resources)

        def batches() -> Iterator[np.ndarray]:
            todo, inflight = deque(wanted), deque()
            while todo or inflight:
                while todo and len(inflight) < n:
                    k, s, e = todo.popleft()
                    # a damaged segment fails here, before its task
                    segmented.segment_reader(decoded.reader, k, decoded.counts[k])
                    data = decoded.reader.payload(f"{segmented.PREFIX}{k}")
                    inflight.append(remote.remote(codec, data, s, e, task_options, threads))
                yield ray.get(inflight.popleft())        # in order; the others keep running meanwhile

        with progress(total=b - a, desc=f"{codec.name} decode", unit="frame") as bar:
            def counted() -> Iterator[np.ndarray]:
                for batch in batches():
                    bar.update(batch.shape[0])
                    yield batch
            frames, _ = stream_frames(counted(), output, decoded.width, decoded.height, decoded.fps)
    seconds = time.perf_counter() - t0
    return {"frames": frames, "width": decoded.width, "height": decoded.height, "segments": len(wanted),
            "fps": round(frames / max(seconds, 1e-9), 1), "seconds": round(seconds, 3),
            "output": output or "(none: decoded and discarded)", "device": device, "workers": n}
