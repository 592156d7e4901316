"""HNeRV (Chen et al., CVPR 2023): a ConvNeXt encoder gives each frame a tiny embedding; a decoder of HNeRV blocks
turns it back into the frame. Only the decoder and the embeddings are stored (the encoder is a fitting aid).

Defaults are the paper's Bunny recipe: embedding 16 channels, kernels 1,3,5,5,5, channel reduction 1.2 per stage
with a floor of 12, GELU, 3x3 head, output tanh*0.5+0.5, encoder width 64. ncodec's recipe adds HiNeRV-style learned
grids (Kwan et al. 2023, simplified: frame-independent, one per listed block) that the config records; files without
them keep today's config and state dict.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from bitstream.errors import BitstreamError
from codec.errors import UserError
from codec.video.layers import (ConvNeXtBlock, Geometry, LayerNorm2d, OutputHead, UpBlock, UpsamplingConfig,
                                choose_geometry, meta_count, solve_width)

SIZE_TOLERANCE = 0.05   # a solved model's parameter count lands within 5% of the asked size


@dataclass
class HNeRVConfig(UpsamplingConfig):
    """Everything the decoder needs to rebuild the network (stored in the .ncb config section)."""
    label = "HNeRV"
    height: int
    width: int
    frames: int
    strides: tuple[int, ...]
    grid_h: int
    grid_w: int
    fc_dim: int
    embed_dim: int = 16
    kernels: tuple[int, ...] = (1, 3, 5, 5, 5)
    reduce: float = 1.2
    lower_width: int = 12
    head_kernel: int = 3
    act: str = "gelu"
    enc_dim: int = 64                     # encoder only: not needed to decode, kept for resume checks
    # HiNeRV-style learned grids (absent from files before them: none): after each listed block, a frame-independent
    # grid of that block's width at 1/stage_grid_down of its resolution, bilinearly upsampled and added
    stage_grids: tuple[int, ...] = ()
    stage_grid_down: int = 12

    def __post_init__(self):
        super().__post_init__()
        self.kernels = tuple(int(v) for v in self.kernels)
        self.stage_grids = tuple(int(v) for v in self.stage_grids)

    def to_dict(self) -> dict:
        d = super().to_dict()
        if not self.stage_grids:     # a grid-less config is stored exactly as before the grids existed
            del d["stage_grids"], d["stage_grid_down"]
        return d

    def stage_grid_shapes(self) -> dict[int, tuple[int, int, int]]:
        """Block index -> (channels, height, width) of its learned grid."""
        d, out = 1, {}
        for i, (c, s) in enumerate(zip(self.widths(), self.strides)):
            d *= s
            if i in self.stage_grids:
                h, w = self.grid_h * d, self.grid_w * d
                out[i] = (c, -(-h // self.stage_grid_down), -(-w // self.stage_grid_down))
        return out

    def widths(self) -> list[int]:
        """Output channels of each block: C_out = max(round(C_in / reduce), lower_width)."""
        out, c = [], self.fc_dim
        for _ in self.strides:
            c = max(int(round(c / self.reduce)), self.lower_width)
            out.append(c)
        return out

    def frame_activations(self) -> int:
        """Peak activation values of one frame: the 1x1 stem, then per block conv -> shuffle -> activation."""
        grids = 2 if self.stage_grids else 0     # a learned grid's upsampled copy and the sum
        return self.peak_activations((self.embed_dim + 2 * self.fc_dim) * self.grid_h * self.grid_w,
                                     lambda c_in, c, a_in, a_out: c_in * a_in + (3 + grids) * c * a_out)

    @property
    def embed_values(self) -> int:
        return self.frames * self.embed_dim * self.grid_h * self.grid_w

    def validate(self) -> None:
        ints = [self.height, self.width, self.frames, self.grid_h, self.grid_w, self.fc_dim, self.embed_dim,
                self.lower_width, self.head_kernel, self.enc_dim]
        ok = (all(isinstance(v, int) and 0 < v <= 1 << 16 for v in ints)
              and 0 < len(self.strides) <= 8 and len(self.kernels) == len(self.strides)
              and all(0 < s <= 8 for s in self.strides) and all(0 < k <= 9 and k % 2 == 1 for k in self.kernels)
              and self.head_kernel % 2 == 1 and isinstance(self.reduce, (int, float)) and 1.0 <= self.reduce <= 4.0
              and self.act in ("gelu", "silu", "relu") and self.fc_dim <= 4096
              and len(set(self.stage_grids)) == len(self.stage_grids)
              and all(0 <= i < len(self.strides) for i in self.stage_grids)
              and isinstance(self.stage_grid_down, int) and 1 <= self.stage_grid_down <= 64
              and self.padding_ok())
        if not ok:
            raise BitstreamError("config section: HNeRV config out of range")


class HNeRVDecoder(nn.Module):
    """Embedding [B, embed_dim, grid_h, grid_w] -> frames [B, 3, height, width] in [0, 1]."""

    def __init__(self, cfg: HNeRVConfig):
        super().__init__()
        self.cfg = cfg
        self.stem = nn.Conv2d(cfg.embed_dim, cfg.fc_dim, 1)
        self.stem_act = nn.GELU() if cfg.act == "gelu" else nn.SiLU()
        blocks, c_in = [], cfg.fc_dim
        for c_out, k, s in zip(cfg.widths(), cfg.kernels, cfg.strides):
            blocks.append(UpBlock(c_in, c_out, k, s, cfg.act))
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.head = OutputHead(c_in, cfg.head_kernel)
        shapes = cfg.stage_grid_shapes()
        if shapes:   # only then: a grid-less network keeps today's state dict
            self.grids = nn.ParameterDict({str(i): nn.Parameter(torch.zeros(shape)) for i, shape in shapes.items()})

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem(emb))
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.cfg.stage_grids:
                g = self.grids[str(i)].to(x.dtype)[None]
                x = x + F.interpolate(g, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(x)[:, :, : self.cfg.height, : self.cfg.width]


class ConvNeXtEncoder(nn.Module):
    """Frames -> embeddings: one stage per stride (downsampling conv with kernel = stride, then a ConvNeXt block);
    every stage is enc_dim wide except the last, which is embed_dim."""

    def __init__(self, cfg: HNeRVConfig):
        super().__init__()
        stages, c_in = [], 3
        for i, s in enumerate(cfg.strides):
            c_out = cfg.embed_dim if i == len(cfg.strides) - 1 else cfg.enc_dim
            if i == 0:
                down = nn.Sequential(nn.Conv2d(c_in, c_out, s, stride=s), LayerNorm2d(c_out))
            else:
                down = nn.Sequential(LayerNorm2d(c_in), nn.Conv2d(c_in, c_out, s, stride=s))
            stages.append(nn.Sequential(down, ConvNeXtBlock(c_out)))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.padded = cfg.padded

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        ph, pw = self.padded[0] - frames.shape[-2], self.padded[1] - frames.shape[-1]
        if ph or pw:  # the encoder sees the frame extended by edge replication (it is never stored)
            frames = F.pad(frames, (0, pw, 0, ph), mode="replicate")
        return self.stages(frames)


class HNeRV(nn.Module):
    """The fitting-time model: model(idx, frames) -> reconstruction (the shared fit loop's contract)."""

    def __init__(self, cfg: HNeRVConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = ConvNeXtEncoder(cfg)
        self.decoder = HNeRVDecoder(cfg)

    def forward(self, idx: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(frames))

    def stored_params(self) -> int:
        """What the size rule counts: decoder parameters + embedding values."""
        return sum(p.numel() for p in self.decoder.parameters()) + self.cfg.embed_values


def hnerv_config(height: int, width: int, frames: int, size: float, *, embed_dim: int = 16,
                 reduce: float = 1.2, lower_width: int = 12, stage_grids: tuple[int, ...] = (),
                 stage_grid_down: int = 12) -> HNeRVConfig:
    """The HNeRV config whose decoder params + embedding values are nearest `size` (paper's sizing rule).

    fc_dim starts from the paper's quadratic a*x^2 + b*x = size - embedding, a = sum_i K_i^2 s_i^2 / r^(2i+1),
    b = embed_dim (the 1x1 stem), then moves to the exact integer nearest the target.
    """
    geo: Geometry = choose_geometry(height, width, n_blocks=5, min_side=2)
    kernels = tuple(min(1 + 2 * i, 5) for i in range(len(geo.strides)))
    base = HNeRVConfig(height, width, frames, geo.strides, geo.grid_h, geo.grid_w, fc_dim=1, embed_dim=embed_dim,
                       kernels=kernels, reduce=reduce, lower_width=lower_width, stage_grids=stage_grids,
                       stage_grid_down=stage_grid_down)
    budget = size - base.embed_values
    if budget <= 0:
        raise UserError(f"--size {size:.0f}: the {base.embed_values} embedding values of this clip already exceed it")
    a = sum(k * k * s * s / reduce ** (2 * i + 1) for i, (k, s) in enumerate(zip(kernels, geo.strides)))
    b = float(embed_dim)
    guess = (-b + math.sqrt(b * b + 4 * a * budget)) / (2 * a)

    def count(fc: int) -> int:
        cfg = replace(base, fc_dim=fc)
        return meta_count(lambda: HNeRVDecoder(cfg)) + cfg.embed_values

    fc = solve_width(count, size, guess, "HNeRV decoder")
    got = count(fc)
    if abs(got - size) > SIZE_TOLERANCE * size:
        smallest = count(1)
        raise UserError(f"--size {size:.0f} cannot be met within 5% for {height}x{width}x{frames} with HNeRV "
                        f"(nearest {got}; the smallest model has {smallest} parameters)")
    return replace(base, fc_dim=fc)


GRID_KEEP_FC = 0.85     # grids only while the decoder keeps this share of its grid-less fc_dim


def hnerv_grid_config(height: int, width: int, frames: int, size: float, stages: tuple[int, ...],
                      share: float) -> HNeRVConfig:
    """HNeRV with learned grids after `stages` taking about `share` of `size`: the grids' resolution divisor is the
    smallest whose grids (at the grid-less network's widths) fit in that share, then fc_dim is solved with them.
    Where they would squeeze the decoder (fc_dim under GRID_KEEP_FC of the grid-less one, or no fit within 5%),
    the grid-less network: small sizes keep every parameter for the decoder."""
    plain = hnerv_config(height, width, frames, size)
    if not stages:
        return plain
    full = sum(c * h * w for c, h, w in replace(plain, stage_grids=tuple(stages), stage_grid_down=1)
               .stage_grid_shapes().values())
    down = min(64, max(1, math.ceil(math.sqrt(full / (share * size)))))
    try:
        cfg = hnerv_config(height, width, frames, size, stage_grids=tuple(stages), stage_grid_down=down)
    except UserError:
        return plain
    return cfg if cfg.fc_dim >= GRID_KEEP_FC * plain.fc_dim else plain
