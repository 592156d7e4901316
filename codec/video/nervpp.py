"""NeRV++ (Ghorbel & Hamidouche, ICIP 2024): the NeRV decoder with better blocks, on the shared NeRV pipeline.

Same input as NeRV (positional encoding of t = i/T, 80 values). Differences, per shared/research/video_inr.md §4:
- stem: a gated MLP, Linear(80 -> 2*hidden) split into (x, z), then Linear(hidden -> C*grid) of x * GELU_tanh(z);
- each stage (input C_in, width C):
  1. proj: 1x1 conv C_in -> C, kept as r for the skip;
  2. pre-upsampling gated CNN block: Linear(C -> 2H), H = floor(8C/3), split into gate g (H), identity part (H - C)
     and conv part (C); the conv part goes through a depthwise 5x5; out = Linear(H -> C)(GELU(g) * [id, conv]) + in;
  3. upsampling block (UB): 3x3 conv C -> C*s^2 -> PixelShuffle(s) -> SiLU (NeRV's block);
  4. post-upsampling residual FFN: depthwise 3x3 -> 1x1 (C -> C) -> GELU -> 1x1 (C -> C), + input;
  5. skip: + bilinear x s upsampling of r.
- widths: stage 0 is fc_dim wide, later stages max(C_in // 2, lower_width) with lower_width 80 (the paper's);
- head: 1x1 conv to RGB, (tanh + 1) / 2; Xavier-uniform conv init, truncated-normal(0.02) Linear init.
The FFN's hidden width (C, no expansion) is our reading: with it the paper configs (fc_dim 8/26/58/112 at 9x16,
lower width 80) count 1.90M / 3.38M / 6.38M / 12.55M parameters, the research's XS/S/M/L.

Sizes by parameter count (--size, XS/S/M/L aliases at those counts): fc_dim is solved at lower width 80 and stem
hidden 512; a budget too small for that family (the 80-wide later stages alone cost about 1.2M at 720p) uses a
narrow family where every stage is w wide (fc_dim = lower_width = w) and the stem hidden width is about 8w
(16..1024, set to land on the size, since one channel moves a narrow model by ~15%).
Compression, file format and decoding are NeRV's (codec/video/inr_codec.py, the "nervpp" Family).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from bitstream.errors import BitstreamError
from codec.errors import UserError
from codec.video.inr_codec import FAMILIES, Family, INRVideoCodec
from codec.video.options import NeRVPPOptions
from codec.video.layers import (OutputHead, PositionalEncoding, UpBlock, UpsamplingConfig, halving_widths, choose_geometry,
                                meta_count, solve_width)

SIZE_TOLERANCE = 0.05
PAPER_LOWER_WIDTH = 80
# the paper's XS/S/M/L, as parameter counts (fc_dim 8/26/58/112 at 720p, research §4.1)
SIZE_ALIASES = {"XS": 1.90e6, "S": 3.38e6, "M": 6.38e6, "L": 12.55e6}


@dataclass
class NeRVPPConfig(UpsamplingConfig):
    label = "NeRV++"
    height: int
    width: int
    frames: int
    strides: tuple[int, ...]
    grid_h: int
    grid_w: int
    fc_dim: int
    lower_width: int = PAPER_LOWER_WIDTH
    stem_hidden: int = 512
    pe_base: float = 1.25
    pe_levels: int = 40
    reduce: int = 2

    def widths(self) -> list[int]:
        return halving_widths(self.fc_dim, len(self.strides), self.reduce, self.lower_width)

    def frame_activations(self) -> int:
        """Peak activation values of one frame. A stage keeps its input and r; the gated block holds about 15 C
        maps at the input size (2H = 16C/3 from fc1, the gate, the cat, the product), the upsampling, the FFN and
        the bilinear skip about 5 C at the output size."""
        return self.peak_activations(2 * self.fc_dim * self.grid_h * self.grid_w,
                                     lambda c_in, c, a_in, a_out: c_in * a_in + max(15 * c * a_in,
                                                                                    2 * c * a_in + 5 * c * a_out))

    def validate(self) -> None:
        ints = [self.height, self.width, self.frames, self.grid_h, self.grid_w, self.fc_dim, self.lower_width,
                self.stem_hidden, self.pe_levels, self.reduce]
        ok = (all(isinstance(v, int) and 0 < v <= 1 << 16 for v in ints)
              and 0 < len(self.strides) <= 8 and all(0 < s <= 8 for s in self.strides)
              and self.pe_levels <= 128 and isinstance(self.pe_base, (int, float)) and 1.0 < self.pe_base <= 4.0
              and self.fc_dim <= 4096 and self.lower_width <= 4096 and self.stem_hidden <= 8192
              and self.grid_h * self.grid_w * self.fc_dim <= 1 << 22
              and self.padding_ok())
        if not ok:
            raise BitstreamError("config section: NeRV++ config out of range")


class GatedStem(nn.Module):
    """Linear(in -> 2*hidden) -> (x, z) -> Linear(hidden -> out)(x * GELU_tanh(z))."""

    def __init__(self, c_in: int, hidden: int, c_out: int):
        super().__init__()
        self.fc1 = nn.Linear(c_in, 2 * hidden)
        self.fc2 = nn.Linear(hidden, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, z = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(x * F.gelu(z, approximate="tanh"))


class GatedConvBlock(nn.Module):
    """Pre-upsampling residual block (gated CNN): 1x1 to 2H, depthwise 5x5 on C of the H gated channels, 1x1 back.

    1x1 convolutions stand for the paper's channel-wise Linear layers (same maths, no NCHW <-> NHWC permutes)."""

    def __init__(self, c: int):
        super().__init__()
        self.hidden = (8 * c) // 3
        self.c = c
        self.fc1 = nn.Conv2d(c, 2 * self.hidden, 1)
        self.dw = nn.Conv2d(c, c, 5, padding=2, groups=c)
        self.fc2 = nn.Conv2d(self.hidden, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, i, c = torch.split(self.fc1(x), [self.hidden, self.hidden - self.c, self.c], dim=1)
        return x + self.fc2(F.gelu(g) * torch.cat([i, self.dw(c)], dim=1))


class ConvFFN(nn.Module):
    """Post-upsampling residual FFN: depthwise 3x3 -> 1x1 -> GELU -> 1x1, + input."""

    def __init__(self, c: int):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.pw1 = nn.Conv2d(c, c, 1)
        self.pw2 = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw2(F.gelu(self.pw1(self.dw(x))))


class NeRVPPStage(nn.Module):
    def __init__(self, c_in: int, c: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(c_in, c, 1)
        self.pre = GatedConvBlock(c)
        self.up = UpBlock(c, c, 3, stride, "silu")
        self.post = ConvFFN(c)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.proj(x)
        y = self.post(self.up(self.pre(r)))
        if self.stride > 1:
            r = F.interpolate(r, scale_factor=self.stride, mode="bilinear", align_corners=False)
        return y + r


class NeRVPP(nn.Module):
    """model(idx, frames=None) -> frames [B, 3, height, width] (index-only input, like NeRV)."""

    def __init__(self, cfg: NeRVPPConfig):
        super().__init__()
        self.cfg = cfg
        self.pe = PositionalEncoding(cfg.pe_base, cfg.pe_levels)
        self.stem = GatedStem(self.pe.dim, cfg.stem_hidden, cfg.fc_dim * cfg.grid_h * cfg.grid_w)
        stages, c_in = [], cfg.fc_dim
        for c, s in zip(cfg.widths(), cfg.strides):
            stages.append(NeRVPPStage(c_in, c, s))
            c_in = c
        self.stages = nn.ModuleList(stages)
        self.head = OutputHead(c_in, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m.weight.device.type != "meta":
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear) and m.weight.device.type != "meta":
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        t = idx.float() / self.cfg.frames
        x = self.stem(self.pe(t)).view(-1, self.cfg.fc_dim, self.cfg.grid_h, self.cfg.grid_w)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)[:, :, : self.cfg.height, : self.cfg.width]


def parse_alias(size):
    """'XS' / 's' / ... -> the paper's parameter count; anything else unchanged (parse_size validates it)."""
    if isinstance(size, str) and size.strip().upper() in SIZE_ALIASES:
        return SIZE_ALIASES[size.strip().upper()]
    return size


def nervpp_config(height: int, width: int, frames: int, size: float) -> NeRVPPConfig:
    """The NeRV++ config whose parameter count is nearest `size` (see the module docstring for the two families)."""
    geo = choose_geometry(height, width, n_blocks=5, min_side=4)
    base = NeRVPPConfig(height, width, frames, geo.strides, geo.grid_h, geo.grid_w, fc_dim=1)
    cells = geo.grid_h * geo.grid_w

    def count(cfg: NeRVPPConfig) -> int:
        return meta_count(lambda: NeRVPP(cfg))

    def paper(fc: int) -> NeRVPPConfig:
        return replace(base, fc_dim=fc)

    def narrow(w: int, hidden: int | None = None) -> NeRVPPConfig:
        return replace(base, fc_dim=w, lower_width=w, stem_hidden=hidden or min(max(8 * w, 32), 512))

    candidates = []
    if count(paper(1)) <= size:
        # the stem's last Linear dominates: fc_dim ~ (size - rest) / (hidden * cells)
        guess = max(1.0, (size - count(paper(1))) / ((base.stem_hidden + 1) * cells) + 1)
        candidates.append(paper(solve_width(lambda f: count(paper(f)), size, guess, "NeRV++")))
    w = solve_width(lambda v: count(narrow(v)), size, 16, "NeRV++")
    if w <= PAPER_LOWER_WIDTH:
        # one channel moves a narrow model by ~15%: the stem's hidden width (linear in the count) takes up the rest
        options = []
        for v in (w - 1, w, w + 1):
            if not 1 <= v <= PAPER_LOWER_WIDTH:
                continue
            c0 = count(narrow(v, 32))
            hidden = int(round(32 + (size - c0) / (count(narrow(v, 33)) - c0)))
            if 16 <= hidden <= 1024:
                options.append((abs(count(narrow(v, hidden)) - size) > 0.01 * size, abs(hidden - 8 * v),
                                narrow(v, hidden)))
        candidates.append(min(options, key=lambda o: o[:2])[2] if options else narrow(w))
    best = min(candidates, key=lambda c: abs(count(c) - size))
    # the paper family whenever it is within tolerance: it is the published architecture
    if candidates and abs(count(candidates[0]) - size) <= SIZE_TOLERANCE * size:
        best = candidates[0]
    got = count(best)
    if abs(got - size) > SIZE_TOLERANCE * size:
        raise UserError(f"--size {size:.0f} cannot be met within 5% for {height}x{width} with NeRV++ "
                        f"(nearest {got}; the smallest model has {count(narrow(1, 16))} parameters)")
    return best


class NeRVPPFamily(Family):
    # NeRV++'s recipe is NeRV's: Adam(0.5, 0.999), lr 5e-4, 20% warm-up, 0.7*L1 + 0.3*(1-SSIM), batch 1
    name, lr, betas, warmup, loss, batch_size, has_embeddings = "nervpp", 5e-4, (0.5, 0.999), 0.2, "l1_ssim", 1, False

    def config(self, h, w, t, size):
        return nervpp_config(h, w, t, size)

    def config_from_dict(self, d):
        return NeRVPPConfig.from_dict(d)

    def fitting_model(self, cfg):
        return NeRVPP(cfg)

    def decoder(self, cfg):
        return NeRVPP(cfg)


FAMILIES["nervpp"] = NeRVPPFamily()


class NeRVPPCodec(INRVideoCodec):
    name = "nervpp"
    family_name = "nervpp"
    Options = NeRVPPOptions
    description = "NeRV++: NeRV with gated/separable residual blocks and bilinear skips (Ghorbel & Hamidouche 2024)"
