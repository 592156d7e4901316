"""Fuzzing benchmark: mutated .ncb files of every codec, fed to decode and info, must be refused cleanly.

    python -m benchmarks.fuzz                                   # 500 mutants of each base file
    python -m benchmarks.fuzz --n 6250                          # 16 base files x 6250 = 100,000 mutants
    python -m benchmarks.fuzz --n 200 --codecs pc,student --sources fresh
    python -m benchmarks.fuzz --replay results/fuzz/failures/pc/wrong-pixels-differ-17.ncb \
        --model tests/fixtures/pc_model.pcm --expect tests/fixtures/pc.npy      # one file, in this process

Base files: for each codec (nerv, hnerv, nervpp, nirvana, pfnr, hnerv-seg (an hnerv --segment file), pc, student),
a tiny file written now with the Python API (`fresh`: the current writer) and its frozen file in tests/fixtures/
(`fixture`: what an older ncodec wrote, which must still decode). benchmarks/fuzz_mutate.py makes the mutants: raw
damage (bit flips, overwrites, truncation, junk) and well-formed edits with every CRC recomputed (header values,
sections, every field the decoder reads inside a section, JSON config values), including nested segment files.

Every mutant goes to decode (codec.api.open_file + codec.array, as `ncodec decode` does, with --model for pc and
student and --video for pfnr) and to info (codec.api.info, then JSON as `ncodec info --json` prints it), in one
worker process that imported torch once. The worker runs under an address-space limit (RLIMIT_AS: its size after
warm-up plus --headroom-gb) and an alarm per operation (--timeout s). This process supervises: it makes the mutants,
sends them over a pipe, kills a worker that stops answering, and restarts one that died; that mutant is a crash (or
a hang). Per base file it counts:

    refused       BitstreamError or UserError from both decode and info: what `ncodec` turns into exit 2
    decoded       decode succeeded (a silent success; `changed`: its output differs from the base's)
    wrong         lossless (pc) only: decoded without error or warning to pixels that differ from the original
    unverified    lossless (pc) only: decoded to other pixels from a file that carries no pixel digest (an older
                  version), whose decode warned that its output cannot be verified: not silent, so not `wrong`
    unexpected    any other exception, by type (what `ncodec` reports as an internal error, exit 1)
    hangs         an operation over --timeout seconds (the alarm, or the supervisor's kill)
    memory        MemoryError, an allocator's RuntimeError, or a peak RSS over --rss-limit-mb (1 GiB)
    crashes       the worker died (a signal: segfault, abort, the kernel's OOM killer)

It prints the table and the failure classes (one example each, its file saved under OUT/failures/), and writes
OUT/fuzz.json with the machine, commit, date and command line. Targets (issue 28): 0 unexpected, 0 hangs, 0 memory,
0 wrong (`unverified` is not a failure: the decode said so), over at least 100,000 mutants. tests/test_fuzz.py runs
100 mutants per base file through `run`.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import multiprocessing as mp
import multiprocessing.connection
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
CODECS = ["nerv", "hnerv", "nervpp", "nirvana", "pfnr", "hnerv-seg", "pc", "student"]
FIXTURE_FILES = {"nerv": "nerv.ncb", "hnerv": "hnerv.ncb", "nervpp": "nervpp.ncb", "nirvana": "nirvana.ncb",
                 "pfnr": "pfnr.ncb", "hnerv-seg": "hnerv_segmented.ncb", "pc": "pc.ncb", "student": "student.ncb"}
PC_MODEL = FIXTURES / "pc_model.pcm"
STUDENT_MODEL = FIXTURES / "student_model.safetensors"
LOSSLESS = {"pc"}
GIB = 1 << 30
# outcomes, worst first: a mutant counts once, under the worst outcome of its two operations
SEVERITY = ["crash", "hang", "memory", "unexpected", "wrong", "unverified", "decoded", "refused"]
FAILURES = {"crash", "hang", "memory", "unexpected", "wrong"}


@dataclass
class BaseFile:
    """A valid file the mutants start from, and how it is decoded."""

    name: str                   # the table's row: "pc" (fresh) or "pc@fixture"
    label: str                  # one of CODECS
    source: str                 # "fresh" | "fixture"
    path: str
    decode: dict[str, Any] = field(default_factory=dict)    # open_file keywords (model, video)
    lossless: bool = False


# what each mutant may make a decoder use: the issue's 1 GB target as the decoders' own cap (--max-memory), and
# the first frames of a video (see Worker.decode)
MAX_MEMORY = "1G"
DECODE_FRAMES = 64

def base_files(codecs: list[str], sources: str | dict[str, str], out: Path) -> list[BaseFile]:
    """The base files of `codecs`; `sources` is fresh, fixture or both, for all codecs or per codec."""
    out_bases = out / "bases"
    bases = []
    for label in codecs:
        if label not in CODECS:
            raise SystemExit(f"unknown codec {label!r}: choose from {', '.join(CODECS)}")
        which = sources.get(label, "both") if isinstance(sources, dict) else sources
        kinds = ["fresh", "fixture"] if which == "both" else [which]
        for kind in kinds:
            path = str(out_bases / f"{label}.ncb") if kind == "fresh" else str(FIXTURES / FIXTURE_FILES[label])
            decode: dict[str, Any] = {}
            if label == "pc":
                decode["model"] = str(PC_MODEL)
            elif label == "student":
                decode["model"] = str(STUDENT_MODEL)
            elif label == "pfnr":
                decode["video"] = 2          # both fresh and fixture libraries hold two videos: decode through both
            bases.append(BaseFile(label if kind == "fresh" else f"{label}@fixture", label, kind, path, decode,
                                  label in LOSSLESS))
    return bases


# ---------------------------------------------------------------------------------------------------------------
# fresh base files (written in a process of their own: the fits' memory must not stay in the worker)


def _clip(frames: int, height: int = 32, width: int = 48, seed: int = 0):
    """uint8 [frames, height, width, 3]: moving gradients, a moving square and a little texture."""
    import numpy as np

    rng = np.random.default_rng(seed)
    texture = rng.integers(-12, 13, size=(height, width, 3))
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        rgb = np.stack([128 + 80 * np.sin(2 * np.pi * (x + 3 * t) / width + seed),
                        128 + 80 * np.cos(2 * np.pi * (y - 2 * t) / height),
                        110 + 60 * np.sin(2 * np.pi * (x + y + 2 * t) / (width + height))], axis=-1) + texture
        top, left = (4 + 2 * t) % (height - 12), (6 + 3 * t) % (width - 12)
        rgb[top:top + 10, left:left + 10] = (230, 60, 200)
        out[t] = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return out


def make_fresh(label: str, path: str, work: str | None = None) -> None:
    """A tiny file of `label` written by the current code with the Python API (seeded, CPU, fits of 1 epoch);
    `work`: where its temporary files go."""
    from fractions import Fraction

    import numpy as np

    import ncodec

    common = {"device": "cpu", "seed": 0}
    with tempfile.TemporaryDirectory(prefix="fresh-", dir=work) as tmp:
        out = os.path.join(tmp, "base.ncb")
        clip = _clip(6)
        if label == "nerv":
            ncodec.encode(clip, out, codec="nerv", epochs=1, size="20k", prune=0.3, **common)
        elif label == "hnerv":
            ncodec.encode(clip, out, codec="hnerv", epochs=1, size="40k", **common)
        elif label == "nervpp":
            ncodec.encode(clip, out, codec="nervpp", epochs=1, size="20k", **common)
        elif label == "nirvana":
            ncodec.encode(_clip(10), out, codec="nirvana", steps_per_group=1, group=4, size="3k", patch=16, **common)
        elif label == "pfnr":
            from codec.video.io import write_video

            paths = []
            for k in (1, 2):
                paths.append(os.path.join(tmp, f"v{k}.mkv"))
                write_video(paths[-1], _clip(6, seed=k), fps=25 if k == 1 else 24)
            ncodec.encode(paths, out, codec="pfnr", epochs=1, size="20k", density=0.5, **common)
        elif label == "hnerv-seg":
            from codec import registry
            from codec.video.segmented import write_segmented

            parts = []
            for k, frames in enumerate((clip[:4], clip[4:])):
                part = os.path.join(tmp, f"part{k}.ncb")
                ncodec.encode(frames, part, codec="hnerv", epochs=1, size="40k", **common)
                parts.append(Path(part).read_bytes())
            write_segmented(out, registry.get("hnerv"), clip.shape[2], clip.shape[1], Fraction(25), 4, parts)
        elif label == "pc":
            images = np.load(FIXTURES / "pc.npy", allow_pickle=False)
            ncodec.encode(images, out, codec="pc", model=str(PC_MODEL), pc_batch=2, device="cpu")
            if not np.array_equal(ncodec.decode(out, model=str(PC_MODEL), device="cpu"), images):
                raise RuntimeError("the fresh pc base does not decode to its images")
        elif label == "student":
            images = np.load(FIXTURES / "pc.npy", allow_pickle=False)          # 8x8 grey, as the student takes
            noise = np.random.default_rng(0).integers(0, 256, size=(3, 8, 8), dtype=np.uint8)
            ncodec.encode(np.concatenate([images, noise]), out, codec="student", model=str(STUDENT_MODEL),
                          device="cpu")
        else:
            raise ValueError(label)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        shutil.move(out, path)


# ---------------------------------------------------------------------------------------------------------------
# the worker: one process, torch imported once, every mutant through decode and info


class Hang(BaseException):
    """Raised by the alarm; a BaseException so that no `except Exception` in the code under test swallows it."""


_MEMORY_RE = re.compile(r"alloc|out of memory|can't allocate|cannot allocate|not enough memory|bad_alloc|"
                        r"array is too big|maximum (possible|supported) size", re.IGNORECASE)


def _status() -> dict[str, int]:
    """VmHWM (peak RSS), VmRSS and VmSize of this process in bytes (Linux)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS", "VmSize"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        import resource

        out = {"VmHWM": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    return out


def _reset_peak() -> bool:
    """Reset the peak RSS (VmHWM) to the current RSS: Linux's clear_refs 5."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _import_codecs() -> None:
    """torch and every codec's module, imported before the address-space limit is set (a mutant may name any)."""
    import torch  # noqa: F401

    from codec import registry

    for name in registry.names():
        registry.get(name)


def _repo_frame(tb) -> str:
    """file:line of the innermost traceback frame inside this repository (where our code let it through)."""
    where = ""
    for fs in traceback.extract_tb(tb):
        p = Path(fs.filename)
        try:
            rel = p.resolve().relative_to(ROOT)
        except ValueError:
            continue
        if rel.parts and rel.parts[0] not in (".venv",) and not str(rel).startswith("benchmarks/fuzz"):
            where = f"{rel}:{fs.lineno} in {fs.name}"
    return where


class _Runner:
    """Runs decode and info on one file under the alarm and measures each."""

    def __init__(self, timeout: float, device: str):
        import numpy as np

        from bitstream.errors import BitstreamError
        from codec import api
        from codec.errors import UserError
        from codec.progress import to_json

        self.np, self.api, self.to_json = np, api, to_json
        self.clean = (BitstreamError, UserError)
        self.timeout, self.device = timeout, device
        self.can_reset = _reset_peak()
        signal.signal(signal.SIGALRM, self._alarm)

    @staticmethod
    def _alarm(signum, frame):
        raise Hang()

    def decode(self, path: str, kwargs: dict[str, Any]):
        """The decoded array, as the Python API returns it; `self.verified`: False when the decode said that its
        output cannot be verified (a pc file without a pixel digest)."""
        self.verified = True
        codec, decoded, options = self.api.open_file(path, device=self.device, max_memory=MAX_MEMORY, **kwargs)
        self.verified = getattr(decoded, "verified", True)
        if codec.kind == "video" and decoded.num_frames > DECODE_FRAMES:
            # a video's decode time grows with the frames it holds, which a file may honestly claim by the
            # million: its first frames exercise every parsed field, and the rest is the same work again
            options = options.replace(frames=f"0:{DECODE_FRAMES}")
        return codec.array(decoded, options)

    def info(self, path: str) -> str:
        return self.to_json(self.api.info(path, max_memory=MAX_MEMORY))

    def call(self, fn, *args) -> tuple[dict[str, Any], Any]:
        if self.can_reset:
            _reset_peak()
        before = _status()
        t0 = time.perf_counter()
        value, exc = None, None
        try:
            signal.setitimer(signal.ITIMER_REAL, self.timeout)
            try:
                value = fn(*args)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except BaseException as e:          # Hang included: classified below, outside the alarm's window
            exc = e
        seconds = time.perf_counter() - t0
        peak = _status().get("VmHWM", 0)
        start = before.get("VmRSS", 0) if self.can_reset else before.get("VmHWM", 0)
        res: dict[str, Any] = {"seconds": round(seconds, 4), "peak_rss": peak, "growth": max(0, peak - start)}
        if exc is None:
            res["outcome"] = "ok"
        elif isinstance(exc, Hang):
            res.update(outcome="hang", type="Hang", message=f"over {self.timeout:g} s")
        elif isinstance(exc, self.clean):
            res.update(outcome="refused", type=type(exc).__name__, message=str(exc)[:300])
        else:
            memory = isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno == 12) or (
                isinstance(exc, (RuntimeError, ValueError)) and _MEMORY_RE.search(str(exc)) is not None)
            res.update(outcome="memory" if memory else "unexpected", type=type(exc).__name__,
                       message=str(exc)[:300], where=_repo_frame(exc.__traceback__),
                       traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-6:])[-3000:])
        if isinstance(exc, Hang) or res["outcome"] in ("memory", "unexpected"):
            res.setdefault("where", _repo_frame(exc.__traceback__))
        exc = None                          # drop the traceback's frames (and the arrays they hold) now
        return res, value

    def run(self, path: str, kwargs: dict[str, Any], reference) -> dict[str, Any]:
        dec, out = self.call(self.decode, path, kwargs)
        if dec["outcome"] == "ok":
            dec["same"] = bool(reference is not None and _same(self.np, out, reference))
            dec["shape"] = list(getattr(out, "shape", ()))
            dec["verified"] = bool(self.verified)
        del out
        info, _ = self.call(self.info, path)
        return {"decode": dec, "info": info}


