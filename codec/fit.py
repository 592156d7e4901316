"""The one fitting loop every INR video codec uses (NeRV, HNeRV, and later NeRV++, NIRVANA, PFNR).

Contract: `model(idx, frames) -> reconstruction`, where idx is a LongTensor [B] of frame indices and frames the
float targets [B, 3, H, W] in [0, 1] (index-only models ignore them; autoencoding models ignore idx); the output
has the targets' shape. A loss name or callable compares the two.

Design for speed on a GPU: every frame stays resident on the device as uint8 (converted per batch), several
frames per step, bf16 autocast and channels_last on CUDA, torch.compile there, a fused Adam, and no host
synchronisation per step (the bar's PSNR is read back every `log_every` steps). On a CPU the same loop runs eagerly
in float32. The learning rate follows linear warm-up then cosine to zero over the run, where the run's progress is
the larger of steps/total steps and seconds/--max-time, so a time budget ends with a fully annealed model.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bitstream.atomic import write_atomic
from codec.device import autocast, maybe_compile, pick_device, use_channels_last
from codec.errors import UserError
from codec.progress import progress

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class FitConfig:
    epochs: int | None = None            # passes over all frames; None with max_time = run until the budget
    max_time: float | None = None        # seconds of fitting; the schedule anneals to reach zero lr at the budget
    batch_size: int = 2                  # frames per step
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: float = 0.1                  # share of the run spent in linear warm-up from 0.1*lr
    loss: str | LossFn = "mse"           # "mse" | "l1_ssim" (0.7*L1 + 0.3*(1-SSIM), NeRV's "Fusion6") | callable
    device: str | torch.device = "auto"
    amp: bool = True                     # bf16 autocast on CUDA (ignored on CPU)
    compile: bool | None = None          # None: on for CUDA, off for CPU
    seed: int = 0
    log_every: int = 25                  # steps between PSNR read-backs (each one is a host sync)
    checkpoint: str | None = None        # path prefix: <prefix>.safetensors + <prefix>.json
    checkpoint_every: float = 300.0      # seconds between checkpoints (one is always written at the end)
    resume: bool = False
    fingerprint: dict = field(default_factory=dict)   # what a checkpoint must match to be resumed
    desc: str = "fit"


@dataclass
class FitResult:
    steps: int
    epochs: float
    seconds: float
    psnr: float                          # training PSNR over the last logged steps (before quantisation)
    device: str
    history: list[dict] = field(default_factory=list)
    stopped_by: str = "epochs"           # "epochs" | "max_time"


def psnr_from_mse(mse: float) -> float:
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


def make_loss(loss: str | LossFn) -> LossFn:
    if callable(loss):
        return loss
    if loss == "mse":
        return F.mse_loss
    if loss == "l1_ssim":
        from pytorch_msssim import ssim

        def fusion6(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            # SSIM's 11x11 window needs frames of at least 11 pixels a side; tiny frames fall back to L1 + MSE
            if min(x.shape[-2:]) < 11:
                return 0.7 * F.l1_loss(x, y) + 0.3 * F.mse_loss(x, y)
            return 0.7 * F.l1_loss(x, y) + 0.3 * (1 - ssim(x, y, data_range=1.0, size_average=True))
        return fusion6
    raise ValueError(f"unknown loss {loss!r}")


def lr_factor(progress_: float, warmup: float) -> float:
    """Linear warm-up from 0.1 to 1 over the first `warmup` of the run, then cosine to 0."""
    p = min(max(progress_, 0.0), 1.0)
    if warmup > 0 and p < warmup:
        return 0.1 + 0.9 * p / warmup
    return 0.5 * (1 + math.cos(math.pi * (p - warmup) / max(1e-9, 1 - warmup)))


def cpu_threads() -> int:
    """Threads for a CPU fit: all of torch's, unless the machine is already oversubscribed.

    With the 1-minute load average at or above the core count, OpenMP's threads wait on each other at every
    parallel region while the scheduler runs other jobs, and two threads measured 6x slower per step than one on a
    loaded 2-core machine (docs/INR.md). NCODEC_THREADS=N forces N."""
    forced = os.environ.get("NCODEC_THREADS")
    if forced:
        return max(1, int(forced))
    n = torch.get_num_threads()
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        return n
    return 1 if n > 1 and load >= (os.cpu_count() or n) else n


@contextlib.contextmanager
def cpu_thread_limit(device: torch.device):
    """Run a CPU block with cpu_threads() threads, restoring torch's setting after."""
    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads())
    try:
        yield
    finally:
        torch.set_num_threads(before)


