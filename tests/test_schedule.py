"""codec.schedule: the one warm-up + cosine, bit-identical to the formulas it replaced."""
import math

import pytest
import torch

from codec.schedule import set_lr, step_decay, warmup_cosine


def test_teacher_cosine_is_unchanged_bit_for_bit():
    """train_teacher set 0.5 * lr * (1 + cos(pi * epoch / epochs)) itself; the shared schedule gives the same floats."""
    for lr in (0.1, 0.05, 3e-3, 0.4):
        for epochs in range(1, 301):
            for epoch in range(epochs):
                old = 0.5 * lr * (1 + math.cos(math.pi * epoch / epochs))
                assert lr * warmup_cosine(epoch, epochs) == old, (lr, epoch, epochs)


def test_fit_schedule_is_unchanged_bit_for_bit():
    """codec.fit's former lr_factor(progress, warmup), as it was written."""
    def old(progress, warmup):
        p = min(max(progress, 0.0), 1.0)
        if warmup > 0 and p < warmup:
            return 0.1 + 0.9 * p / warmup
        return 0.5 * (1 + math.cos(math.pi * (p - warmup) / max(1e-9, 1 - warmup)))

    for warmup in (0.0, 0.05, 0.1, 0.3):
        for i in range(-3, 1004):
            p = i / 1000
            assert warmup_cosine(p, 1.0, warmup) == old(p, warmup), (p, warmup)


def test_step_decay_and_set_lr():
    assert [step_decay(e, 10) for e in range(10)] == [1.0] * 5 + [0.1] * 3 + [0.1 ** 2] * 2
    opt = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)]},
                           {"params": [torch.zeros(1, requires_grad=True)], "lr_scale": 10.0}], lr=1.0)
    set_lr(opt, 0.01)
    assert [g["lr"] for g in opt.param_groups] == [0.01, pytest.approx(0.1)]