def _same(np, a, b) -> bool:
    """Equal arrays; [N, H, W] and [N, H, W, 1] count as the same images."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == b.ndim + 1 and a.shape[-1] == 1:
        a = a[..., 0]
    elif b.ndim == a.ndim + 1 and b.shape[-1] == 1:
        b = b[..., 0]
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))


_LOG = None


def _child_setup(cfg: dict[str, Any]):
    """A child process's output to its log, Ctrl-C left to the supervisor, one torch thread, no progress bars."""
    global _LOG
    log = _LOG = open(cfg["log"], "ab", buffering=0)      # kept open: faulthandler writes a crash to it
    os.dup2(log.fileno(), 1)                # the codecs' prints, warnings and a crash's traceback go to the log
    os.dup2(log.fileno(), 2)
    import faulthandler

    faulthandler.enable(file=log)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["NCODEC_THREADS"] = str(cfg["threads"])
    os.environ.setdefault("NCODEC_COMPILE", "0")
    os.environ.pop("NCODEC_PROGRESS", None)
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(cfg["threads"])
    return log


def _prepare_main(cfg: dict[str, Any]) -> None:
    """Write the fresh base files (a process of its own: the fits' memory does not stay in the worker)."""
    _child_setup(cfg)
    os.makedirs(cfg["scratch"], exist_ok=True)
    for b in cfg["bases"]:
        if b["source"] == "fresh":
            make_fresh(b["label"], b["path"], cfg["scratch"])


