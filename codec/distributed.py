"""Scale out on Ray: many clips at once (`encode_many`), or one long video in segments fitted in parallel and stored
in one file (`encode_segmented`, read back by `decode_segmented`).

One Ray task per clip or segment. A task reserves one GPU when the cluster has GPUs (Ray then shows it only that
GPU), else `cluster CPUs // workers` CPUs, and sets torch's thread count to match. It runs the codec's own `encode`
in a private temporary folder and returns the file's bytes: the driver alone writes outputs (atomically) and the
manifest, so the workers need no shared filesystem. Inputs travel through Ray's object store the same way.

Determinism: a task's file equals, byte for byte, what `ncodec encode` writes for that clip with the same seed on
the same kind of device and the same torch thread count (CPU fits are reproducible with one thread per task).

Fault tolerance: a task whose worker dies is retried by Ray (MAX_RETRIES); a Python error in a task is not retried
(it would fail again) and is reported with the clip's name. The manifest (<outdir>/ncodec-manifest.json) records,
per output, the hashes of its input content, of the options and of the file written, so a rerun of the same
command skips every output that is already complete and redoes anything missing, changed or damaged.

Segmented files keep the codec's name and version, and add:
  header    segment_frames (N), segments (K)
  segments  the index: varint K, then each segment's frame count (all N but the last)
  segment/<k>  a complete .ncb file of the codec for frames k*N .. k*N + count_k (its own header and CRCs)
Decoding frames A:B reads only the segments that hold them; a damaged segment fails alone, naming its frames.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import socket
import sys
import tempfile
import time
from collections import deque
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from bitstream.atomic import write_atomic
from bitstream.container import Reader, Writer
from bitstream.errors import BitstreamError
from bitstream.serial import ByteReader, ByteWriter
from codec.errors import UserError
from codec.progress import print_table, progress, write_json

RAY_HINT = "--workers and --segment run on Ray, which is not installed: pip install ncodec[distributed]"
MANIFEST = "ncodec-manifest.json"
MANIFEST_VERSION = 1
MAX_RETRIES = 3                    # Ray retries of a task whose worker died (crash, OOM kill, lost node)
SEGMENT_INDEX = "segments"
SEGMENT_PREFIX = "segment/"
MAX_STATUS_LINES = 8               # per-worker status lines under the overall bar
FAULT_ENV = "NCODEC_FAULT_INJECT"  # tests: a folder; a task whose marker crash-<name> is there claims it and dies

# options that change how a job runs but not the bytes it writes
_RUN_ONLY = {"workers", "ray_address", "json", "output", "resume"}


# ---------------------------------------------------------------------------------------------------------------
# Ray: import, session, resources


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(RAY_HINT) from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Ray for the length of a job: an already initialised Ray is used as it is; otherwise join `address`, or start
    a local instance on this machine's CPUs and GPUs, and disconnect (shut it down) at the end."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    kw = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        if address and address.startswith("ray://"):
            ray.init(address=address, logging_level=logging.WARNING)    # Ray Client takes no local-node options
        elif address:
            ray.init(address=address, **kw)
        else:
            ray.init(**kw)              # Ray counts this machine's CPUs (within its cgroup limits) and GPUs
    except (ConnectionError, ValueError, RuntimeError) as e:
        where = f"--ray-address {address}" if address else "local Ray"
        raise UserError(f"{where}: cannot start or join Ray ({' '.join(str(e).split())[:200]})") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def plan_resources(ray, workers: int | None, device: str | None) -> tuple[int, dict, int, str]:
    """(concurrent tasks, Ray resources per task, torch threads per task, device inside a task)."""
    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), max(1, int(res.get("CPU", 1)))
    if gpus and (device or "auto").lower() != "cpu":
        n = min(workers or gpus, gpus)
        # Ray sets CUDA_VISIBLE_DEVICES for the task: its one GPU is "cuda" there
        return n, {"num_gpus": 1, "num_cpus": 1}, max(1, cpus // n), "cuda"
    if device and device.lower().startswith("cuda"):
        raise UserError(f"--device {device}: the Ray cluster has no GPU")
    n = min(workers or cpus, cpus)
    threads = max(1, cpus // n)
    return n, {"num_cpus": threads}, threads, "cpu"


# ---------------------------------------------------------------------------------------------------------------
# hashes and the manifest


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def options_hash(codec, opts: dict) -> str:
    """What decides an output's bytes: the codec, its version and every option but the ones that only steer the run."""
    keep = {k: v for k, v in sorted(opts.items()) if k not in _RUN_ONLY}
    text = json.dumps({"codec": codec.name, "version": codec.version, "opts": keep}, sort_keys=True, default=str)
    return sha256_bytes(text.encode())


