"""The one fitting loop every INR video codec uses (NeRV, HNeRV, and later NeRV++, NIRVANA, PFNR).

Contract: `model(idx, frames) -> reconstruction`, where idx is a LongTensor [B] of frame indices and frames the
float targets [B, 3, H, W] in [0, 1] (index-only models ignore them; autoencoding models ignore idx); the output
has the targets' shape. A loss name or callable compares the two.

Design for speed on a GPU: every frame stays resident on the device as uint8 (converted per batch), several
frames per step, bf16 autocast and channels_last on CUDA, torch.compile there (compiled by a warm-up step before
the budget clock starts, eager if compiling fails), a fused Adam, and no host synchronisation per step (the PSNR is
read back every `log_every` steps, for the bar and `on_progress`). On a CPU the same loop runs eagerly in float32,
on cpu_threads() threads, re-chosen every THREAD_CHECK_EVERY seconds as the machine's load changes. The learning
rate follows linear warm-up then cosine to zero over the run (codec.schedule.warmup_cosine), where the run's progress
is the larger of steps/total steps and seconds/--max-time, so a time budget ends with a fully annealed model. The
device-specific choices are one `codec.device.Accel` (from the device, or `FitConfig.accel`); the global flags a fit
sets (TF32, cuDNN autotuning, threads) are restored when it ends.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from codec.checkpoint import Checkpoint
from codec.device import Accel, accel_for, autocast, compiled, cpu_threads, pick_device, to_channels_last
from codec.errors import UserError
from codec.progress import progress
from codec.schedule import set_lr, warmup_cosine

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
THREAD_CHECK_EVERY = 30.0                # seconds of fitting between re-choices of the CPU thread count
TIME_BAR = "{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]"   # a bar of a time budget


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
    amp: bool = True                     # False: no autocast even where the device's Accel has one
    compile: bool | None = None          # None: as the device's Accel (on for CUDA, off for CPU)
    accel: Accel | None = None           # the device-specific choices; None: codec.device.accel_for(device)
    seed: int = 0
    log_every: int = 25                  # steps between PSNR read-backs (each one is a host sync)
    checkpoint: str | None = None        # path prefix: the state goes to <prefix>.safetensors (codec.checkpoint)
    checkpoint_every: float = 60.0       # seconds between checkpoints (one is always written at the end)
    resume: bool = False
    fingerprint: dict = field(default_factory=dict)   # what a checkpoint must match to be resumed
    desc: str = "fit"
    show_bar: bool = True                # the local progress bar (on_progress is called either way)
    # called at every PSNR read-back and once at the end with {"desc", "step", "total_steps", "epoch", "epochs",
    # "psnr", "elapsed", "steps_per_s", "done"}; total_steps and epochs are None for a run bounded by time alone
    on_progress: Callable[[dict], None] | None = None
    # an epoch whose MSE is over DIVERGED x the best epoch's is undone: the best epoch's weights and optimizer state
    # come back and the learning rate halves for the rest of the fit (at most MAX_RECOVERIES times). Off for losses
    # whose MSE may rise on purpose (NIRVANA's rate term).
    guard: bool = False


@dataclass
class FitResult:
    steps: int
    epochs: float
    seconds: float
    psnr: float                          # training PSNR over the last logged steps (before quantisation)
    device: str
    history: list[dict] = field(default_factory=list)
    stopped_by: str = "epochs"           # "epochs" | "max_time"
    compile_seconds: float = 0.0         # torch.compile's warm-up step, outside `seconds` and the budget
    recoveries: int = 0                  # epochs undone by FitConfig.guard


DIVERGED = 4.0          # 6 dB below the best epoch: a high learning rate's blow-up, not the noise of an epoch
MAX_RECOVERIES = 4


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
    accel = cfg.accel or accel_for(device)
    accel = replace(accel, compile=accel.compile if cfg.compile is None else cfg.compile,
                    autocast=accel.autocast if cfg.amp else None)
    flags = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        if accel.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        if accel.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        return _fit(model, frames, cfg, params, device, accel)
    finally:   # a later decode, fit or RD run in this process starts from the caller's settings
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def _fit(model: nn.Module, frames: np.ndarray | torch.Tensor, cfg: FitConfig, params: list[nn.Parameter] | None,
         device: torch.device, accel: Accel) -> FitResult:
    cuda = device.type == "cuda"
    if isinstance(frames, torch.Tensor) and frames.ndim == 4 and frames.shape[1] == 3 and frames.shape[-1] != 3:
        data = frames.to(device)
    else:
        data = frames_to_device(frames, device)
    T = data.shape[0]
    bs = max(1, min(cfg.batch_size, T))
    steps_per_epoch = -(-T // bs)
    total_steps = cfg.epochs * steps_per_epoch if cfg.epochs is not None else None

    channels_last = accel.channels_last
    model.to(device)
    if channels_last:
        to_channels_last(model)
    model.train()
    params = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), **({"fused": True} if accel.fused_adam else {}))
    loss_fn = make_loss(cfg.loss)

    def forward(net: nn.Module, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        target = batch_to_float(data, idx, channels_last)
        with autocast(device, accel.autocast):
            out = net(idx, target)
        out = out.float()
        return out, target, loss_fn(out, target)

    ckpt = (Checkpoint(cfg.checkpoint, cfg.fingerprint, every=cfg.checkpoint_every, what="model, clip or options")
            if cfg.checkpoint else None)
    step, elapsed_before, history, lr_scale = 0, 0.0, [], 1.0
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
        lr_scale = float(meta.get("lr_scale", 1.0))
    first_step = step

    run, compile_seconds = model, 0.0
    if accel.compile:
        # the first call compiles (forward and backward, in the loop's shapes and autocast): here, off the clock
        run, compile_seconds = compiled(model, lambda net: forward(net, torch.arange(bs, device=device))[2].backward())

    def save(elapsed: float) -> None:
        ckpt.save(model, opt, {"step": step, "epoch": step / steps_per_epoch, "elapsed": elapsed, "seed": cfg.seed,
                               "history": history, "lr_scale": lr_scale})

    def report(psnr: float, steps_per_s: float, done: bool) -> None:
        if cfg.on_progress is not None:
            cfg.on_progress({"desc": cfg.desc, "step": step, "total_steps": total_steps,
                             "epoch": step / steps_per_epoch, "epochs": cfg.epochs, "psnr": psnr,
                             "elapsed": elapsed(), "steps_per_s": steps_per_s, "done": done})

    by_time = total_steps is None
    # a run bounded by time alone fills its bar with seconds of the budget and shows its steps/s beside it (a
    # rate of seconds per second says nothing); a run of epochs counts steps, and tqdm shows step/s itself
    bar = progress(total=(float(cfg.max_time) if by_time else total_steps), desc=cfg.desc, unit="step",
                   initial=(round(elapsed_before, 1) if by_time else step), disable=None if cfg.show_bar else True,
                   bar_format=TIME_BAR if by_time else None)
    start = time.perf_counter()
    mse_acc = torch.zeros((), device=device)
    epoch_acc = torch.zeros((), device=device)    # the guard's: this epoch's summed MSE
    best_mse, best_state, recoveries = math.inf, None, 0
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
            set_lr(opt, cfg.lr * lr_scale * warmup_cosine(p, 1.0, cfg.warmup))

            out, target, loss = forward(run, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                mse = F.mse_loss(out.detach(), target)
                mse_acc += mse
                if cfg.guard:
                    epoch_acc += mse
            mse_n += 1
            step += 1
            if cfg.guard and step % steps_per_epoch == 0:       # one host sync per epoch
                m = epoch_acc.item() / steps_per_epoch
                epoch_acc.zero_()
                if m <= best_mse:
                    best_mse = m
                    best_state = ({k: v.detach().clone() for k, v in model.state_dict().items()},
                                  copy.deepcopy(opt.state_dict()))
                elif (m > DIVERGED * best_mse or not math.isfinite(m)) and best_state is not None \
                        and recoveries < MAX_RECOVERIES:
                    model.load_state_dict(best_state[0])
                    opt.load_state_dict(copy.deepcopy(best_state[1]))
                    lr_scale *= 0.5
                    recoveries += 1

            if step % cfg.log_every == 0 or (total_steps is not None and step == total_steps):
                psnr = psnr_from_mse(mse_acc.item() / mse_n)   # the one host sync per log interval
                mse_acc.zero_()
                mse_n = 0
                now = time.perf_counter()
                rate = (step - log_step) / max(now - log_t, 1e-9)
                log_t, log_step = now, step
                history.append({"step": step, "epoch": round(step / steps_per_epoch, 3),
                                "seconds": round(elapsed(), 3), "psnr": round(psnr, 3)})
                bar.set_postfix_str((f"{rate:.1f} step/s, " if by_time else "")
                                    + f"psnr={psnr:.2f}, epoch={step / steps_per_epoch:.1f}", refresh=False)
                report(psnr, rate, done=False)
                if ckpt is not None and ckpt.due():
                    save(elapsed())
            if by_time:
                if step % cfg.log_every == 0:
                    bar.n = min(round(elapsed(), 1), bar.total)
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
    # the fit is done and annealed: the bar ends full (a time budget is spent; epochs cut short by --max-time end
    # at the steps run)
    if by_time:
        bar.n = bar.total
    elif step < total_steps:
        bar.total = step
    bar.refresh()
    bar.close()
    if ckpt is not None:
        save(seconds)
    report(psnr, (step - first_step) / max(time.perf_counter() - start, 1e-9), done=True)
    model.eval()
    return FitResult(steps=step, epochs=step / steps_per_epoch, seconds=seconds, psnr=psnr,
                     device=str(device), history=history, stopped_by=stopped_by,
                     compile_seconds=compile_seconds, recoveries=recoveries)