def _worker_main(conn, cfg: dict[str, Any]) -> None:
    """The worker's loop. Messages in: None (stop) or (base name, decode kwargs, mutant bytes); out: result dicts."""
    _child_setup(cfg)
    from benchmarks import fuzz_mutate as M
    from codec import api  # noqa: F401   (what every decode imports: in the resting RSS below)

    bases = [BaseFile(**b) for b in cfg["bases"]]
    import_rss = _status().get("VmRSS", 0)
    runner = _Runner(600.0, cfg["device"])    # the first decodes import and load what they need: no alarm yet
    references, traces, files, extra = {}, {}, {}, {}
    for b in bases:                         # the bases decode cleanly (this also warms torch up)
        rss = _status().get("VmRSS", 0)
        _reset_peak()
        with M.tracing() if cfg["trace"] else contextlib.nullcontext() as trace:
            res = runner.run(b.path, b.decode, None)
            references[b.name] = runner.decode(b.path, b.decode)
        if res["decode"]["outcome"] != "ok" or res["info"]["outcome"] != "ok":
            conn.send(("error", f"base {b.name} ({b.path}) does not decode: {res}"))
            return
        # what decoding this codec's first file added to the process (its imports, its models): a fresh
        # `ncodec decode` process pays it too
        extra[b.label] = max(extra.get(b.label, 0), _status().get("VmHWM", 0) - rss)
        if trace is not None:
            traces[b.name] = trace.list()
        files[b.name] = Path(b.path).read_bytes()
    for b in bases:                         # once more: the allocator's and torch's caches settle
        runner.run(b.path, b.decode, references[b.name])
    _import_codecs()
    runner.timeout = cfg["timeout"]
    import resource

    status = _status()
    limit = status.get("VmSize", 0) + int(cfg["headroom"])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    conn.send(("ready", {"traces": traces, "files": files, "status": status, "address_space_limit": limit,
                         "import_rss": import_rss, "codec_rss": extra,
                         "peak_reset": runner.can_reset, "pid": os.getpid()}))
    os.makedirs(cfg["scratch"], exist_ok=True)       # the supervisor removes it, also after a kill
    path = os.path.join(cfg["scratch"], "mutant.ncb")
    while True:
        msg = conn.recv()
        if msg is None:
            return
        name, kwargs, data = msg
        with open(path, "wb") as f:
            f.write(data)
        res = runner.run(path, kwargs, references.get(name))
        res["rss_after"] = _status().get("VmRSS", 0)
        conn.send(("result", res))


