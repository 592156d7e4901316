"""Device choice, CPU threads, the device-specific fit and decode choices (`Accel`), compiling with a fallback,
seeding: one place for every codec."""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import random
import time
import warnings
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

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


@dataclass(frozen=True)
class Accel:
    """Every device-specific choice of a fit and a decode, in one place. `accel_for(device)` picks them from the
    device; a test replaces them (`FitConfig.accel`, `forced_accel`) to run the GPU options on the CPU through the
    same code a CUDA run takes."""

    autocast: torch.dtype | None = None      # the fit's autocast dtype (None: float32)
    channels_last: bool = False              # NHWC tensors for the fit and for decoding convolutional networks
    compile: bool = False                    # torch.compile the fit's model (warm-up step and fallback: compiled())
    fused_adam: bool = False
    tf32: bool = False                       # TF32 matmuls and convolutions while fitting (restored after the fit)
    cudnn_benchmark: bool = False            # cuDNN autotuning while fitting (restored after the fit)
    decode_dtype: torch.dtype | None = None  # autocast dtype of a decode for codecs that allow it (None: float32)


_FORCED: contextvars.ContextVar[dict] = contextvars.ContextVar("ncodec_forced_accel", default={})


def accel_for(device: torch.device) -> Accel:
    """CUDA: bf16 autocast, channels_last, torch.compile (NCODEC_COMPILE=0 turns it off), fused Adam, TF32 and
    cuDNN autotuning for fitting, fp16 autocast for decoding. Elsewhere: float32, eager, nothing changed. Fields
    set by `forced_accel` win on every device."""
    if device.type == "cuda":
        accel = Accel(autocast=torch.bfloat16, channels_last=True,
                      compile=os.environ.get("NCODEC_COMPILE", "1") != "0", fused_adam=True, tf32=True,
                      cudnn_benchmark=True, decode_dtype=torch.float16)
    else:   # bf16 is slow and less accurate on most CPUs, and compile time dominates short CPU fits
        accel = Accel()
    forced = _FORCED.get()
    return replace(accel, **forced) if forced else accel


@contextlib.contextmanager
def forced_accel(**fields):
    """Within the block every fit and decode on any device uses these Accel fields (tests: the GPU path on a CPU)."""
    unknown = set(fields) - {f.name for f in dataclasses.fields(Accel)}
    if unknown:
        raise TypeError(f"unknown Accel fields {sorted(unknown)}")
    token = _FORCED.set({**_FORCED.get(), **fields})
    try:
        yield
    finally:
        _FORCED.reset(token)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast on `device` with `dtype`; None (or float32) runs in float32."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def to_channels_last(module: nn.Module) -> nn.Module:
    """NHWC layout for the module's 4-D tensors (convolution kernels); others stay as they are. Module.to(
    memory_format=...) refuses a module holding any 5-D tensor (PFNR's Fourier weights, which crashed its CUDA fit)."""
    return module._apply(lambda t: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t)


def precision_label(device: torch.device, dtype: torch.dtype | None) -> str:
    """The device class a decode's frames hold for: "cpu (fp32)", "cuda (fp16 autocast)"."""
    if dtype is None or dtype == torch.float32:
        return f"{device.type} (fp32)"
    names = {torch.float16: "fp16", torch.bfloat16: "bf16"}
    return f"{device.type} ({names.get(dtype, str(dtype).removeprefix('torch.'))} autocast)"


def compiled(module: nn.Module, warmup: Callable[[nn.Module], None]) -> tuple[nn.Module, float]:
    """`torch.compile(module)` and its compile time, or `module` itself if compiling fails.

    torch.compile is lazy: it compiles at the first call, so an unsupported op or backend fails there, not here.
    `warmup(net)` runs that first call (the caller's forward and backward on one batch) inside this guard, before
    any budget clock starts. The module's gradients, buffers and RNG state are put back afterwards, so the fit
    that follows is the same as without the warm-up; on failure the warning is one line and the fit runs eagerly."""
    params = list(module.parameters())
    grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    t0 = time.perf_counter()
    try:
        net = torch.compile(module)
        warmup(net)
    except Exception as e:  # noqa: BLE001 -- any compiler failure: eager mode is always correct
        first = (str(e).strip().splitlines() or [""])[0][:200]
        warnings.warn(f"torch.compile failed ({type(e).__name__}: {first}); fitting in eager mode",
                      RuntimeWarning, stacklevel=2)
        net = module
    finally:
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.grad = g
            for b, saved in buffers:
                b.copy_(saved)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    return net, time.perf_counter() - t0


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch (all devices); returns a CPU generator for explicit sampling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g
