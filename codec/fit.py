"""The one fitting loop every INR video codec uses (NeRV, HNeRV, and later NeRV++, NIRVANA, PFNR).

Contract: `model(idx, frames) -> reconstruction`, where idx is a LongTensor [B] of frame indices and frames the
float targets [B, 3, H, W] in [0, 1] (index-only models ignore them; autoencoding models ignore idx); the output
has the targets' shape. A loss name or callable compares the two.

Design for speed on a GPU: every frame stays resident on the device as uint8 (converted per batch), several
frames per step, bf16 autocast and channels_last on CUDA, torch.compile there, a fused Adam, and no host
synchronisation per step (the PSNR is read back every `log_every` steps, for the bar and `on_progress`). On a CPU
the same loop runs eagerly in float32, on cpu_threads() threads, re-chosen every THREAD_CHECK_EVERY seconds as the
machine's load changes. The learning rate follows linear warm-up then cosine to zero over the run
(codec.schedule.warmup_cosine), where the run's progress is the larger of steps/total steps and seconds/--max-time,
so a time budget ends with a fully annealed model.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from codec.checkpoint import Checkpoint
from codec.device import autocast, cpu_threads, maybe_compile, pick_device, use_channels_last
from codec.errors import UserError
from codec.progress import progress
from codec.schedule import set_lr, warmup_cosine

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
THREAD_CHECK_EVERY = 30.0                # seconds of fitting between re-choices of the CPU thread count


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
    checkpoint: str | None = None        # path prefix: the state goes to <prefix>.safetensors (codec.checkpoint)
    checkpoint_every: float = 300.0      # seconds between checkpoints (one is always written at the end)
    resume: bool = False
    fingerprint: dict = field(default_factory=dict)   # what a checkpoint must match to be resumed
    desc: str = "fit"
    show_bar: bool = True                # the local progress bar (on_progress is called either way)
    # called at every PSNR read-back and once at the end with {"desc", "step", "total_steps", "epoch", "epochs",
    # "psnr", "elapsed", "steps_per_s", "done"}; total_steps and epochs are None for a run bounded by time alone
    on_progress: Callable[[dict], None] | None = None


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

    ckpt = (Checkpoint(cfg.checkpoint, cfg.fingerprint, every=cfg.checkpoint_every, what="model, clip or options")
            if cfg.checkpoint else None)
    step, elapsed_before, history = 0, 0.0, []
    if cfg.resume and ckpt is not None:
        saved = ckpt.load()
        if saved is None:
            raise UserError(f"--resume: no checkpoint at {ckpt.path}")
        try:
            model.load_state_dict(saved.model, strict=True)
        except RuntimeError as e:
            raise UserError(f"--resume: checkpoint {ckpt.path} does not fit the model "
                            f"({str(e).splitlines()[0]})") from None
        opt.load_state_dict(saved.optimizer)
        meta = saved.meta
        step, elapsed_before, history = int(meta["step"]), float(meta["elapsed"]), list(meta.get("history", []))
    first_step = step

    def save(elapsed: float) -> None:
        ckpt.save(model, opt, {"step": step, "epoch": step / steps_per_epoch, "elapsed": elapsed, "seed": cfg.seed,
                               "history": history})

    def report(psnr: float, steps_per_s: float, done: bool) -> None:
        if cfg.on_progress is not None:
            cfg.on_progress({"desc": cfg.desc, "step": step, "total_steps": total_steps,
                             "epoch": step / steps_per_epoch, "epochs": cfg.epochs, "psnr": psnr,
                             "elapsed": elapsed(), "steps_per_s": steps_per_s, "done": done})

    by_time = total_steps is None
    bar = progress(total=(int(math.ceil(cfg.max_time)) if by_time else total_steps), desc=cfg.desc,
                   unit="s" if by_time else "step", initial=(int(elapsed_before) if by_time else step),
                   disable=None if cfg.show_bar else True)
    start = time.perf_counter()
    mse_acc = torch.zeros((), device=device)
    mse_n, psnr, stopped_by = 0, float("nan"), "epochs"
    log_t, log_step = start, step
    order, order_epoch = None, -1

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - start

    on_cpu = device.type == "cpu"
    threads_before, threads_checked = torch.get_num_threads(), -math.inf
    try:
        while True:
            e = elapsed()
            if total_steps is not None and step >= total_steps:
                break
            if cfg.max_time is not None and e >= cfg.max_time:
                stopped_by = "max_time"
                break
            if on_cpu and e - threads_checked >= THREAD_CHECK_EVERY:
                # other jobs come and go during a long fit: re-apply the rule to the caller's thread count
                n = cpu_threads(threads_before)
                if n != torch.get_num_threads():
                    torch.set_num_threads(n)
                threads_checked = e
            epoch, i = divmod(step, steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = epoch_order(T, bs, cfg.seed, epoch).to(device), epoch
            idx = order[i]
            p = max(step / total_steps if total_steps else 0.0, e / cfg.max_time if cfg.max_time else 0.0)
            set_lr(opt, cfg.lr * warmup_cosine(p, 1.0, cfg.warmup))

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
                report(psnr, rate, done=False)
                if ckpt is not None and ckpt.due():
                    save(elapsed())
            if by_time:
                if step % cfg.log_every == 0:
                    bar.n = min(int(elapsed()), bar.total)
                    bar.refresh()
            else:
                bar.update(1)
    except KeyboardInterrupt:
        if ckpt is not None:
            save(elapsed())
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
    if ckpt is not None:
        save(seconds)
    report(psnr, (step - first_step) / max(time.perf_counter() - start, 1e-9), done=True)
    model.eval()
    return FitResult(steps=step, epochs=step / steps_per_epoch, seconds=seconds, psnr=psnr,
                     device=str(device), history=history, stopped_by=stopped_by)
