"""Building blocks shared by the video INR models (NeRV, HNeRV and the later NeRV-family codecs).

Everything here follows the papers' descriptions (docs/INR.md and shared/research/video_inr.md):
frame-index positional encoding, the conv -> PixelShuffle -> activation upsampling block, ConvNeXt blocks for the
HNeRV encoder, and the rule that picks upsampling strides from the frame size.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from bitstream.errors import BitstreamError
from codec.errors import UserError

ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU}



class StoredConfig:
    """Base of the INR config dataclasses: the dict the file's config section holds, checked when read back.

    Subclasses are dataclasses that set `label` (named in errors) and implement `validate()`, which raises
    BitstreamError for values out of range: a config comes from an untrusted file.
    """

    label = "model"

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict):
        try:
            cfg = cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        except (TypeError, ValueError, KeyError) as e:
            raise BitstreamError(f"config section: bad {cls.label} config ({e})") from None
        cfg.validate()
        return cfg

    def validate(self) -> None:
        raise NotImplementedError


class UpsamplingConfig(StoredConfig):
    """A config whose network starts from a grid_h x grid_w grid and upsamples it by the product of `strides`."""

    def __post_init__(self):
        self.strides = tuple(int(v) for v in self.strides)

    @property
    def padded(self) -> tuple[int, int]:
        d = math.prod(self.strides)
        return self.grid_h * d, self.grid_w * d

    def areas(self) -> list[int]:
        """Pixels of one frame's feature maps: the start grid's, then after each upsampling block (padded)."""
        out, f = [self.grid_h * self.grid_w], 1
        for s in self.strides:
            f *= s
            out.append(self.grid_h * self.grid_w * f * f)
        return out

    def peak_activations(self, stem: int, block: Callable[[int, int, int, int], int]) -> int:
        """Peak values alive while one frame is rendered (config arithmetic, nothing built): the largest of the
        stem's `stem`, each block's block(c_in, c_out, area_in, area_out) with its input alive, and the head on the
        last map (its RGB output, (tanh + 1) / 2 and the uint8 conversion's float copies)."""
        areas, c_in, peak = self.areas(), self.fc_dim, stem
        for i, c in enumerate(self.widths()):
            peak = max(peak, block(c_in, c, areas[i], areas[i + 1]))
            c_in = c
        return max(peak, (c_in + 16) * areas[-1])

    def padding_ok(self) -> bool:
        """The rendered (padded) frame covers the frame and is not absurdly larger: configs come from files."""
        ph, pw = self.padded
        return self.height <= ph < 2 * self.height + 64 and self.width <= pw < 2 * self.width + 64


def halving_widths(fc_dim: int, stages: int, reduce: int, lower_width: int) -> list[int]:
    """NeRV's channel rule: fc_dim at the first stage, then divided by `reduce` per stage, never under lower_width."""
    out, c = [], fc_dim
    for i in range(stages):
        c = fc_dim if i == 0 else max(c // reduce, lower_width)
        out.append(c)
    return out


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}")
    return ACTIVATIONS[name]()


class PositionalEncoding(nn.Module):
    """NeRV's frame-index encoding: t -> [sin(b^k pi t), cos(b^k pi t)] for k < levels (2*levels values)."""

    def __init__(self, base: float = 1.25, levels: int = 40):
        super().__init__()
        # computed on the CPU even inside a meta-device build (codec bounds): a meta arange costs seconds
        k = torch.arange(levels, dtype=torch.float64, device="cpu")
        self.register_buffer("freqs", (base ** k * math.pi).float(), persistent=False)
        self.dim = 2 * levels

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = t.float()[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(x), torch.cos(x)], dim=1)


class UpBlock(nn.Module):
    """NeRV / HNeRV block: KxK conv to C_out*s^2 channels -> PixelShuffle(s) -> activation."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, act: str):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out * stride * stride, kernel, padding=kernel // 2)
        self.shuffle = nn.PixelShuffle(stride) if stride > 1 else nn.Identity()
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.shuffle(self.conv(x)))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor (ConvNeXt's channels-first LayerNorm)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block: depthwise 7x7 -> LayerNorm -> 1x1 (x4) -> GELU -> 1x1, layer scale 1e-6, residual."""

    def __init__(self, dim: int, layer_scale: float = 1e-6):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = LayerNorm2d(dim)
        # 1x1 convolutions instead of Linear on a permuted tensor: same maths, stays in NCHW/channels_last
        self.pw1 = nn.Conv2d(dim, 4 * dim, 1)
        self.pw2 = nn.Conv2d(4 * dim, dim, 1)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw2(F.gelu(self.pw1(self.norm(self.dw(x)))))
        return x + y * self.gamma[:, None, None]


class OutputHead(nn.Module):
    """Last conv to RGB and the bounded output map ((tanh(x) + 1) / 2 in [0, 1])."""

    def __init__(self, c_in: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, 3, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x)) * 0.5 + 0.5