def frames_to_device(frames: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> uint8 [T, 3, H, W] resident on `device` (4x smaller than float)."""
    t = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {tuple(t.shape)} {t.dtype}")
    return t.permute(0, 3, 1, 2).contiguous().to(device)


def batch_to_float(frames_u8: torch.Tensor, idx: torch.Tensor, channels_last: bool) -> torch.Tensor:
    x = frames_u8.index_select(0, idx).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def epoch_order(num_frames: int, batch_size: int, seed: int, epoch: int) -> torch.Tensor:
    """A reproducible permutation per (seed, epoch), padded with its own start so every batch is full
    (constant shapes: no recompiles)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(num_frames, generator=g)
    steps = -(-num_frames // batch_size)
    extra = steps * batch_size - num_frames
    if extra:
        perm = torch.cat([perm, perm[:extra]])
    return perm.view(steps, batch_size)


# ---------------------------------------------------------------------------------------------------------------
# checkpoints: tensors in safetensors, everything else in a JSON sidecar (nothing pickled)


def _ckpt_paths(prefix: str) -> tuple[str, str]:
    return prefix + ".safetensors", prefix + ".json"


def save_checkpoint(prefix: str, model: nn.Module, opt: torch.optim.Optimizer, meta: dict) -> None:
    from safetensors.torch import save

    tensors = {f"model.{k}": v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    state = opt.state_dict()
    for i, s in state["state"].items():
        for k, v in s.items():
            tensors[f"optim.{i}.{k}"] = torch.as_tensor(v).detach().to("cpu").contiguous()
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    st_path, js_path = _ckpt_paths(prefix)
    write_atomic(st_path, save(tensors))
    write_atomic(js_path, json.dumps({**meta, "param_groups": groups}, indent=1).encode())


def load_checkpoint(prefix: str, model: nn.Module, opt: torch.optim.Optimizer, fingerprint: dict) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load

    st_path, js_path = _ckpt_paths(prefix)
    if not (os.path.exists(st_path) and os.path.exists(js_path)):
        raise UserError(f"--resume: no checkpoint at {st_path}")
    try:
        with open(js_path, "rb") as f:
            meta = json.loads(f.read())
        with open(st_path, "rb") as f:
            tensors = load(f.read())
    except (ValueError, SafetensorError) as e:
        raise UserError(f"--resume: checkpoint {st_path} is damaged ({e})") from None
    if meta.get("fingerprint") != json.loads(json.dumps(fingerprint)):
        raise UserError(f"--resume: checkpoint {st_path} was made for another model, clip or options "
                        f"(delete it or run without --resume)")
    model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_sd, strict=True)
    except RuntimeError as e:
        raise UserError(f"--resume: checkpoint {st_path} does not fit the model ({str(e).splitlines()[0]})") from None
    ostate: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, i, name = k.split(".", 2)
            ostate.setdefault(int(i), {})[name] = v
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": ostate, "param_groups": groups})
    return meta


def checkpoint_exists(prefix: str) -> bool:
    return all(os.path.exists(p) for p in _ckpt_paths(prefix))


def remove_checkpoint(prefix: str) -> None:
    for p in _ckpt_paths(prefix):
        if os.path.exists(p):
            os.remove(p)


# ---------------------------------------------------------------------------------------------------------------


def fit(model: nn.Module, frames: np.ndarray | torch.Tensor, cfg: FitConfig,
        params: list[nn.Parameter] | None = None) -> FitResult:
    """Fit `model` to `frames` (uint8 [T, H, W, 3], or uint8 [T, 3, H, W] already on the device).

    `params` restricts what is optimised (default: all of the model's parameters). The model is moved to the
    device and left there, trained, in eval mode.
    """
    if cfg.epochs is None and cfg.max_time is None:
        raise UserError("fitting needs --epochs or --max-time")
    device = pick_device(cfg.device) if not isinstance(cfg.device, torch.device) else cfg.device
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if isinstance(frames, torch.Tensor) and frames.ndim == 4 and frames.shape[1] == 3 and frames.shape[-1] != 3:
        data = frames.to(device)
    else:
        data = frames_to_device(frames, device)
    T = data.shape[0]
    bs = max(1, min(cfg.batch_size, T))
    steps_per_epoch = -(-T // bs)
    total_steps = cfg.epochs * steps_per_epoch if cfg.epochs is not None else None

    channels_last = use_channels_last(device)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    params = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), **({"fused": True} if cuda else {}))
    loss_fn = make_loss(cfg.loss)
    run = maybe_compile(model, device, cfg.compile)

    step, elapsed_before, history = 0, 0.0, []
    if cfg.resume and cfg.checkpoint:
        meta = load_checkpoint(cfg.checkpoint, model, opt, cfg.fingerprint)
        step, elapsed_before, history = int(meta["step"]), float(meta["elapsed"]), list(meta.get("history", []))

    def ckpt_meta(elapsed: float) -> dict:
        return {"step": step, "epoch": step / steps_per_epoch, "elapsed": elapsed, "seed": cfg.seed,
                "fingerprint": cfg.fingerprint, "history": history}

    by_time = total_steps is None
    bar = progress(total=(int(math.ceil(cfg.max_time)) if by_time else total_steps), desc=cfg.desc,
                   unit="s" if by_time else "step", initial=(int(elapsed_before) if by_time else step))
    start = time.perf_counter()
    last_ckpt = start
    mse_acc = torch.zeros((), device=device)
    mse_n, psnr, stopped_by = 0, float("nan"), "epochs"
    log_t, log_step = start, step
    order, order_epoch = None, -1

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - start

    threads_before = torch.get_num_threads()
    if not cuda:
        torch.set_num_threads(cpu_threads())
    try:
        while True:
            e = elapsed()
            if total_steps is not None and step >= total_steps:
                break
            if cfg.max_time is not None and e >= cfg.max_time:
                stopped_by = "max_time"
                break
            epoch, i = divmod(step, steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = epoch_order(T, bs, cfg.seed, epoch).to(device), epoch
            idx = order[i]
            p = max(step / total_steps if total_steps else 0.0, e / cfg.max_time if cfg.max_time else 0.0)
            lr = cfg.lr * lr_factor(p, cfg.warmup)
            for g in opt.param_groups:
                g["lr"] = lr

            target = batch_to_float(data, idx, channels_last)
            with autocast(device, cfg.amp):
                out = run(idx, target)
            out = out.float()
            loss = loss_fn(out, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                mse_acc += F.mse_loss(out.detach(), target)
            mse_n += 1
            step += 1

            if step % cfg.log_every == 0 or (total_steps is not None and step == total_steps):
                psnr = psnr_from_mse(mse_acc.item() / mse_n)   # the one host sync per log interval
                mse_acc.zero_()
                mse_n = 0
                now = time.perf_counter()
                rate = (step - log_step) / max(now - log_t, 1e-9)
                log_t, log_step = now, step
                history.append({"step": step, "epoch": round(step / steps_per_epoch, 3),
                                "seconds": round(elapsed(), 3), "psnr": round(psnr, 3)})
                bar.set_postfix(psnr=f"{psnr:.2f}", steps_s=f"{rate:.1f}", epoch=f"{step / steps_per_epoch:.1f}",
                                refresh=False)
                if cfg.checkpoint and now - last_ckpt >= cfg.checkpoint_every:
                    save_checkpoint(cfg.checkpoint, model, opt, ckpt_meta(elapsed()))
                    last_ckpt = now
            if by_time:
                if step % cfg.log_every == 0:
                    bar.n = min(int(elapsed()), bar.total)
                    bar.refresh()
            else:
                bar.update(1)
    except KeyboardInterrupt:
        if cfg.checkpoint:
            save_checkpoint(cfg.checkpoint, model, opt, ckpt_meta(elapsed()))
        bar.close()
        raise
    finally:
        torch.set_num_threads(threads_before)
    if cuda:
        torch.cuda.synchronize(device)
    if mse_n:
        psnr = psnr_from_mse(mse_acc.item() / mse_n)
    seconds = elapsed()
    bar.close()
    if cfg.checkpoint:
        save_checkpoint(cfg.checkpoint, model, opt, ckpt_meta(seconds))
    model.eval()
    return FitResult(steps=step, epochs=step / steps_per_epoch, seconds=seconds, psnr=psnr,
                     device=str(device), history=history, stopped_by=stopped_by)


def device_frames_psnr(reference: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
    """Per-frame RGB PSNR (peak 255) of uint8 [N, ...] tensors, computed on their device in float64."""
    diff = reference.to(torch.float64) - decoded.to(torch.float64)
    mse = diff.pow(2).flatten(1).mean(1)
    return torch.where(mse > 0, 10 * torch.log10(255.0 ** 2 / mse.clamp_min(1e-30)),
                       torch.full_like(mse, float("inf")))