class Manifest:
    """<folder>/ncodec-manifest.json: output name -> hashes of input, options and the file written, and its row."""

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / MANIFEST
        self.entries: dict[str, dict] = {}
        try:
            data = json.loads(self.path.read_text())
            if data.get("version") == MANIFEST_VERSION and isinstance(data.get("outputs"), dict):
                self.entries = data["outputs"]
        except (OSError, ValueError, AttributeError):
            pass                        # no manifest, or a damaged one: every output is redone

    def complete(self, name: str, output: str | os.PathLike, input_sha: str, opts_sha: str) -> dict | None:
        """The recorded row if `output` is there with the recorded bytes, made from this input with these options."""
        e = self.entries.get(name)
        if not e or e.get("input_sha256") != input_sha or e.get("options_sha256") != opts_sha:
            return None
        if sha256_file(output) != e.get("output_sha256"):
            return None
        return e.get("row")

    def record(self, name: str, input_sha: str, opts_sha: str, output_sha: str, row: dict) -> None:
        self.entries[name] = {"input_sha256": input_sha, "options_sha256": opts_sha, "output_sha256": output_sha,
                              "row": row}
        write_json(self.path, {"version": MANIFEST_VERSION, "outputs": self.entries})


# ---------------------------------------------------------------------------------------------------------------
# inputs shipped to the tasks (no shared filesystem needed)


def read_input(path: str) -> tuple[dict, str]:
    """(payload, sha256 of the content): {"file": bytes, "suffix": ".mp4"} or, for a PNG folder, {"png": {name:
    bytes}}."""
    p = Path(path)
    if p.is_dir():
        files = {f.name: f.read_bytes() for f in sorted(p.iterdir()) if f.is_file()}
        h = hashlib.sha256()
        for name, data in files.items():
            h.update(name.encode() + b"\0" + sha256_bytes(data).encode())
        return {"png": files}, h.hexdigest()
    if not p.is_file():
        raise UserError(f"no such file or folder: {path}")
    data = p.read_bytes()
    return {"file": data, "suffix": p.suffix}, sha256_bytes(data)


def _materialise(payload: dict, folder: str) -> str:
    """Write a shipped input back to disk inside the task's folder; returns the path the codec reads."""
    if "frames" in payload:                     # a segment's frames: lossless FFV1 (RGB read back bit for bit)
        from codec.video.io import write_video
        path = os.path.join(folder, "segment.mkv")
        write_video(path, payload["frames"], fps=payload["fps"])
        return path
    if "png" in payload:
        path = os.path.join(folder, "input")
        os.mkdir(path)
        for fname, data in payload["png"].items():
            with open(os.path.join(path, fname), "wb") as f:
                f.write(data)
        return path
    path = os.path.join(folder, "input" + payload["suffix"])  # the suffix: some formats (.h264, .y4m) need it
    with open(path, "wb") as f:
        f.write(payload["file"])
    return path


# ---------------------------------------------------------------------------------------------------------------
# what runs on a worker


def _worker_name() -> str:
    name = f"{socket.gethostname()}:{os.getpid()}"
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"{name}/gpu{gpus}" if gpus else name


def _inject_fault(name: str) -> None:
    """Tests: die like a lost worker on the first attempt at `name` (the marker is claimed by removing it)."""
    folder = os.environ.get(FAULT_ENV)
    if folder:
        try:
            os.remove(os.path.join(folder, f"crash-{name}"))
        except FileNotFoundError:
            return
        os._exit(1)