# ---------------------------------------------------------------------------------------------------------------
# the supervisor


class Worker:
    """A worker process and its pipe; restarted (without tracing) when it dies, hangs or grows."""

    def __init__(self, cfg: dict[str, Any], startup_timeout: float):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, cfg), daemon=True)
        self.proc.start()
        child.close()
        self.cfg = cfg
        self.job: tuple | None = None
        self.deadline = 0.0
        if not self.conn.poll(startup_timeout):
            self.kill()
            raise RuntimeError(f"the fuzz worker did not start within {startup_timeout:.0f} s; log: {cfg['log']}")
        try:
            kind, payload = self.conn.recv()
        except EOFError:
            self.kill()
            raise RuntimeError(f"the fuzz worker died while starting (exit {self.proc.exitcode}): "
                               f"{_tail(cfg['log'])}") from None
        if kind != "ready":
            self.kill()
            raise RuntimeError(str(payload))
        self.ready = payload

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(10)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
            self.proc.join(10)
        except (OSError, BrokenPipeError):
            pass
        self.kill()


def _tail(path: str, n: int = 1500) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _crash_message(log: str) -> str:
    """What a dead worker left in its log: the fatal error and its traceback (faulthandler's), or the last lines."""
    text = _tail(log, 20000)
    for mark in ("Fatal Python error", "Traceback (most recent call last)"):
        k = text.rfind(mark)
        if k >= 0:
            return text[k:k + 1500]
    return text[-800:]


