"""Learning-rate schedules: the one warm-up + cosine every fit and training run follows, and the paper's step decay.

Each returns a factor of the base learning rate; `set_lr` applies one to an optimizer (honouring a group's
"lr_scale"). The cosine takes (done, total) rather than a fraction so that per-epoch callers get exactly the
values of the textbook 0.5 * (1 + cos(pi * epoch / epochs)), bit for bit.
"""
from __future__ import annotations

import math

import torch


def warmup_cosine(done: float, total: float, warmup: float = 0.0) -> float:
    """Linear warm-up from 0.1 to 1 over the first `warmup` share of the run, then cosine to 0 at done == total."""
    done = min(max(done, 0.0), total)
    if warmup > 0 and done < warmup * total:
        return 0.1 + 0.9 * (done / total) / warmup
    return 0.5 * (1 + math.cos(math.pi * (done - warmup * total) / max(1e-9, total * (1 - warmup))))


def step_decay(epoch: int, epochs: int, milestones: tuple[float, ...] = (0.5, 0.8)) -> float:
    """x0.1 at each milestone, a fraction of the run (MultiStepLR scaled to any epoch count)."""
    return 0.1 ** sum(epoch >= math.ceil(m * epochs) for m in milestones)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to lr times the group's "lr_scale" (default 1)."""
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
