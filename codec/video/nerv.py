"""NeRV (Chen et al., NeurIPS 2021): a frame is the output of a network fed only the frame's index.

Positional encoding of t = i/T (b = 1.25, 40 levels -> 80 values), MLP stem 80 -> 512 -> C*grid_h*grid_w with an
activation after each layer, reshape to a small grid, then NeRV blocks (3x3 conv -> PixelShuffle -> SiLU) with the
first block C wide and each later one max(C_in // 2, lower_width); 1x1 head, output (tanh(x) + 1) / 2.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from bitstream.errors import BitstreamError
from codec.errors import UserError
from codec.video.layers import (OutputHead, PositionalEncoding, UpBlock, UpsamplingConfig, halving_widths, choose_geometry,
                                meta_count)

SIZE_TOLERANCE = 0.05
STEM_SHARE = 0.25       # the MLP stem holds at most this share of the parameters; the blocks get the rest
PAPER_HIDDEN = 512      # the paper's stem hidden width: the cap
MIN_HIDDEN = 16         # the narrowest stem hidden width before the blocks narrow instead
MAX_FC = 4096


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
    """The NeRV config with `size` parameters, the blocks first (docs/INR.md, "Sizes").

    Rule: no channel bottleneck narrower than the blocks after it, and the MLP stem (80 -> hidden -> fc_dim*cells)
    holds at most STEM_SHARE of the parameters. fc_dim is the narrowest width >= lower_width at which the stem,
    its hidden width solved so the whole lands on `size` and capped at the paper's 512, is within that share;
    the blocks, fc_dim then max(C // 2, lower_width) wide, take the rest. The paper's stem (hidden 512, fc_dim
    solved) is what this gives wherever it already holds no more than the share. Below the size that affords
    lower_width-wide blocks every block is fc_dim wide (lower_width = fc_dim), as wide as a stem of MIN_HIDDEN
    leaves room for. Files record the whole config, so files written under the old rule (hidden 512 whatever
    fc_dim: fc_dim 2 behind a 595-wide stem at 160x320, 0.1M) decode as before.
    """
    geo = choose_geometry(height, width, n_blocks=5, min_side=4)
    base = NeRVConfig(height, width, frames, geo.strides, geo.grid_h, geo.grid_w, fc_dim=1, lower_width=lower_width)
    cells = geo.grid_h * geo.grid_w

    @functools.cache
    def at(fc: int) -> tuple[NeRVConfig, int]:
        """The config of width fc whose hidden width lands nearest `size` (each hidden unit adds 2*levels + 1
        weights to the first Linear and fc_dim*cells to the second)."""
        cfg = replace(base, fc_dim=fc, lower_width=min(lower_width, fc), stem_hidden=1)
        c1 = meta_count(lambda: NeRV(cfg))
        hidden = int(round(1 + (size - c1) / (2 * cfg.pe_levels + 1 + fc * cells)))
        return replace(cfg, stem_hidden=max(hidden, 1)), hidden

    def stem(cfg: NeRVConfig) -> int:
        return (2 * cfg.pe_levels + 1) * cfg.stem_hidden + (cfg.stem_hidden + 1) * cfg.fc_dim * cells

    def fits(fc: int) -> bool:        # grows true with fc: a wider fc_dim leaves less to the stem
        cfg, hidden = at(fc)
        return hidden < MIN_HIDDEN or (hidden <= PAPER_HIDDEN and stem(cfg) <= STEM_SHARE * size)

    lo, hi = lower_width, lower_width
    while not fits(hi):                # doubling, then bisection for the narrowest fc_dim that fits
        lo, hi = hi, 2 * hi
        if hi > MAX_FC:
            raise UserError(f"--size {size:.0f} is too large for NeRV at {height}x{width}")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    fc = lo if fits(lo) else hi
    cfg, hidden = at(fc)
    while hidden < MIN_HIDDEN and fc > 1:    # too small for the share: the widest blocks a small stem leaves
        fc -= 1
        cfg, hidden = at(fc)
    count = meta_count(lambda: NeRV(cfg))
    if hidden < 1 or abs(count - size) > SIZE_TOLERANCE * size:
        smallest = meta_count(lambda: NeRV(replace(base, fc_dim=1, lower_width=1, stem_hidden=1)))
        raise UserError(f"--size {size:.0f} cannot be met within 5% for {height}x{width} with NeRV "
                        f"(nearest {count}; the smallest model has {smallest} parameters)")
    return cfg
