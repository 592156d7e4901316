"""NeRV (Chen et al., NeurIPS 2021): a frame is the output of a network fed only the frame's index.

Positional encoding of t = i/T (b = 1.25, 40 levels -> 80 values), MLP stem 80 -> 512 -> C*grid_h*grid_w with an
activation after each layer, reshape to a small grid, then NeRV blocks (3x3 conv -> PixelShuffle -> SiLU) with the
first block C wide and each later one max(C_in // 2, lower_width); 1x1 head, output (tanh(x) + 1) / 2.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from bitstream.errors import BitstreamError
from codec.errors import UserError
from codec.video.layers import (OutputHead, PositionalEncoding, UpBlock, UpsamplingConfig, halving_widths, choose_geometry,
                                meta_count, solve_width)

SIZE_TOLERANCE = 0.05


@dataclass
class NeRVConfig(UpsamplingConfig):
    label = "NeRV"
    height: int
    width: int
    frames: int
    strides: tuple[int, ...]
    grid_h: int
    grid_w: int
    fc_dim: int
    pe_base: float = 1.25
    pe_levels: int = 40
    stem_hidden: int = 512
    kernel: int = 3
    reduce: int = 2
    lower_width: int = 12
    head_kernel: int = 1
    act: str = "silu"

    def widths(self) -> list[int]:
        return halving_widths(self.fc_dim, len(self.strides), self.reduce, self.lower_width)

    def frame_activations(self) -> int:
        """Peak activation values of one frame: the stem's output, then per block conv -> shuffle -> activation."""
        return self.peak_activations(2 * self.fc_dim * self.grid_h * self.grid_w,
                                     lambda c_in, c, a_in, a_out: c_in * a_in + 3 * c * a_out)

    def validate(self) -> None:
        ints = [self.height, self.width, self.frames, self.grid_h, self.grid_w, self.fc_dim, self.pe_levels,
                self.stem_hidden, self.kernel, self.reduce, self.lower_width, self.head_kernel]
        ok = (all(isinstance(v, int) and 0 < v <= 1 << 16 for v in ints)
              and 0 < len(self.strides) <= 8 and all(0 < s <= 8 for s in self.strides)
              and self.kernel % 2 == 1 and self.head_kernel % 2 == 1 and self.pe_levels <= 128
              and isinstance(self.pe_base, (int, float)) and 1.0 < self.pe_base <= 4.0
              and self.act in ("gelu", "silu", "relu") and self.fc_dim <= 4096
              and self.grid_h * self.grid_w * self.fc_dim <= 1 << 22
              and self.padding_ok())
        if not ok:
            raise BitstreamError("config section: NeRV config out of range")


class NeRV(nn.Module):
    """model(idx, frames=None) -> frames [B, 3, height, width]; the frames argument is ignored (index-only input)."""

    def __init__(self, cfg: NeRVConfig):
        super().__init__()
        self.cfg = cfg
        self.pe = PositionalEncoding(cfg.pe_base, cfg.pe_levels)
        act = nn.SiLU if cfg.act == "silu" else nn.GELU
        self.stem = nn.Sequential(
            nn.Linear(self.pe.dim, cfg.stem_hidden), act(),
            nn.Linear(cfg.stem_hidden, cfg.fc_dim * cfg.grid_h * cfg.grid_w), act())
        blocks, c_in = [], cfg.fc_dim
        for c_out, s in zip(cfg.widths(), cfg.strides):
            blocks.append(UpBlock(c_in, c_out, cfg.kernel, s, cfg.act))
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.head = OutputHead(c_in, cfg.head_kernel)

    def forward(self, idx: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        t = idx.float() / self.cfg.frames          # t = i / T, as the paper (not T - 1)
        x = self.stem(self.pe(t)).view(-1, self.cfg.fc_dim, self.cfg.grid_h, self.cfg.grid_w)
        for block in self.blocks:
            x = block(x)
        return self.head(x)[:, :, : self.cfg.height, : self.cfg.width]

    def stored_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def nerv_config(height: int, width: int, frames: int, size: float, *, lower_width: int = 12) -> NeRVConfig:
    """The NeRV config whose parameter count is nearest `size`.

    The start grid's shorter side is at least 4 (NeRV starts from 9x16 at 720p; a bigger grid only grows the
    stem's last Linear). fc_dim starts from the quadratic a*x^2 + b*x = size - stem_in, where a sums the blocks'
    9*s^2*(1/2)^(2i-1) terms (first block C->C) and b is the stem's 512*grid cells, then moves to the exact count;
    where one channel is too coarse a step, the stem's hidden width (512 in the paper) is adjusted instead.
    """
    geo = choose_geometry(height, width, n_blocks=5, min_side=4)
    base = NeRVConfig(height, width, frames, geo.strides, geo.grid_h, geo.grid_w, fc_dim=1, lower_width=lower_width)
    cells = geo.grid_h * geo.grid_w
    k2 = base.kernel ** 2
    a = sum(k2 * s * s * (1.0 if i == 0 else 0.5 ** (2 * i - 1)) for i, s in enumerate(geo.strides))
    b = float(base.stem_hidden + 1) * cells
    budget = max(size - (80 * base.stem_hidden + base.stem_hidden), 1.0)
    guess = (-b + math.sqrt(b * b + 4 * a * budget)) / (2 * a)

    def count(fc: int, hidden: int = base.stem_hidden) -> int:
        cfg = replace(base, fc_dim=fc, stem_hidden=hidden)
        return meta_count(lambda: NeRV(cfg))

    fc = solve_width(count, size, guess, "NeRV")
    best = (abs(count(fc) - size), 0, fc, base.stem_hidden)
    if best[0] > 0.01 * size:
        # at small widths one channel moves the count by more than 5% (the stem's last Linear has 512*cells
        # weights per channel): the stem's hidden width, linear in the count, takes up the rest
        for f in (fc - 1, fc, fc + 1):
            if f < 1:
                continue
            c0, per = count(f, 64), count(f, 65) - count(f, 64)
            hidden = int(round(64 + (size - c0) / per))
            if 64 <= hidden <= 1024:
                best = min(best, (abs(count(f, hidden) - size), abs(hidden - base.stem_hidden), f, hidden))
    err, _, fc, hidden = best
    if err > SIZE_TOLERANCE * size:
        raise UserError(f"--size {size:.0f} cannot be met within 5% for {height}x{width} with NeRV "
                        f"(nearest {count(fc, hidden)}; the smallest model has {count(1, 64)} parameters)")
    return replace(base, fc_dim=fc, stem_hidden=hidden)