# ---------------------------------------------------------------------------------------------------------------
# geometry: strides from the frame size


@dataclass(frozen=True)
class Geometry:
    """How a frame of height x width is built: a grid_h x grid_w start grid upsampled by `strides`.

    The product of the strides, D, need not divide the frame: the network renders the padded size
    (grid_h*D) x (grid_w*D) and the output is cropped to the top-left height x width.
    """
    height: int
    width: int
    strides: tuple[int, ...]
    grid_h: int
    grid_w: int

    @property
    def factor(self) -> int:
        return math.prod(self.strides)

    @property
    def padded(self) -> tuple[int, int]:
        return self.grid_h * self.factor, self.grid_w * self.factor


def choose_geometry(height: int, width: int, n_blocks: int = 5, min_side: int = 2, max_pad: float = 0.10,
                    max_stride: int = 5) -> Geometry:
    """Strides for `n_blocks` upsampling blocks, from the frame size.

    Rule (docs/INR.md): among stride lists (each stride 1..max_stride, largest first) whose start grid
    ceil(H/D) x ceil(W/D), D = prod(strides), keeps its shorter side >= min_side and whose padding adds at most
    max_pad of the frame area, take the smallest grid, then the least padding, then the most even strides
    (smallest sum of squares).
    Bunny 640x1280 gives 5,4,4,2,2 and a 2x4 grid (the HNeRV paper's choice); carphone 144x176 gives 3,2,2,2,2
    and a 3x4 grid rendered at 144x192 and cropped.
    """
    if height < 1 or width < 1:
        raise UserError(f"frame size {height}x{width} is empty")
    best = None
    for strides in itertools.combinations_with_replacement(range(max_stride, 0, -1), n_blocks):
        d = math.prod(strides)
        gh, gw = -(-height // d), -(-width // d)
        if min(gh, gw) < min(min_side, min(height, width)):
            continue
        pad = gh * gw * d * d / (height * width) - 1
        if pad > max_pad + 1e-12:
            continue
        key = (-gh * gw, -pad, -sum(s * s for s in strides), strides)
        if best is None or key > best[0]:
            best = (key, strides, gh, gw)
    if best is None:  # every factor pads too much: fall back to no upsampling beyond what divides exactly
        return Geometry(height, width, (1,) * n_blocks, height, width)
    _, strides, gh, gw = best
    return Geometry(height, width, tuple(strides), gh, gw)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parse_size(size: str | float | int | None) -> float | None:
    """'1.5M' / '350k' / '350000' / 1.5e6 -> a parameter count (float); None stays None."""
    if size is None:
        return None
    if isinstance(size, (int, float)):
        value = float(size)
    else:
        s = str(size).strip().lower()
        mult = 1.0
        if s.endswith("m"):
            mult, s = 1e6, s[:-1]
        elif s.endswith("k"):
            mult, s = 1e3, s[:-1]
        try:
            value = float(s) * mult
        except ValueError:
            raise UserError(f"--size {size!r}: expected a parameter count like 0.35M, 1.5M, 350k or 350000") from None
        # a bare small number means millions (the papers' '--modelsize 1.5')
        if mult == 1.0 and 0 < value < 100:
            value *= 1e6
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"--size must be a positive parameter count, got {size!r}")
    return value


def solve_width(count: Callable[[int], int], target: float, guess: float, what: str = "model") -> int:
    """Integer width whose parameter count is nearest `target`, starting from the papers' closed-form `guess`.

    `count(width)` must grow with width. The closed form ignores biases and width floors, so we search from it
    (doubling steps, then bisection: a far guess costs a few dozen counts, not thousands) for the largest width
    whose count is at most `target`; the caller checks the result lands within tolerance.
    """
    limit = 1 << 16
    w = max(1, int(round(guess)))
    if count(w) <= target:
        step = 1
        while True:
            nxt = min(w + step, limit + 1)
            if count(nxt) > target:
                break
            w = nxt
            if w > limit:
                raise UserError(f"--size {target:.0f} is too large for the {what}")
            step *= 2
        lo, above = w, nxt
    else:
        above, step, lo = w, 1, None
        while above > 1:
            nxt = max(above - step, 1)
            if count(nxt) <= target:
                lo = nxt
                break
            above, step = nxt, step * 2
        if lo is None:                       # even width 1 is over the target
            lo = above = 1
    while above - lo > 1:                    # count(lo) <= target < count(above)
        mid = (lo + above) // 2
        if count(mid) <= target:
            lo = mid
        else:
            above = mid
    return min((lo, lo + 1), key=lambda v: abs(count(v) - target))


def meta_count(build: Callable[[], nn.Module]) -> int:
    """Parameter count of a module built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        return count_params(build())