class _StatusSink:
    """A file for tqdm that forwards the latest bar line to the status board, at most once a second."""

    def __init__(self, board, worker: str, label: str):
        self.board, self.worker, self.label, self.last = board, worker, label, 0.0

    def write(self, text: str) -> None:
        line = text.replace("\n", "\r").split("\r")
        line = next((s.strip() for s in reversed(line) if s.strip()), "")
        now = time.monotonic()
        if line and now - self.last >= 1.0:
            self.last = now
            self.board.set.remote(self.worker, f"{self.label}: {line}")

    def flush(self) -> None:
        pass


@contextlib.contextmanager
def _report_fit_progress(board, worker: str, label: str):
    """Send the fitting loop's bar (codec.fit's, e.g. epochs, PSNR, steps/s) to the driver's status line."""
    if board is None:
        yield
        return
    import codec.fit as fit_module
    from tqdm import tqdm

    board.set.remote(worker, f"{label}: starting")
    original = fit_module.progress

    def reporting(iterable=None, *, total=None, desc="", unit="it", disable=None, **kw):
        return tqdm(iterable, total=total, desc=desc, unit=unit, file=_StatusSink(board, worker, label),
                    ncols=110, mininterval=1.0, **kw)

    fit_module.progress = reporting
    try:
        yield
    finally:
        fit_module.progress = original
        board.set.remote(worker, f"{label}: done")


def encode_task(codec_cls, name: str, payload: Any, opts: dict, threads: int, board) -> dict:
    """One clip or segment: the codec's own encode in a private folder; returns the file's bytes and the summary."""
    import torch

    torch.set_num_threads(threads)
    _inject_fault(name)
    worker = _worker_name()
    with tempfile.TemporaryDirectory(prefix="ncodec-task-") as tmp:
        src = _materialise(payload, tmp)
        out = os.path.join(tmp, "out.ncb")
        with _report_fit_progress(board, worker, name):
            summary = codec_cls().encode([src], out, opts)
        with open(out, "rb") as f:
            data = f.read()
    return {"data": data, "summary": summary, "worker": worker}


class StatusBoard:
    """A Ray actor holding one status line per worker."""

    def __init__(self):
        self.lines: dict[str, str] = {}

    def set(self, worker: str, line: str) -> None:
        self.lines[worker] = line

    def get(self) -> dict[str, str]:
        return dict(self.lines)


# ---------------------------------------------------------------------------------------------------------------
# the driver: submit, watch, collect


class _Display:
    """One overall bar (done / total, throughput, ETA) and one status line per worker."""

    def __init__(self, total: int, initial: int, unit: str, desc: str, lines: int):
        self.bar = progress(total=total, initial=initial, unit=unit, desc=desc)
        self.enabled = not self.bar.disable
        self.lines = [progress(total=0, desc="", bar_format="{desc}", position=i + 1, leave=False)
                      for i in range(min(lines, MAX_STATUS_LINES))] if self.enabled else []
        self.frames, self.t0 = 0, time.perf_counter()

    def done(self, frames: int) -> None:
        self.frames += frames
        fps = self.frames / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix(frames_s=f"{fps:.1f}", refresh=False)
        self.bar.update(1)

    def status(self, board_lines: dict[str, str]) -> None:
        for bar, (worker, line) in zip(self.lines, sorted(board_lines.items())):
            bar.set_description_str(f"  {worker}  {line}"[:160])

    def close(self) -> None:
        for bar in self.lines:
            bar.close()
        self.bar.close()