def _signal_name(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            pass
    return f"exit {code}"


@dataclass
class Row:
    base: BaseFile
    counts: Counter = field(default_factory=Counter)
    unexpected_types: Counter = field(default_factory=Counter)
    changed: int = 0
    peak_rss: int = 0
    seconds: float = 0.0
    sha256: str = ""
    bytes: int = 0
    fields: int = 0                     # fields the decoder reads from its sections (traced)


class Fuzz:
    """Makes the mutants, runs them through the workers, tallies what came back."""

    def __init__(self, bases: list[BaseFile], n: int, seed: int, out: Path, timeout: float = 10.0,
                 headroom_gb: float = 2.0, rss_limit_mb: float = 1024, device: str = "cpu", jobs: int = 1,
                 threads: int = 1, save_failures: int = 3, progress: bool | None = None):
        self.bases, self.n, self.seed, self.out = bases, n, seed, Path(out)
        self.timeout, self.jobs, self.save_failures, self.show_progress = timeout, jobs, save_failures, progress
        self.rss_limit = int(rss_limit_mb * 2**20)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "logs").mkdir(exist_ok=True)
        self.cfg = {"bases": [dataclasses.asdict(b) for b in bases], "timeout": timeout, "device": device,
                    "headroom": int(headroom_gb * GIB), "threads": threads, "trace": True}
        self.rows = {b.name: Row(b) for b in bases}
        self.classes: dict[tuple, dict[str, Any]] = {}
        self.operators: dict[str, Counter] = {}
        self.slowest: list[dict[str, Any]] = []
        self.restarts = 0
        self.limits: dict[str, Any] = {}
        self.unique: set[bytes] = set()
        self.generator_errors: list[str] = []

    # -- workers

    def _start(self, k: int, first: bool) -> Worker:
        cfg = dict(self.cfg, log=str(self.out / "logs" / f"worker{k}.log"), trace=first,
                   scratch=str(self.out / "scratch" / f"worker{k}"))
        return Worker(cfg, startup_timeout=600 if first else 300)

    def _prepare(self) -> None:
        if not any(b.source == "fresh" for b in self.bases):
            return
        log = self.out / "logs" / "prepare.log"
        cfg = dict(self.cfg, log=str(log), scratch=str(self.out / "scratch" / "prepare"))
        proc = mp.get_context("spawn").Process(target=_prepare_main, args=(cfg,), daemon=True)
        proc.start()
        try:
            proc.join(1800)
        finally:
            if proc.is_alive():
                proc.kill()
                proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"writing the fresh base files failed ({_signal_name(proc.exitcode)}): "
                               f"{_tail(str(log))}")

    # -- the run

    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        finally:       # the workers' mutant files and the fits' temporary files, also after a kill
            shutil.rmtree(self.out / "scratch", ignore_errors=True)

    def _run(self) -> dict[str, Any]:
        from benchmarks import fuzz_mutate as M
        from codec import registry
        from codec.progress import progress

        t0 = time.time()
        self._prepare()
        first = self._start(0, True)
        ready = first.ready
        self.limits = {"timeout_s": self.timeout, "address_space_bytes": ready["address_space_limit"],
                       "rss_limit_bytes": self.rss_limit, "worker_rss_bytes": ready["status"].get("VmRSS"),
                       "worker_vm_bytes": ready["status"].get("VmSize"), "peak_rss_reset": ready["peak_reset"],
                       "import_rss_bytes": ready["import_rss"], "codec_rss_bytes": ready["codec_rss"]}
        mbases = {}
        for b in self.bases:
            data = ready["files"][b.name]
            mbases[b.name] = M.Base.make(b.name, data, ready["traces"][b.name], registry.names())
            row = self.rows[b.name]
            row.sha256, row.bytes = hashlib.sha256(data).hexdigest(), len(data)
            row.fields = len(mbases[b.name].editable)
        workers = [first] + [self._start(k, False) for k in range(1, self.jobs)]
        jobs = ((b, i) for i in range(self.n) for b in self.bases)     # interleaved: a stopped run covers all
        total = self.n * len(self.bases)
        done = 0
        interrupted = False
        with progress(total=total, desc="fuzz", unit="mutant", disable=None if self.show_progress is None
                      else not self.show_progress) as bar:
            try:
                pending = True
                while pending or any(w.job for w in workers):
                    for k, w in enumerate(workers):
                        if w.job is None and pending:
                            nxt = next(jobs, None)
                            if nxt is None:
                                pending = False
                                break
                            b, i = nxt
                            rng = random.Random(f"{self.seed}:{b.name}:{i}")
                            try:
                                data, op, desc = M.mutate(mbases[b.name], rng)
                            except Exception as e:      # the generator's bug: reported, the run goes on
                                self.generator_errors.append(f"{b.name} {i}: {e!r}"[:300])
                                bar.update(1)
                                continue
                            self.unique.add(hashlib.sha256(data).digest())
                            w.job = (b, i, op, desc, data)
                            w.deadline = time.monotonic() + 2 * self.timeout + 20
                            w.conn.send((b.name, b.decode, data))
                    busy = [w for w in workers if w.job]
                    if not busy:
                        continue
                    wait = max(0.0, min(w.deadline for w in busy) - time.monotonic())
                    readable = mp.connection.wait([w.conn for w in busy] + [w.proc.sentinel for w in busy],
                                                  timeout=wait)
                    for k, w in enumerate(workers):
                        if not w.job:
                            continue
                        res = None
                        if w.conn in readable or w.proc.sentinel in readable:
                            try:
                                kind, res = w.conn.recv()
                            except (EOFError, OSError):
                                w.proc.join(5)
                                res = {"decode": {"outcome": "crash", "type": _signal_name(w.proc.exitcode),
                                                  "message": _crash_message(w.cfg["log"])},
                                       "info": {"outcome": "skipped"}}
                        elif time.monotonic() > w.deadline:
                            res = {"decode": {"outcome": "hang", "type": "Hang",
                                              "message": "no answer: the worker was killed"},
                                   "info": {"outcome": "skipped"}}
                        if res is None:
                            continue
                        self._record(*w.job, res)
                        w.job = None
                        done += 1
                        bar.update(1)
                        fails = sum(r.counts[c] for r in self.rows.values() for c in FAILURES)
                        bar.set_postfix(failures=fails, refresh=False)
                        # a fresh worker after a crash or a hang (an alarm may have struck inside an import or a
                        # library's bookkeeping), and when memory stayed behind
                        hung = any(res[op]["outcome"] in ("crash", "hang") for op in ("decode", "info"))
                        leaked = res.get("rss_after", 0) > (self.limits["worker_rss_bytes"] or 0) + 512 * 2**20
                        if hung or leaked or not w.proc.is_alive():
                            w.kill()
                            self.restarts += 1
                            workers[k] = self._start(k, False)
            except KeyboardInterrupt:
                interrupted = True
            finally:
                for w in workers:
                    w.stop()
        return self.result(time.time() - t0, done, interrupted)

    def _record(self, b: BaseFile, i: int, op: str, desc: str, data: bytes, res: dict[str, Any]) -> None:
        row = self.rows[b.name]
        dec, info = res["decode"], res["info"]
        outcomes, types = [], set()
        for what, r in (("decode", dec), ("info", info)):
            o = r["outcome"]
            if o == "ok":
                o = "decoded" if what == "decode" else "refused"      # info's success is not a silent success
            if what == "decode" and r["outcome"] == "ok" and b.lossless and not r.get("same"):
                if r.get("verified", True):
                    o = "wrong"
                    r.update(type="pixels differ", message=f"decoded {r.get('shape')} without an error, "
                                                           f"different from the original")
                else:           # the decode warned that nothing could check these pixels
                    o = "unverified"
            if o == "skipped":
                continue
            # a fresh `ncodec decode` process: torch and ncodec imported, this codec's first decode, this growth
            est = self.limits["import_rss_bytes"] + self.limits["codec_rss_bytes"].get(b.label, 0) + r.get("growth", 0)
            r["process_rss"] = est
            if est > self.rss_limit and o not in ("crash", "hang", "memory"):
                r.update(type=f"RSS over {self.rss_limit / 2**20:.0f} MB", outcome="memory",
                         message=f"{o}, with a peak RSS of about {est / 2**20:.0f} MB")
                o = "memory"
            outcomes.append(o)
            row.peak_rss = max(row.peak_rss, est)
            row.seconds += r.get("seconds", 0.0)
            if o in FAILURES:
                self._failure(b, i, op, desc, data, what, o, r)
            if o == "unexpected":
                types.add(r["type"])
        row.unexpected_types.update(types)          # once per mutant
        worst = min(outcomes, key=SEVERITY.index)
        row.counts[worst] += 1
        if worst == "decoded" and not dec.get("same"):
            row.changed += 1
        self.operators.setdefault(op, Counter())[worst] += 1
        total = dec.get("seconds", 0) + info.get("seconds", 0)
        if len(self.slowest) < 10 or total > self.slowest[-1]["seconds"]:
            self.slowest.append({"base": b.name, "index": i, "operator": desc[:200], "seconds": round(total, 3),
                                 "outcome": worst})
            self.slowest = sorted(self.slowest, key=lambda s: -s["seconds"])[:10]

    def _failure(self, b, i, op, desc, data, what, outcome, r) -> None:
        """One failure class per (codec, outcome, type, where); a mutant failing decode and info counts once."""
        key = (b.label, outcome, r.get("type", ""), r.get("where", ""))
        cls = self.classes.get(key)
        if cls is None:
            cls = self.classes[key] = {"codec": b.label, "outcome": outcome, "type": r.get("type", ""),
                                       "where": r.get("where", ""), "count": 0, "operations": set(),
                                       "bases": Counter(), "operators": Counter(), "examples": [], "_last": None}
        cls["operations"].add(what)
        if cls["_last"] == (b.name, i):
            return
        cls["_last"] = (b.name, i)
        cls["count"] += 1
        cls["bases"][b.name] += 1
        cls["operators"][op] += 1
        if sum(ex["base"] == b.name for ex in cls["examples"]) < self.save_failures:      # per base file
            folder = self.out / "failures" / b.name
            folder.mkdir(parents=True, exist_ok=True)
            slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{outcome}-{r.get('type', '')}")[:50].strip("-")
            path = folder / f"{slug}-{i}.ncb"
            path.write_bytes(data)
            cls["examples"].append({"base": b.name, "index": i, "operation": what, "mutation": desc,
                                    "file": str(path), "message": r.get("message", ""),
                                    "traceback": r.get("traceback", ""), "seconds": r.get("seconds"),
                                    "process_rss_mb": round(r.get("process_rss", 0) / 2**20),
                                    "replay": replay_command(path, b)})

    # -- the report

    def table(self) -> list[dict[str, Any]]:
        rows = []
        for r in self.rows.values():
            c = r.counts
            n = sum(c.values())
            row = {"base": r.base.name, "mutants": n, "refused": c["refused"], "decoded": c["decoded"],
                   "changed": r.changed}
            if r.base.lossless:
                row["wrong"] = c["wrong"]
                row["unverified"] = c["unverified"]
            row.update({"unexpected": c["unexpected"], "hangs": c["hang"], "memory": c["memory"],
                        "crashes": c["crash"], "peak_mb": round(r.peak_rss / 2**20),
                        "ms_each": round(1000 * r.seconds / max(n, 1), 1),
                        "unexpected_types": ", ".join(f"{t} {k}" for t, k in r.unexpected_types.most_common())})
            rows.append(row)
        tot = {"base": "all", **{k: sum(x.get(k, 0) for x in rows) for k in
                                 ("mutants", "refused", "decoded", "changed", "wrong", "unverified", "unexpected",
                                  "hangs", "memory", "crashes")}}
        tot["peak_mb"] = max((x["peak_mb"] for x in rows), default=0)
        tot["ms_each"] = round(sum(x["ms_each"] * x["mutants"] for x in rows) / max(tot["mutants"], 1), 1)
        allu = Counter()
        for r in self.rows.values():
            allu.update(r.unexpected_types)
        tot["unexpected_types"] = ", ".join(f"{t} {k}" for t, k in allu.most_common())
        return rows + [tot]

    def failure_classes(self) -> list[dict[str, Any]]:
        out = []
        for cls in sorted(self.classes.values(), key=lambda c: (SEVERITY.index(c["outcome"]), -c["count"])):
            out.append({**{k: v for k, v in cls.items() if k not in ("bases", "operators", "operations", "_last")},
                        "operations": sorted(cls["operations"]),
                        "bases": [{"base": k, "count": v} for k, v in cls["bases"].most_common()],
                        "operators": [{"operator": k, "count": v} for k, v in cls["operators"].most_common()]})
        return out

    def result(self, seconds: float, done: int, interrupted: bool) -> dict[str, Any]:
        rows = self.table()
        return {
            "benchmark": "fuzz", "seed": self.seed, "n_per_base": self.n, "mutants": done,
            "unique_mutants": len(self.unique), "interrupted": interrupted, "seconds": round(seconds, 1),
            "worker_restarts": self.restarts, "generator_errors": self.generator_errors, "limits": self.limits,
            "bases": [{"base": r.base.name, "codec": r.base.label, "source": r.base.source, "file": r.base.path,
                       "bytes": r.bytes, "sha256": r.sha256, "traced_fields": r.fields, "decode": r.base.decode}
                      for r in self.rows.values()],
            "rows": rows,
            "failures": self.failure_classes(),
            "operators": [{"operator": op, "mutants": sum(c.values()), **{k: c[k] for k in SEVERITY}}
                          for op, c in sorted(self.operators.items())],
            "slowest": self.slowest,
        }


