"""Ray: the session, the resources of a task, the tasks themselves, and the driver loop that runs them.

One Ray task per clip or segment. A task reserves one GPU when the cluster has GPUs (Ray then shows it only that
GPU), else `cluster CPUs // workers` CPUs, and sets torch's thread count to match. It runs the codec's own `read` and
`encode` and returns the file's bytes: the driver alone writes outputs, so the workers need no shared filesystem.

Determinism: a task's file equals, byte for byte, what `ncodec encode` writes for that clip with the same seed on
the same kind of device and the same torch thread count (CPU fits are reproducible with one thread per task).

Fault tolerance: a task whose worker dies is retried by Ray (MAX_RETRIES); a Python error in a task is not retried
(it would fail again) and is reported with the task's name.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import time
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from bitstream.container import Reader
from bitstream.errors import BitstreamError
from codec.base import Job
from codec.errors import UserError
from codec.progress import progress
from codec.scale.manifest import write_input

RAY_HINT = "--workers and --segment run on Ray, which is not installed: pip install ncodec[distributed]"
MAX_RETRIES = 3                    # Ray retries of a task whose worker died (crash, OOM kill, lost node)
MAX_STATUS_LINES = 8               # per-worker status lines under the overall bar
FAULT_ENV = "NCODEC_FAULT_INJECT"  # tests: a folder; a task whose marker crash-<name> is there claims it and dies


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
# what runs on a worker


def worker_name() -> str:
    name = f"{socket.gethostname()}:{os.getpid()}"
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"{name}/gpu{gpus}" if gpus else name


def inject_fault(name: str) -> None:
    """Tests: die like a lost worker on the first attempt at `name` (the marker is claimed by removing it)."""
    folder = os.environ.get(FAULT_ENV)
    if folder:
        try:
            os.remove(os.path.join(folder, f"crash-{name}"))
        except FileNotFoundError:
            return
        os._exit(1)


def status_line(reading: dict) -> str:
    """One fit reading (codec.fit.FitConfig.on_progress) as a status line: epoch, PSNR, speed, time."""
    epoch = f"epoch {reading['epoch']:.1f}" + (f"/{reading['epochs']}" if reading.get("epochs") else "")
    return (f"{reading['desc']}: {epoch}, {reading['psnr']:.2f} dB, {reading['steps_per_s']:.1f} steps/s, "
            f"{reading['elapsed']:.0f} s")


class _Reporter:
    """Job.on_progress of a task: the fit's readings go to the driver's status board, at most once a second."""

    def __init__(self, board, worker: str, label: str):
        self.board, self.worker, self.label, self.last = board, worker, label, -float("inf")

    def send(self, text: str) -> None:
        if self.board is not None:
            self.board.set.remote(self.worker, f"{self.label}: {text}")

    def __call__(self, reading: dict) -> None:
        now = time.monotonic()
        if now - self.last >= 1.0:
            self.last = now
            self.send(status_line(reading))


def encode_task(codec, name: str, payload: dict, options, threads: int, board) -> dict:
    """One clip or segment through the codec's own read and encode; returns the file's bytes and the summary.

    `payload` is manifest.read_input's (a file's or a PNG folder's bytes) or {"frames": uint8 [T, H, W, 3], "fps"}."""
    import torch

    torch.set_num_threads(threads)
    inject_fault(name)
    worker = worker_name()
    if "frames" in payload:
        # a copy: arrays from Ray's object store are read-only
        source = codec.read(np.array(payload["frames"]), options)
        # an array has no frame rate or pixel format: the segment keeps its video's
        source.fps, source.pix_fmt = payload["fps"], payload.get("pix_fmt")
        source.source_size = payload.get("source_size")
    else:
        with tempfile.TemporaryDirectory(prefix="ncodec-task-") as tmp:
            source = codec.read(write_input(payload, tmp), options)
    report = _Reporter(board, worker, name)
    report.send("starting")
    encoded = codec.encode(source, options, Job(checkpoint=None, on_progress=report, show_bar=False))
    report.send("done")
    return {"data": encoded.writer.to_bytes(), "summary": encoded.summary, "worker": worker}


def render_task(codec, data: bytes, start: int, stop: int, options, threads: int) -> np.ndarray:
    """Frames start..stop of one segment, given its section's bytes (a complete file of the codec)."""
    import torch

    torch.set_num_threads(threads)
    decoded = codec.open(Reader.from_bytes(data), options)
    return np.concatenate(list(codec.frames(decoded, start, stop, getattr(options, "batch_size", None))))


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

    def __init__(self, total: int | None, initial: int, unit: str, desc: str, lines: int):
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


def run_tasks(ray, codec, jobs: Iterable[dict], options, workers: int | None, desc: str, unit: str,
              total: int | None, skipped: int, on_done: Callable[[dict, dict], None]) -> tuple[int, list]:
    """Run encode_task for every job (dicts: name, load() -> (payload, its sha256)) at most `workers` at a time,
    calling on_done(job, result) in the driver as each finishes.

    Returns (tasks run at once, [(job, error message)] of the failed ones)."""
    workers, resources, threads, device = plan_resources(ray, workers, options.device)
    task_options = options.replace(device=device)
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
                # loaded (and hashed) only now, and dropped once in the object store: at most `workers` held
                value, job["input_sha"] = job.pop("load")()
                payload = ray.put(value)
                del value
                ref = remote.remote(codec, job["name"], payload, task_options, threads, board)
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
    return workers, failures


def task_row(file: str, summary: dict, worker: str, status: str) -> dict:
    """A task's line in the summary and the manifest."""
    return {"file": file, "bpp": summary.get("bpp"), "psnr": summary.get("psnr"),
            "fit_seconds": summary.get("fit_seconds"), "worker": worker, "status": status,
            "frames": summary.get("frames"), "bytes": summary.get("bytes")}


class TasksFailed(UserError):
    """Some tasks failed; `rows` are those that finished (written, and in the manifest)."""

    def __init__(self, message: str, rows: list[dict]):
        super().__init__(message)
        self.rows = rows


def tasks_failed(kind: str, failures: list, total: int, rows: list[dict]) -> TasksFailed:
    name, msg = failures[0][0]["name"], failures[0][1]
    return TasksFailed(f"{len(failures)} of {total} {kind} failed (first: {name}: {msg}); the others are written, "
                       f"rerun the same command to retry", rows)