def _run_tasks(ray, codec_cls, jobs, opts: dict, desc: str, unit: str, total: int | None, skipped: int, on_done
               ) -> list:
    """Run encode_task for every job (dicts: name, load() -> (payload, its sha256), optional opts) at most
    `workers` at a time; calls
    on_done(job, result) in the driver as each finishes. Returns [(job, error message)] for the failed ones."""
    workers, resources, threads, device = plan_resources(ray, opts.get("workers"), opts.get("device"))
    task_opts = {**opts, "device": device, "resume": False}
    remote = ray.remote(encode_task).options(max_retries=MAX_RETRIES, retry_exceptions=False, **resources)
    display = _Display(total, skipped, unit, desc, workers)
    board = ray.remote(num_cpus=0)(StatusBoard).remote() if display.enabled else None
    pending, inflight, failures, exhausted = iter(jobs), {}, [], False
    try:
        while not exhausted or inflight:
            while not exhausted and len(inflight) < workers:
                job = next(pending, None)      # jobs may be a generator: read only as tasks are submitted
                if job is None:
                    exhausted = True
                    break
                value, job["input_sha"] = job["load"]()   # loaded (and hashed) only now: at most `workers` held
                payload = ray.put(value)
                del value
                ref = remote.remote(codec_cls, job["name"], payload, {**task_opts, **job.get("opts", {})},
                                    threads, board)
                inflight[ref] = job
            if not inflight:
                break
            done, _ = ray.wait(list(inflight), num_returns=1, timeout=0.5)
            for ref in done:
                job = inflight.pop(ref)
                try:
                    result = ray.get(ref)
                except (UserError, BitstreamError) as e:            # the codec refused this input: not retried
                    failures.append((job, " ".join(str(getattr(e, "cause", None) or e).split())))
                    continue
                except ray.exceptions.RayError as e:                 # retries exhausted, or Ray itself failed
                    failures.append((job, f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"))
                    continue
                on_done(job, result)
                display.done(int(result["summary"].get("frames", 0)))
            if board is not None:
                with contextlib.suppress(ray.exceptions.RayError):
                    display.status(ray.get(board.get.remote(), timeout=5))
    finally:
        display.close()
        for ref in inflight:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
    return failures


def _row(file: str, summary: dict, worker: str, status: str) -> dict:
    return {"file": file, "bpp": summary.get("bpp"), "psnr": summary.get("psnr"),
            "fit_seconds": summary.get("fit_seconds"), "worker": worker, "status": status,
            "frames": summary.get("frames"), "bytes": summary.get("bytes")}


def _fail(kind: str, failures: list, total: int, rows: list) -> None:
    if rows:
        print_table(rows, ["file", "bpp", "psnr", "fit_seconds", "worker", "status"], file=sys.stderr)
    name, msg = failures[0][0]["name"], failures[0][1]
    raise UserError(f"{len(failures)} of {total} {kind} failed (first: {name}: {msg}); the others are written, "
                    f"rerun the same command to retry")


def _output_names(inputs: list[str]) -> list[str]:
    """clip.mp4 -> clip.ncb; repeated stems get -2, -3, ... in input order."""
    seen: dict[str, int] = {}
    names = []
    for path in inputs:
        stem = Path(path.rstrip("/\\")).stem or "clip"
        n = seen.get(stem, 0) + 1
        seen[stem] = n
        names.append(f"{stem}.ncb" if n == 1 else f"{stem}-{n}.ncb")
    return names


# ---------------------------------------------------------------------------------------------------------------
# many clips


def encode_many(inputs: list[str], output: str, opts: dict) -> dict:
    """Encode every input to <output>/<stem>.ncb with the codec `opts["codec"]`, one Ray task per clip.

    Returns {"clips": [per-clip rows], totals...}. Outputs already complete (manifest) are skipped."""
    from codec import registry

    import_ray()                               # before any work: without Ray, say how to get it
    codec = registry.get(opts["codec"])
    if getattr(codec, "takes_many_inputs", False):
        raise UserError(f"codec {codec.name!r} puts all inputs in one file: run it without --workers")
    if opts.get("resume"):
        raise UserError("--resume is for one clip; with several, a rerun skips the finished ones by itself")
    outdir = Path(output)
    if outdir.exists() and not outdir.is_dir():
        raise UserError(f"-o {output}: with several inputs or --workers the output is a folder, and this is a file")
    for path in inputs:
        if not os.path.exists(path):
            raise UserError(f"no such file or folder: {path}")
    outdir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(outdir)
    opts_sha = options_hash(codec, opts)
    names = _output_names(inputs)

    rows: dict[str, dict] = {}
    jobs = []
    for path, name in zip(inputs, names):
        payload, input_sha = read_input(path)   # hashed here; loaded again only when its task is submitted
        del payload
        row = manifest.complete(name, outdir / name, input_sha, opts_sha)
        if row is not None:
            rows[name] = {**row, "status": "skipped (complete)"}
            continue
        jobs.append({"name": name, "input": path, "load": (lambda p=path: read_input(p))})

    def on_done(job, result):
        data = result["data"]
        write_atomic(outdir / job["name"], data)
        row = _row(str(outdir / job["name"]), {**result["summary"], "bytes": len(data)}, result["worker"], "encoded")
        manifest.record(job["name"], job["input_sha"], opts_sha, sha256_bytes(data), row)
        rows[job["name"]] = row

    t0 = time.perf_counter()
    failures: list = []
    workers = 0
    if jobs:
        with ray_session(opts.get("ray_address")) as ray:
            workers = plan_resources(ray, opts.get("workers"), opts.get("device"))[0]
            failures = _run_tasks(ray, type(codec), jobs, opts, f"{codec.name} clips", "clip", len(inputs),
                                  len(inputs) - len(jobs), on_done)
    seconds = time.perf_counter() - t0
    ordered = [rows[n] for n in names if n in rows]
    if failures:
        _fail("clips", failures, len(inputs), ordered)
    encoded = [r for r in ordered if r["status"] == "encoded"]
    frames = sum(int(r.get("frames") or 0) for r in encoded)
    return {"clips": ordered, "codec": codec.name, "output": str(outdir), "encoded": len(encoded),
            "skipped": len(ordered) - len(encoded), "workers": workers, "seconds": round(seconds, 2),
            "clips_per_minute": round(60 * len(encoded) / max(seconds, 1e-9), 2),
            "frames_per_second": round(frames / max(seconds, 1e-9), 2),
            "mean_psnr": float(np.mean([r["psnr"] for r in ordered])) if ordered else float("nan"),
            "total_bytes": int(sum(int(r.get("bytes") or 0) for r in ordered)),
            "manifest": str(manifest.path)}


# ---------------------------------------------------------------------------------------------------------------
# one video in segments


def write_segmented(path: str | os.PathLike, codec, width: int, height: int, fps: Fraction, segment: int,
                    parts: list[bytes]) -> bytes:
    """The segmented file: index + one complete segment file per section (see the module docstring)."""
    counts = []
    for k, data in enumerate(parts):
        r = Reader.from_bytes(data)
        if r.codec != codec.name or r.header.get("width") != width or r.header.get("height") != height:
            raise ValueError(f"segment {k} is not a {width}x{height} {codec.name} file")
        counts.append(int(r.header["frames"]))
    header = {"kind": "video", "width": width, "height": height, "frames": sum(counts),
              "fps_num": fps.numerator, "fps_den": fps.denominator, "pix_fmt": "rgb24",
              "segment_frames": segment, "segments": len(parts)}
    w = Writer(codec.name, codec.version, header)
    index = ByteWriter()
    index.varint(len(parts))
    for n in counts:
        index.varint(n)
    w.add_section(SEGMENT_INDEX, index.getvalue())
    for k, data in enumerate(parts):
        w.add_section(f"{SEGMENT_PREFIX}{k}", data)
    data = w.to_bytes()
    write_atomic(path, data)
    return data


def iter_segments(path: str, segment: int, frames: int | None, crop) -> Iterator[tuple[np.ndarray, Fraction]]:
    """The video in pieces of `segment` frames (uint8 [n, H, W, 3], fps), read as they are asked for: a long video
    is never held whole. The frames are exactly read_video's (same decoder calls, same crop)."""
    import av

    from codec.video.io import center_crop, parse_crop, read_video

    crop = parse_crop(crop) if isinstance(crop, str) else crop
    p = Path(path)
    if not p.exists():
        raise UserError(f"no such file or folder: {path}")
    if p.is_dir():                                      # PNG folders: read_video reads just the files asked for
        total = _frame_count_hint(path) or 0
        total = min(total, frames) if frames is not None else total
        if total == 0:
            read_video(p, frames=1, crop=crop)          # raises the reader's own error (no PNG files)
        for start in range(0, total, segment):
            clip = read_video(p, frames=min(segment, total - start), crop=crop, start=start)
            yield clip.frames, clip.fps
        return
    first = read_video(p, frames=1, crop=crop)          # checks the file and the crop, gives the fps
    buf: list[np.ndarray] = []
    taken = 0
    try:
        with av.open(str(p), metadata_errors="ignore") as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                rgb = frame.to_ndarray(format="rgb24")
                buf.append(center_crop(rgb, crop) if crop else rgb)
                taken += 1
                if len(buf) == segment:
                    yield np.stack(buf), first.fps
                    buf = []
                if frames is not None and taken == frames:
                    break
    except av.FFmpegError as e:
        raise UserError(f"cannot decode {path} (frame {taken}): {' '.join(str(e).split())}") from None
    if buf:
        yield np.stack(buf), first.fps


def encode_segmented(input: str, output: str, opts: dict) -> dict:
    """Split one video into segments of opts["segment"] frames, fit them in parallel (one Ray task each) and store
    them as sections of one .ncb file. --epochs / --max-time / --size / --bpp apply to each segment.

    The video is read segment by segment as tasks are submitted. Finished segments wait in <output>.parts/ (with
    their manifest) until the file is assembled, so a rerun after a crash refits only the missing ones; a rerun
    after success does nothing."""
    from codec import registry
    from codec.video import metrics

    import_ray()
    codec = registry.get(opts["codec"])
    if codec.kind != "video" or getattr(codec, "takes_many_inputs", False) or not _renders_segments(codec):
        raise UserError(f"--segment: codec {codec.name!r} cannot be split into segments "
                        f"(use one of: {', '.join(segmentable_codecs())})")
    if opts.get("resume"):
        raise UserError("--resume is for one fit; with --segment a rerun keeps the finished segments by itself")
    segment = int(opts["segment"])
    if segment <= 0:
        raise UserError(f"--segment must be positive, got {segment}")
    out = Path(output)
    if out.is_dir():
        raise UserError(f"-o {output}: --segment writes one .ncb file, and this is a folder")
    if not os.path.exists(input):
        raise UserError(f"no such file or folder: {input}")

    t0 = time.perf_counter()
    input_sha = read_input(input)[1] if os.path.isdir(input) else sha256_file(input)
    opts_sha = options_hash(codec, opts)
    final_manifest = Manifest(out.parent if str(out.parent) else ".")
    done_row = final_manifest.complete(out.name, out, input_sha, opts_sha)
    if done_row is not None:
        return {**done_row, "status": "skipped (complete)", "seconds": round(time.perf_counter() - t0, 2)}

    parts_dir = Path(str(out) + ".parts")
    parts_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(parts_dir)
    names: list[str] = []
    counts: list[int] = []
    shape: dict[str, Any] = {}
    rows: dict[str, dict] = {}

    segments = iter_segments(input, segment, opts.get("frames"), opts.get("crop"))
    first = next(segments)                 # an unreadable input fails here, before Ray starts

    def jobs():
        for k, (frames, fps) in enumerate(itertools.chain([first], segments)):
            name = f"{out.stem}.seg{k:05d}.ncb"
            names.append(name)
            counts.append(frames.shape[0])
            shape.update(height=frames.shape[1], width=frames.shape[2], fps=fps)
            seg_sha = sha256_bytes(f"{input_sha}:{k}".encode())      # the options (N, frames, crop) are in opts_sha
            row = manifest.complete(name, parts_dir / name, seg_sha, opts_sha)
            if row is not None:
                rows[name] = {**row, "status": "skipped (complete)"}
                continue
            yield {"name": name, "k": k, "start": k * segment, "frames": frames.shape[0],
                   "opts": {"frames": None, "crop": None},
                   "load": (lambda f=frames, r=fps, h=seg_sha: ({"frames": f, "fps": r}, h))}

    def on_done(job, result):
        data = result["data"]
        write_atomic(parts_dir / job["name"], data)
        a = job["start"]
        row = _row(f"segment {job['k']} (frames {a}:{a + job['frames']})", {**result["summary"], "bytes": len(data)},
                   result["worker"], "encoded")
        manifest.record(job["name"], job["input_sha"], opts_sha, sha256_bytes(data), row)
        rows[job["name"]] = row

    hint = opts.get("frames") or _frame_count_hint(input)
    with ray_session(opts.get("ray_address")) as ray:
        workers = plan_resources(ray, opts.get("workers"), opts.get("device"))[0]
        failures = _run_tasks(ray, type(codec), jobs(), opts, f"{codec.name} segments", "seg",
                              -(-hint // segment) if hint else None, 0, on_done)
    seconds = time.perf_counter() - t0
    ordered = [rows[n] for n in names if n in rows]
    if failures:
        _fail("segments", failures, len(names), ordered)

    T, H, Wd = sum(counts), shape["height"], shape["width"]
    parts = [(parts_dir / n).read_bytes() for n in names]
    data = write_segmented(out, codec, Wd, H, shape["fps"], segment, parts)
    # the file's PSNR as the codecs define it (mean of per-frame PSNR), from each segment's own decoded measure
    psnr = sum(n * float(r["psnr"]) for n, r in zip(counts, ordered)) / T
    summary = {"file": str(out), "bytes": len(data), "bpp": metrics.bpp(len(data), T, H, Wd), "psnr": psnr,
               "frames": T, "height": H, "width": Wd, "segments": len(counts), "segment_frames": segment,
               "fit_seconds": round(sum(float(r.get("fit_seconds") or 0) for r in ordered), 2),
               "workers": workers, "seconds": round(seconds, 2), "codec": codec.name}
    final_manifest.record(out.name, input_sha, opts_sha, sha256_bytes(data),
                          {k: v for k, v in summary.items() if k not in ("workers", "seconds")})
    for n in names:
        with contextlib.suppress(FileNotFoundError):
            (parts_dir / n).unlink()
    with contextlib.suppress(OSError):
        manifest.path.unlink()
        parts_dir.rmdir()
    summary["clips"] = ordered
    return summary


def _frame_count_hint(path: str) -> int | None:
    """The frame count a video file's header claims (for the bar's total), or None."""
    if os.path.isdir(path):
        return sum(1 for f in os.listdir(path) if f.lower().endswith(".png")) or None
    import av
    try:
        with av.open(path, metadata_errors="ignore") as c:
            return int(c.streams.video[0].frames or 0) or None
    except (av.FFmpegError, OSError, IndexError):
        return None


# ---------------------------------------------------------------------------------------------------------------
# decoding a segmented file


def is_segmented(reader: Reader) -> bool:
    return reader.has(SEGMENT_INDEX)


def segment_index(reader: Reader) -> list[int]:
    """Frame counts of the segments, checked against the header and the sections present."""
    r = ByteReader(reader.payload(SEGMENT_INDEX), what="segments section")
    k = r.varint(1 << 20)
    counts = [r.varint(1 << 30) for _ in range(k)]
    r.expect_end()
    n = reader.header.get("segment_frames")
    if (not counts or type(n) is not int or n <= 0 or reader.header.get("segments") != k
            or sum(counts) != reader.header.get("frames") or any(not 0 < c <= n for c in counts)
            or any(c != n for c in counts[:-1])):
        raise BitstreamError("segments section disagrees with the header")
    reader.require_known(lambda s: s == SEGMENT_INDEX or (s.startswith(SEGMENT_PREFIX)
                                                          and s[len(SEGMENT_PREFIX):].isdigit()
                                                          and int(s[len(SEGMENT_PREFIX):]) < k))
    return counts


def segment_reader(reader: Reader, k: int, frames: int) -> Reader:
    """Segment k's own file; a damaged one raises a BitstreamError that names it and its frames."""
    n = reader.header["segment_frames"]
    try:
        sub = Reader.from_bytes(reader.payload(f"{SEGMENT_PREFIX}{k}"))
    except BitstreamError as e:
        raise BitstreamError(f"segment {k} (frames {k * n}:{k * n + frames}) is damaged: {e}; the other segments "
                             f"decode with --frames") from None
    h = sub.header
    if (sub.codec != reader.codec or sub.codec_version != reader.codec_version or h.get("frames") != frames
            or h.get("width") != reader.header["width"] or h.get("height") != reader.header["height"]):
        raise BitstreamError(f"segment {k} does not match the file's codec or frame size")
    return sub


def segmentable_codecs() -> list[str]:
    from codec import registry
    return [c.name for c in registry.classes() if _renders_segments(c)]


def _renders_segments(codec) -> bool:
    from codec.video.inr_codec import INRVideoCodec
    cls = codec if isinstance(codec, type) else type(codec)
    return issubclass(cls, INRVideoCodec) or cls.name == "nirvana"


def render_segment(codec_cls, reader: Reader, device, start: int, stop: int, batch_size: int | None = None
                   ) -> Iterator[np.ndarray]:
    """Frames start..stop of one segment's file as uint8 [B, H, W, 3] numpy batches, as the codec decodes them."""
    from codec.video.inr_codec import INRVideoCodec, LoadedFile, render

    if issubclass(codec_cls, INRVideoCodec):
        for batch in render(LoadedFile(reader, codec_cls.name, device), start, stop, batch_size):
            yield batch.cpu().numpy()
    elif codec_cls.name == "nirvana":
        from codec.video import nirvana
        for _, batch in nirvana.LoadedFile(reader, device).render(start, stop):
            yield batch.cpu().numpy()
    else:
        raise UserError(f"codec {codec_cls.name!r} has no segment decoder")


def render_task(codec_cls, data: bytes, start: int, stop: int, device: str, threads: int,
                batch_size: int | None) -> np.ndarray:
    """Ray task: frames start..stop of one segment, given its section's bytes (a complete segment file)."""
    import torch

    from codec.device import pick_device
    torch.set_num_threads(threads)
    sub = Reader.from_bytes(data)
    return np.concatenate(list(render_segment(codec_cls, sub, pick_device(device), start, stop, batch_size)))


def decode_segmented(codec, reader: Reader, output: str | None, opts: dict) -> dict:
    """Decode a segmented file (or frames A:B of it) to `output`, segment by segment; with opts["workers"] the
    segments are decoded as parallel Ray tasks and written in order."""
    from codec.device import device_name, pick_device
    from codec.video.inr_codec import parse_frame_range
    from codec.video.io import open_writer

    counts = segment_index(reader)
    hdr = reader.header
    T, n = int(hdr["frames"]), int(hdr["segment_frames"])
    a, b = parse_frame_range(opts.get("frames"), T)
    bs = opts.get("batch_size")
    if bs is not None and bs <= 0:
        raise UserError(f"--batch-size must be positive, got {bs}")
    wanted = [(k, max(a, k * n) - k * n, min(b, k * n + c) - k * n) for k, c in enumerate(counts)
              if k * n < b and k * n + c > a]
    fps = Fraction(int(hdr["fps_num"]), int(hdr["fps_den"]))
    device = pick_device(opts.get("device", "auto"))
    t0 = time.perf_counter()

    def serial() -> Iterator[np.ndarray]:
        for k, s, e in wanted:
            yield from render_segment(type(codec), segment_reader(reader, k, counts[k]), device, s, e, bs)

    def parallel(ray) -> Iterator[np.ndarray]:
        workers, resources, threads, dev = plan_resources(ray, opts.get("workers"), opts.get("device"))
        remote = ray.remote(render_task).options(max_retries=MAX_RETRIES, **resources)
        todo, inflight = deque(wanted), deque()
        while todo or inflight:
            while todo and len(inflight) < workers:
                k, s, e = todo.popleft()
                segment_reader(reader, k, counts[k])          # a damaged segment fails here, before any task
                data = reader.payload(f"{SEGMENT_PREFIX}{k}")
                inflight.append(remote.remote(type(codec), data, s, e, dev, threads, bs))
            yield ray.get(inflight.popleft())                 # in order; the others keep running meanwhile

    frames = 0
    with contextlib.ExitStack() as stack:
        if opts.get("workers"):
            ray = stack.enter_context(ray_session(opts.get("ray_address")))
            batches = parallel(ray)
        else:
            batches = serial()
        writer = stack.enter_context(open_writer(output, hdr["width"], hdr["height"], fps)) if output else None
        for batch in batches:
            if writer is not None:
                writer.write(batch)
            frames += batch.shape[0]
    seconds = time.perf_counter() - t0
    return {"frames": frames, "width": hdr["width"], "height": hdr["height"],
            "segments": len(wanted), "fps": round(frames / max(seconds, 1e-9), 1), "seconds": round(seconds, 3),
            "output": output or "(none: decoded and discarded)", "device": device_name(device)}


def segmented_info(reader: Reader) -> dict:
    """Extra `ncodec info` lines for a segmented file."""
    try:
        counts = segment_index(reader)
    except BitstreamError as e:
        return {"segments": f"unreadable ({e})"}
    return {"segments": len(counts), "segment_frames": reader.header["segment_frames"],
            "bpp": reader.file_size * 8 / (reader.header["frames"] * reader.header["height"]
                                           * reader.header["width"])}