def _short(path: Path | str) -> str:
    """A path relative to the repository when it is inside it (the replay command runs from there)."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(path)


def replay_command(path: Path | str, b: BaseFile) -> str:
    extra = "".join(f" --{k} {_short(v) if k == 'model' else v}" for k, v in b.decode.items())
    if b.lossless:          # both pc bases hold the images of tests/fixtures/pc.npy
        extra += f" --expect {_short(FIXTURES / 'pc.npy')}"
    return f"python -m benchmarks.fuzz --replay {_short(path)}{extra}"


COLUMNS = ["base", "mutants", "refused", "decoded", "changed", "wrong", "unverified", "unexpected", "hangs", "memory",
           "crashes", "peak_mb", "ms_each", "unexpected_types"]


def run(codecs: list[str] | None = None, n: int = 500, seed: int = 0, out: str | Path = "results/fuzz",
        sources: str | dict[str, str] = "both", **kwargs: Any) -> dict[str, Any]:
    """The whole benchmark as a function (tests/test_fuzz.py calls it): returns the JSON it would write."""
    out = Path(out)
    bases = base_files(codecs or CODECS, sources, out)
    return Fuzz(bases, n, seed, out, **kwargs).run()


def report(result: dict[str, Any], file=None, examples: int = 40) -> None:
    """The table, then each failure class with one example."""
    from codec.progress import print_table

    file = file or sys.stdout
    lim = result["limits"]
    title = (f"fuzz: {result['mutants']} mutants{' (interrupted)' if result['interrupted'] else ''} "
             f"({result['unique_mutants']} distinct), seed {result['seed']}, "
             f"{result['seconds']:.0f} s; alarm {lim.get('timeout_s')} s, RSS limit "
             f"{(lim.get('rss_limit_bytes') or 0) / 2**20:.0f} MB, address space "
             f"{(lim.get('address_space_bytes') or 0) / GIB:.1f} GiB; {result.get('meta', {}).get('commit', '')}")
    print_table(result["rows"], COLUMNS, title=title, file=file)
    fails = result["failures"]
    if not fails:
        print("\nno failures", file=file)
        return
    print(f"\n{len(fails)} failure classes (codec, outcome, type, where, in which operations: mutants; one "
          f"example):", file=file)
    for cls in fails[:examples]:
        bases = ", ".join(f"{b['base']} {b['count']}" for b in cls["bases"])
        print(f"- {cls['codec']} {cls['outcome']} {cls['type']} at {cls['where'] or '?'} in "
              f"{'+'.join(cls['operations'])}: {cls['count']} ({bases})", file=file)
        seen = set()
        for ex in cls["examples"]:          # the first example of each base file
            if ex["base"] in seen:
                continue
            seen.add(ex["base"])
            print(f"    {ex['base']}: {ex['mutation'][:220]}", file=file)
            print(f"      -> {ex['message'][:220]!r}", file=file)
            print(f"      {ex['replay']}", file=file)
    if len(fails) > examples:
        print(f"... and {len(fails) - examples} more classes in the JSON", file=file)


def replay(path: str, model: str | None, video: int | None, expect: str | None, timeout: float, device: str,
           headroom_gb: float) -> int:
    """Decode and info one file as the worker does (the same alarm and address-space limit), in this process, and
    print what happened; with `expect` (a .npy), whether the decoded array equals it."""
    import json
    import resource

    import numpy as np

    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("NCODEC_THREADS", "1")
    runner = _Runner(timeout, device)
    _import_codecs()
    limit = _status().get("VmSize", 0) + int(headroom_gb * GIB)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    kwargs = {k: v for k, v in (("model", model), ("video", video)) if v is not None}
    reference = np.load(expect, allow_pickle=False) if expect else None
    res = runner.run(path, kwargs, reference)
    if reference is None:
        res["decode"].pop("same", None)
    for what in ("decode", "info"):
        r = res[what]
        tb = r.pop("traceback", "")
        print(f"{what}: {json.dumps(r)}")
        if tb:
            print(tb)
    ok = all(res[w]["outcome"] in ("ok", "refused") for w in ("decode", "info"))
    return 0 if ok and res["decode"].get("same", True) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=500, help="mutants per base file (default 500)")
    ap.add_argument("--codecs", default=",".join(CODECS), help=f"comma list (default all: {','.join(CODECS)})")
    ap.add_argument("--sources", default="both", choices=["both", "fresh", "fixture"],
                    help="base files written now (fresh), the frozen tests/fixtures files, or both (default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/fuzz", help="folder for fuzz.json, bases/, failures/, logs/")
    ap.add_argument("--timeout", type=float, default=10.0, help="alarm per decode and per info, seconds (10)")
    ap.add_argument("--headroom-gb", type=float, default=2.0,
                    help="address space the worker may add after warm-up (RLIMIT_AS), GiB (2)")
    ap.add_argument("--rss-limit-mb", type=float, default=1024, help="peak RSS counted as a memory blow-up (1024)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    ap.add_argument("--replay", metavar="FILE", help="decode and info one file in this process and print the outcome")
    ap.add_argument("--model", help="with --replay: the pc or student model")
    ap.add_argument("--video", type=int, help="with --replay: the pfnr video")
    ap.add_argument("--expect", help="with --replay: the .npy the file must decode to (lossless)")
    args = ap.parse_args(argv)
    if args.replay:
        return replay(args.replay, args.model, args.video, args.expect, args.timeout, args.device,
                      args.headroom_gb)
    from benchmarks.meta import run_meta
    from codec.progress import write_json

    meta = run_meta("benchmarks.fuzz", argv)
    result = run([c for c in args.codecs.split(",") if c], args.n, args.seed, args.out, args.sources,
                 timeout=args.timeout, headroom_gb=args.headroom_gb, rss_limit_mb=args.rss_limit_mb,
                 device=args.device, jobs=args.jobs, threads=args.threads)
    result = {"meta": meta, **result}
    path = Path(args.out) / "fuzz.json"
    write_json(path, result)
    report(result)
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
