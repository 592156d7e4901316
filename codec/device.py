"""Device choice, CPU threads, mixed precision and compile switches, seeding: one place for every codec."""
from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from codec.errors import UserError


def pick_device(name: str | None = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cuda', 'cuda:N', 'cpu' as asked (a missing GPU is a UserError)."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA GPU is available here (use --device cpu or auto)")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) present")
        return dev
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError("--device mps: Apple MPS is not available here")
        return torch.device("mps")
    raise UserError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")


def device_name(device: torch.device) -> str:
    """A human name for results tables: the GPU model, or the CPU and its core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    proc = platform.processor() or platform.machine()
    return f"CPU {proc} x{os.cpu_count()}"


def _load_average() -> float | None:
    """The 1-minute load average, or None where the platform has none (tests replace this reader)."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def cpu_threads(limit: int | None = None) -> int:
    """Threads for CPU work: `limit` (default: torch's current setting), or 1 if the machine is already oversubscribed.

    With the 1-minute load average at or above the core count, OpenMP's threads wait on each other at every
    parallel region while the scheduler runs other jobs, and two threads measured 6x slower per step than one on a
    loaded 2-core machine (docs/INR.md). NCODEC_THREADS=N forces N."""
    forced = os.environ.get("NCODEC_THREADS")
    if forced:
        return max(1, int(forced))
    n = max(1, limit if limit is not None else torch.get_num_threads())
    load = _load_average()
    return 1 if n > 1 and load is not None and load >= (os.cpu_count() or n) else n


@contextlib.contextmanager
def cpu_thread_limit(device: torch.device, limit: int | None = None):
    """Run a block with cpu_threads(limit) threads if `device` is the CPU; torch's setting is restored after.

    `limit` caps the count for work too small to share (e.g. 1 for tiny models, whose per-op work is less than an
    OpenMP hand-off)."""
    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(before if limit is None else min(limit, before)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA (fast on Hopper/Ampere); a no-op on CPU where bf16 is slow and less accurate."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def use_channels_last(device: torch.device) -> bool:
    return device.type == "cuda"


def maybe_compile(module: torch.nn.Module, device: torch.device, enabled: bool | None = None):
    """torch.compile on CUDA where it pays; never on CPU (compile time dominates short CPU fits)."""
    if enabled is None:
        enabled = device.type == "cuda" and os.environ.get("NCODEC_COMPILE", "1") != "0"
    if not enabled:
        return module
    try:
        return torch.compile(module)
    except Exception:  # an unsupported platform falls back to eager, which is always correct
        return module


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch (all devices); returns a CPU generator for explicit sampling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g
