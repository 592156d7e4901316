"""NIRVANA (Maiya et al., CVPR 2023): one small patch network per group of G frames, fitted in order, each group's
network starting from the previous one's, with weights trained as quantised integers under a rate penalty.

No official code exists; every choice below is ours and docs/NIRVANA.md gives the reasons. In short:
- groups of G frames (--group, default 8); the last group may be shorter (its network still has G outputs, only
  the real frames are fitted and stored);
- network per group, evaluated on all patches of the frame at once (one batched pass): patch coordinates (y, x) in
  [-1, 1] -> SIREN layers (sin(omega * (W x + b)), omega 10, SIREN init) -> Linear to c x 4 x 4 -> GELU ->
  log2(P/4) upsampling blocks (3x3 conv c -> 4c, PixelShuffle(2), GELU) -> 3x3 conv to 3G channels ->
  (tanh + 1) / 2 = the P x P patch of all G frames; patches are tiled and the padding cropped;
- quantisation-aware from the start: every tensor is w = step * round(latent), latent in integer units with a
  straight-through rounding, step a learned per-tensor scale (learned in the first group, then fixed);
- loss = MSE + lambda * rate, rate in bits per pixel from a learned per-tensor Laplace(0, b) over the integer
  symbols: the integers themselves in key groups (the first, and every --key-every'th), their difference from the
  previous group's integers otherwise. Group k starts from group k-1's latents, so its residuals start at zero;
- --bpp: the bit budget is spread over the groups as the fit goes (RatePlan: a target per group from the bits
  still unspent, key groups weighted; LambdaServo steers a key group's lambda during its fit, a Newton step on
  log(lambda) sets each residual group's from the group before);
- file: section "config" (JSON), "steps" (the float32 steps), and one "group/<k>" per group holding the range-coded
  symbols under the learned Laplace (or a fitted Categorical when that is smaller), one model per tensor;
- decoding frames A:B reads only the sections of the groups that hold them and of the groups back to their key
  group (entropy decoding only: those groups are not rendered); rendering runs several groups in one batched pass
  (grouped convolutions and batched matmuls), in fixed-size chunks so any range gives the full decode's frames.
Encoding runs the shared fit loop (codec.fit.fit) once per group, --steps-per-group steps (the first group, fitted
from scratch, gets FIRST_GROUP_FACTOR times as many); --max-time is split over groups the same way.
"""
from __future__ import annotations

import json
import math
import operator
import time
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bitstream import coder
from bitstream.container import Reader, Writer
from bitstream.errors import BitstreamError
from bitstream.serial import ByteReader, ByteWriter, read_json
from codec.base import Bounds, DecodedVideo, Encoded, Job, VideoCodec, check_size, header_fps, phase, video_header
from codec.device import device_name, pick_device, seed_everything
from codec.errors import UserError
from codec.fit import FitConfig, fit, frames_to_device
from codec.schedule import warmup_cosine
from codec.quant import QuantizedTensor, round_ste
from codec.video.layers import StoredConfig, parse_size, solve_width
from codec.video.options import NirvanaOptions

VERSION = 1
MAX_GROUP = 64
FIRST_GROUP_FACTOR = 4          # the first group is fitted from scratch: this many times the steps of the others
DEFAULT_STEPS = 150             # steps per group when neither --steps-per-group nor --max-time is given
DEFAULT_LAMBDA = 0.01           # MSE (frames in [0, 1]) + lambda * bits per pixel
DEFAULT_LR = 3.0                # --latent-lr: Adam step of the latents, in integer units (the first group;
                                # later ones half)
INIT_LEVELS = 127               # initial step = init bound / 127: an 8-bit grid over the initial weights
MAX_SYMBOL = (1 << 15) - 1      # integers are kept within 16-bit symmetric range (the shared quantiser's limit)
STEP_LR = 2e-3                  # wanted Adam step of log(step) per iteration ...
RATE_LR = 2e-2                  # ... and of log(Laplace scale): realised by reparametrisation (see GroupModel)
MAX_CONFIG_BYTES = 1 << 16
# --bpp rate control (RatePlan, LambdaServo; docs/NIRVANA.md "Rate control")
KEY_WEIGHT = 12.0               # a key group's share of the budget against a residual group's, before its cap
RES_BITS_PER_PARAM = 0.8        # prior: bits per parameter a residual group spends at lambda 0.01 ...
RES_SLOPE = 0.65                # ... and -d log(bits) / d log(lambda) of a residual group ...
KEY_SLOPE = 0.35                # ... and of a key group below its cap (measured: carphone, Bunny)
CATEGORICAL_BIN_BITS = 3.0      # a fitted Categorical's table, per bin of its span (bitstream.coder: 2-3)
NEWTON_DAMPING = 0.5            # half the Newton step on log(lambda) from one group to the next ...
MAX_LAMBDA_STEP = 4.0           # ... and at most x4 or x1/4
SERVO_KI = 0.02                 # per step, times the learning-rate factor: log(lambda) += KI * log(bits / target) ...
SERVO_KP = 1.0                  # ... and lambda = exp(integral + KP * log(bits / target))
SERVO_RAMP = 0.5                # from above, the servo's reference reaches the target half-way through the fit
LAMBDA_RANGE = (1e-6, 10.0)
RC_MIN_BITS_PER_PARAM = 0.05    # no group's target goes below this, whatever the groups before it spent
GRID_SIDE = 4                   # the feature grid the MLP emits is GRID_SIDE x GRID_SIDE per patch


# ---------------------------------------------------------------------------------------------------------------
# config and geometry


@dataclass
class NirvanaConfig(StoredConfig):
    label = "NIRVANA"
    height: int
    width: int
    frames: int
    group: int = 8
    patch: int = 16
    hidden: int = 64
    layers: int = 3               # SIREN layers (the first takes the 2 coordinates)
    channels: int = 16
    omega: float = 10.0
    key_every: int = 0            # 0: only the first group is a key group

    @property
    def grid(self) -> tuple[int, int]:
        return -(-self.height // self.patch), -(-self.width // self.patch)

    @property
    def num_groups(self) -> int:
        return -(-self.frames // self.group)

    @property
    def ups(self) -> int:
        return int(round(math.log2(self.patch // GRID_SIDE)))

    def group_frames(self, k: int) -> tuple[int, int]:
        return k * self.group, min((k + 1) * self.group, self.frames)

    def is_key(self, k: int) -> bool:
        return k == 0 or (self.key_every > 0 and k % self.key_every == 0)

    def key_of(self, k: int) -> int:
        return 0 if self.key_every == 0 else (k // self.key_every) * self.key_every

    def tensor_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """Every stored tensor, in order: (name, shape)."""
        h, c, s = self.hidden, self.channels, GRID_SIDE
        out, c_in = [], 2
        for i in range(self.layers):
            out += [(f"siren.{i}.weight", (h, c_in)), (f"siren.{i}.bias", (h,))]
            c_in = h
        out += [("grid.weight", (c * s * s, h)), ("grid.bias", (c * s * s,))]
        for i in range(self.ups):
            out += [(f"up.{i}.weight", (4 * c, c, 3, 3)), (f"up.{i}.bias", (4 * c,))]
        out += [("head.weight", (3 * self.group, c, 3, 3)), ("head.bias", (3 * self.group,))]
        return out

    def params(self) -> int:
        return sum(math.prod(s) for _, s in self.tensor_shapes())

    def bounds(self, file_bytes: int, chunk: int) -> Bounds:
        """What decoding a file of this config costs (arithmetic only). Decoding keeps every wanted group's integer
        weights (int32) and dequantises a chunk of groups at a time (float32, then stacked); a chunk renders
        every patch at once: the SIREN layers over [K, N, hidden], the feature grid, the upsampling convolutions
        at the padded frame size and the 3G-channel head (with its tanh, scaling and the patches' reassembly)."""
        p, groups = self.params(), self.num_groups
        n = self.grid[0] * self.grid[1]
        area = n * self.patch * self.patch
        open_bytes = file_bytes + 8 * n
        decode_bytes = open_bytes + 4 * p * (groups + 2) + 8 * p * chunk
        frame = 3 * n * self.hidden + area * max(4 * self.channels, 15 * self.group + self.channels)
        return Bounds(p * groups, open_bytes, decode_bytes, 4 * chunk * frame)

    def validate(self, err=BitstreamError) -> None:
        ints = [self.height, self.width, self.frames, self.group, self.patch, self.hidden, self.layers,
                self.channels]
        ok = (all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1 << 16 for v in ints)
              and isinstance(self.key_every, int) and 0 <= self.key_every <= 1 << 16
              and self.group <= MAX_GROUP and self.layers <= 16 and self.hidden <= 4096 and self.channels <= 1024
              and self.patch in (8, 16, 32, 64)
              and isinstance(self.omega, (int, float)) and 0 < self.omega <= 1000)
        if not ok:
            raise err("config section: NIRVANA config out of range" if err is BitstreamError
                      else "NIRVANA options out of range")


def default_patch(height: int, width: int) -> int:
    """16-pixel patches up to SD, 32 above (about 100-1000 patches a frame either way)."""
    return 16 if min(height, width) < 288 else 32


def config_for_size(base: NirvanaConfig, size: float) -> NirvanaConfig:
    """The config with `size` parameters per group network: SIREN width h solved, feature channels h // 4."""
    def make(h: int) -> NirvanaConfig:
        return replace(base, hidden=h, channels=max(4, h // 4))

    h = solve_width(lambda v: make(v).params(), size, 64, "NIRVANA group network")
    cfg = make(h)
    if abs(cfg.params() - size) > 0.1 * size:
        raise UserError(f"--size {size:.0f}: the nearest NIRVANA group network has {cfg.params()} parameters "
                        f"(the smallest {make(1).params()})")
    return cfg


def default_size(height: int, width: int, group: int) -> float:
    """Parameters per group network when --size is not given: about 0.1 per pixel of a group, 10k..400k."""
    return float(min(max(0.1 * group * height * width, 10e3), 400e3))


# ---------------------------------------------------------------------------------------------------------------
# the network: a function of its weights, for K groups at once (K = 1 when fitting)


def patch_coords(cfg: NirvanaConfig, device) -> torch.Tensor:
    """[N, 2] centre of each patch in [-1, 1], row-major over the patch grid."""
    gh, gw = cfg.grid
    y = (torch.arange(gh, dtype=torch.float32, device=device) + 0.5) / gh * 2 - 1
    x = (torch.arange(gw, dtype=torch.float32, device=device) + 0.5) / gw * 2 - 1
    return torch.stack(torch.meshgrid(y, x, indexing="ij"), dim=-1).reshape(-1, 2)


def run_network(cfg: NirvanaConfig, ws: list[torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
    """Weights of K groups (each tensor with a leading K) -> frames [K, G, 3, height, width] in [0, 1].

    All patches go through in one pass: the MLP as batched matmuls over [K, N, features], the convolutions as one
    grouped convolution over [N, K * channels, p, p], so K groups cost one call per layer."""
    k, n = ws[0].shape[0], coords.shape[0]
    c, s, G, P = cfg.channels, GRID_SIDE, cfg.group, cfg.patch
    x = coords.expand(k, n, 2)
    i = 0
    for _ in range(cfg.layers):
        w, b = ws[i], ws[i + 1]
        x = torch.sin(cfg.omega * torch.baddbmm(b[:, None, :], x, w.transpose(1, 2)))
        i += 2
    w, b = ws[i], ws[i + 1]
    i += 2
    x = F.gelu(torch.baddbmm(b[:, None, :], x, w.transpose(1, 2)))            # [K, N, c*s*s]
    x = x.view(k, n, c, s, s).transpose(0, 1).reshape(n, k * c, s, s)
    for _ in range(cfg.ups):
        w, b = ws[i], ws[i + 1]
        i += 2
        x = F.conv2d(x, w.reshape(k * 4 * c, c, 3, 3), b.reshape(-1), padding=1, groups=k)
        x = F.gelu(F.pixel_shuffle(x, 2))
    w, b = ws[i], ws[i + 1]
    x = F.conv2d(x, w.reshape(k * 3 * G, c, 3, 3), b.reshape(-1), padding=1, groups=k)
    x = torch.tanh(x) * 0.5 + 0.5                                             # [N, K*G*3, P, P]
    gh, gw = cfg.grid
    x = x.view(gh, gw, k, G, 3, P, P).permute(2, 3, 4, 0, 5, 1, 6).reshape(k, G, 3, gh * P, gw * P)
    return x[..., : cfg.height, : cfg.width]


def init_weights(cfg: NirvanaConfig, gen: torch.Generator) -> list[torch.Tensor]:
    """SIREN init for the sine layers (first U(-1/in, 1/in), then U(+-sqrt(6/in)/omega)), PyTorch's default
    U(+-1/sqrt(fan_in)) for the rest; biases U(+-1/sqrt(fan_in)) everywhere."""
    out = []
    for name, shape in cfg.tensor_shapes():
        layer = name.rsplit(".", 1)[0]
        fan_in = {n: math.prod(s[1:]) for n, s in cfg.tensor_shapes() if n.endswith("weight")}[layer + ".weight"]
        if name.endswith("weight") and name.startswith("siren."):
            bound = 1.0 / fan_in if name == "siren.0.weight" else math.sqrt(6.0 / fan_in) / cfg.omega
        else:
            bound = 1.0 / math.sqrt(fan_in)
        out.append((torch.rand(shape, generator=gen) * 2 - 1) * bound)
    return out


# ---------------------------------------------------------------------------------------------------------------
# rate


_LN2 = math.log(2.0)


def laplace_bits(r: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """-log2 P(r) summed, for integer-valued r under Laplace(0, b) integrated over [r - 1/2, r + 1/2].

    P(0) = 1 - exp(-1/(2b)); P(r) = exp(-(|r| - 1/2)/b) (1 - exp(-1/b)) / 2 for |r| >= 1, which is smooth in |r|, so
    the straight-through gradient of a non-zero residual is 1/b (an L1 pull towards the previous group)."""
    a = r.abs()
    log_p0 = torch.log(-torch.expm1(-0.5 / b))
    log_pr = -(a - 0.5) / b + math.log(0.5) + torch.log(-torch.expm1(-1.0 / b))
    return -torch.where(a < 0.5, log_p0, log_pr).sum() / _LN2


class GroupModel(nn.Module):
    """The network of one group while it is fitted: model(idx, frames) -> its frames idx (the fit loop's contract).

    Parameters (what Adam moves, all at the fit's one learning rate, in integer units for the latents): the latents;
    u and v with step = step0 * exp(STEP_LR / lr * u) and Laplace scale b = b0 * exp(RATE_LR / lr * v), so that one
    Adam step moves log(step) by about STEP_LR and log(b) by about RATE_LR whatever the latents' rate is."""

    def __init__(self, cfg: NirvanaConfig, latents: list[torch.Tensor], steps: torch.Tensor, rate_scales: torch.Tensor,
                 reference: list[torch.Tensor] | None, lr: float, learn_steps: bool):
        super().__init__()
        self.cfg = cfg
        self.latents = nn.ParameterList([nn.Parameter(t.clone().float()) for t in latents])
        self.register_buffer("step0", steps.clone().float())
        self.register_buffer("b0", rate_scales.clone().float())
        self.u = nn.Parameter(torch.zeros(len(latents)), requires_grad=learn_steps)
        self.v = nn.Parameter(torch.zeros(len(latents)))
        self.has_reference = reference is not None      # key groups code integers, the others residuals
        for i, r in enumerate(reference or []):
            self.register_buffer(f"ref{i}", r.float())
        self.step_mult, self.rate_mult = STEP_LR / lr, RATE_LR / lr
        self.register_buffer("coords", patch_coords(cfg, "cpu"), persistent=False)

    def steps(self) -> torch.Tensor:
        return self.step0 * torch.exp(self.step_mult * self.u)

    def rate_scales(self) -> torch.Tensor:
        return (self.b0 * torch.exp(self.rate_mult * self.v)).clamp_min(0.02)

    def weights(self) -> list[torch.Tensor]:
        st = self.steps()
        return [(st[i] * round_ste(t))[None] for i, t in enumerate(self.latents)]

    def forward(self, idx: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        out = run_network(self.cfg, self.weights(), self.coords)[0]
        return out.index_select(0, idx)

    def rate_bits(self) -> torch.Tensor:
        b = self.rate_scales()
        total = b.new_zeros(())
        for i, t in enumerate(self.latents):
            r = round_ste(t)
            if self.has_reference:
                r = r - getattr(self, f"ref{i}")
            total = total + laplace_bits(r, b[i])
        return total

    @torch.no_grad()
    def coded_bits(self) -> torch.Tensor:
        """About what encode_group will spend on the group now: per tensor the cheaper of the Laplace at its best
        scale and the symbols' histogram (its entropy plus a table at CATEGORICAL_BIN_BITS a bin), as the coder
        chooses. Not rate_bits: the learned scales lag behind the symbols early in a fit (residuals start at zero
        under b = 1, 1.4 bits each), and a key group's integers soon fit their histogram far better than any
        Laplace (3-4x fewer bits on Bunny at lambda 0.1-0.9). Computed on the device, from the symbols' counts."""
        grid = torch.logspace(math.log10(0.02), 4, 96, device=self.step0.device)
        log_p0 = torch.log(-torch.expm1(-0.5 / grid))
        log_pr = math.log(0.5) + torch.log(-torch.expm1(-1.0 / grid))
        total = grid.new_zeros(())
        for i, t in enumerate(self.latents):
            q = torch.round(t).flatten()
            if self.has_reference:
                q = q - getattr(self, f"ref{i}").flatten()
            q = q.long()
            a = q.abs()
            nz = (a > 0).sum()
            excess = (a - 0.5).clamp_min(0).sum()       # sum of |r| - 1/2 over the non-zero symbols
            laplace = (-((q.numel() - nz) * log_p0 + nz * log_pr - excess / grid) / _LN2).min()
            lo = q.min()
            counts = torch.bincount(q - lo).float()
            hist = counts[counts > 0]
            entropy = -(hist * torch.log2(hist / q.numel())).sum()
            categorical = entropy + CATEGORICAL_BIN_BITS * counts.numel() + 64
            total = total + torch.minimum(laplace, categorical)
        return total

    def integers(self) -> list[np.ndarray]:
        return self.round(self.latents)

    @staticmethod
    def round(latents) -> list[np.ndarray]:
        """The integers that latents stand for (what a group section codes)."""
        return [torch.round(t.detach()).clamp(-MAX_SYMBOL, MAX_SYMBOL).to("cpu", torch.int32).numpy()
                for t in latents]


# ---------------------------------------------------------------------------------------------------------------
# group sections: the integers (or their residuals), range-coded under per-tensor models

_MODEL_LAPLACE, _MODEL_CATEGORICAL = 1, 2


def encode_group(symbols: list[np.ndarray], scales: np.ndarray) -> bytes:
    """Per tensor: the learned Laplace(0, b) on the symbols' [min, max], or the fitted Categorical if cheaper."""
    w = ByteWriter()
    w.varint(len(symbols))
    enc = coder.RangeEncoder()
    for s, b in zip(symbols, scales):
        s = s.ravel()
        lo, hi = int(s.min()), int(s.max())
        lap = coder.QuantizedLaplace(lo, hi, 0.0, float(max(b, 0.02)))
        cat = coder.Categorical.fit(s)
        options = [(_MODEL_LAPLACE, lap), (_MODEL_CATEGORICAL, cat)]
        kind, model = min(options, key=lambda m: 8 * len(m[1].to_bytes()) + m[1].ideal_bits(s))
        w.u8(kind)
        model.write(w)
        enc.encode(s, model)
    w.bytes_(enc.to_bytes())
    return w.getvalue()


def decode_group(data: bytes, shapes: list[tuple[int, ...]], what: str) -> list[np.ndarray]:
    r = ByteReader(data, what=what)
    n = r.varint(4096)
    if n != len(shapes):
        raise BitstreamError(f"{what}: {n} tensors, the network has {len(shapes)}")
    models = []
    for shape in shapes:
        kind = r.u8()
        if kind == _MODEL_LAPLACE:
            model = coder.QuantizedLaplace.from_bytes(r, max_elements=1)
            if model.n is not None:
                raise BitstreamError(f"{what}: Laplace parameters must be scalars")
            span = (model.lo, model.hi)
        elif kind == _MODEL_CATEGORICAL:
            model = coder.Categorical.from_bytes(r, max_elements=4 * MAX_SYMBOL + 1)
            span = (model.min_symbol, model.max_symbol)
        else:
            raise BitstreamError(f"{what}: unknown entropy model {kind}")
        if span[0] < -2 * MAX_SYMBOL or span[1] > 2 * MAX_SYMBOL:
            raise BitstreamError(f"{what}: symbols outside the 16-bit range")
        models.append(model)
    payload = r.bytes_(max_len=3 * sum(math.prod(s) for s in shapes) + 8)
    r.expect_end()
    dec = coder.RangeDecoder(payload)
    return [dec.decode(m, math.prod(s)).reshape(s) for m, s in zip(models, shapes)]


def dequantize(q: list[np.ndarray], steps: np.ndarray) -> list[torch.Tensor]:
    """step * integer in float32 through the shared quantiser's dequantisation (identical on every device)."""
    return [QuantizedTensor(qi.astype(np.int32), np.float32(st), np.float32(0), 16, None, True).dequantize()
            for qi, st in zip(q, steps)]


# ---------------------------------------------------------------------------------------------------------------
# reading a file


def decode_chunk_groups(device: torch.device) -> int:
    """Groups per rendering call. Fixed per device type (not per request): every group is rendered in the same
    batch shape whatever range is asked for, so a partial decode gives exactly the full decode's frames."""
    return 8 if device.type == "cuda" else 2


def read_config(reader: Reader) -> NirvanaConfig:
    """The config section, checked against the header."""
    conf = read_json(reader.payload("config"), "config section", MAX_CONFIG_BYTES)
    try:
        model = conf["model"]
    except (KeyError, TypeError):
        raise BitstreamError("config section is not a valid NIRVANA config") from None
    if not isinstance(model, dict):
        raise BitstreamError("config section is not a valid NIRVANA config")
    cfg = NirvanaConfig.from_dict(model)
    h = reader.header
    if h.get("width") != cfg.width or h.get("height") != cfg.height or h.get("frames") != cfg.frames:
        raise BitstreamError("header and config section disagree on the video size")
    return cfg


class LoadedFile(DecodedVideo):
    """A NIRVANA file's config and steps (after Codec.check and the bounds); group weights are decoded on demand,
    only for the groups asked for."""

    def __init__(self, reader: Reader, device: torch.device):
        self.cfg = read_config(reader)
        h = reader.header
        self.width, self.height, self.num_frames = self.cfg.width, self.cfg.height, self.cfg.frames
        self.fps = header_fps(h)
        self.shapes = [s for _, s in self.cfg.tensor_shapes()]
        sr = ByteReader(reader.payload("steps"), what="steps section")
        self.steps = sr.array(max_elements=len(self.shapes))
        sr.expect_end()
        if (self.steps.dtype != np.float32 or self.steps.shape != (len(self.shapes),)
                or not (np.isfinite(self.steps).all() and (self.steps > 0).all())):
            raise BitstreamError("steps section: expected one finite positive float32 per tensor")
        self.reader, self.device = reader, device
        self.coords = patch_coords(self.cfg, device)
        self.sections_read: list[int] = []

    def integers(self, groups: list[int]) -> dict[int, list[np.ndarray]]:
        """Integer weights of `groups` (sorted), reading each needed section once: a group's chain goes back to its
        key group (residual coding), and nothing else is read."""
        out: dict[int, list[np.ndarray]] = {}
        cur_k, cur = None, None
        for g in sorted(set(groups)):
            key = self.cfg.key_of(g)
            if cur_k is None or cur_k < key:
                start, cur = key, None            # start the chain at the group's key group
            else:
                start = cur_k + 1                 # continue the chain decoded for an earlier group
            for k in range(start, g + 1):
                name = f"group/{k}"
                if not self.reader.has(name):
                    raise BitstreamError(f"section {name!r} is missing from this nirvana file")
                sym = decode_group(self.reader.payload(name), self.shapes, f"section {name!r}")
                self.sections_read.append(k)
                if self.cfg.is_key(k):
                    cur = sym
                else:
                    if cur is None:
                        raise BitstreamError(f"section {name!r} has no reference group")
                    cur = [a + b for a, b in zip(cur, sym)]
                if any(np.abs(t).max(initial=0) > MAX_SYMBOL for t in cur):
                    raise BitstreamError(f"section {name!r}: weights leave the 16-bit range")
                cur_k = k
            out[g] = cur
        return out


# ---------------------------------------------------------------------------------------------------------------
# rate control (--bpp): the budget spread over the groups as the fit goes


class RatePlan:
    """--bpp: bit targets per group and each group's lambda (docs/NIRVANA.md, "Rate control").

    Target of group k: the bits still unspent, shared among groups k..n-1 in proportion to their frames, a key
    group counting KEY_WEIGHT residual groups but never more than its starting integers cost (at moderate rates a
    key group barely moves from them whatever lambda is: measured on Bunny and carphone). What one group over- or
    undershoots so moves the targets of all the groups after it.
    Lambda of a residual group: fixed for its fit, a Newton step on log(lambda) from the last residual group's
    (lambda, bits) to this group's target, with bits ~ lambda^-RES_SLOPE and the step bounded by MAX_LAMBDA_STEP
    (the first residual group starts from a prior). A key group's lambda moves during its fit (LambdaServo): it
    has no earlier group to learn from, and it holds most of the bits."""

    def __init__(self, cfg: NirvanaConfig, budget_bits: float):
        self.cfg, self.left = cfg, float(budget_bits)
        self.calib = {True: 1.0, False: 1.0}           # coded bits / coded_bits() at the end of a fit, per kind
        self.last: dict[bool, tuple[float, float, float]] = {}   # kind -> (lambda, coded bits, frames)

    def target(self, k: int, cap: float) -> float:
        """Bits for group k; `cap` bounds it if k is a key group (the cost of the integers it starts from)."""
        cfg = self.cfg
        groups = range(k, cfg.num_groups)
        frames = {j: -operator.sub(*cfg.group_frames(j)) / cfg.group for j in groups}
        later_cap = self.last[True][1] if True in self.last else cap      # what the last key group cost
        caps = {j: cap if j == k else later_cap for j in groups if cfg.is_key(j)}

        def spent(u: float) -> float:      # the bits groups k.. take when a residual group's frames get u bits
            return sum(min(KEY_WEIGHT * frames[j] * u, caps[j]) if j in caps else frames[j] * u for j in groups)

        lo, hi = 0.0, max(self.left, 1.0)
        for _ in range(60):                # spent(u) grows with u: bisection for spent(u) = bits left
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if spent(mid) < self.left else (lo, mid)
        share = min(KEY_WEIGHT * frames[k] * lo, cap) if k in caps else frames[k] * lo
        return max(share, RC_MIN_BITS_PER_PARAM * cfg.params())

    def lambda_for(self, key: bool, target: float, frames: float) -> float:
        if key in self.last:
            lam, bits, f = self.last[key]
            step = (target / frames / (bits / f)) ** (-NEWTON_DAMPING / (KEY_SLOPE if key else RES_SLOPE))
            lam *= min(max(step, 1.0 / MAX_LAMBDA_STEP), MAX_LAMBDA_STEP)
        elif key:                          # from below: a lambda too high early collapses the weights for good
            lam = DEFAULT_LAMBDA
        else:
            prior = RES_BITS_PER_PARAM * self.cfg.params() * frames
            lam = DEFAULT_LAMBDA * (target / prior) ** (-1.0 / RES_SLOPE)
        return float(min(max(lam, LAMBDA_RANGE[0]), LAMBDA_RANGE[1]))

    def record(self, key: bool, lam: float, coded: float, estimate: float, frames: float) -> None:
        self.left -= coded
        self.calib[key] = coded / max(estimate, 1.0)
        self.last[key] = (lam, max(coded, 1.0), frames)


class LambdaServo:
    """Lambda inside one group's fit, from the group's bits (GroupModel.coded_bits, calibrated to the coder) against
    its target: a PI controller on log(lambda). With Adam the bits keep moving at a given lambda until they settle,
    so an integral term alone swings past the target; the proportional term damps it. The integral's gain follows
    the fit's learning-rate schedule (the bits can only move as fast as the latents), so it does not wind up while
    the schedule anneals; its value is the lambda that held the bits, which the next group's start is predicted
    from. Kept on the device (no host sync)."""

    def __init__(self, lam: float, target_bits: float, calib: float,
                 schedule: tuple[int | None, float | None, float], device):
        self.log_i = torch.tensor(math.log(lam), device=device)
        self.target = max(target_bits, 1.0) / calib
        (self.steps, self.seconds, self.warmup), self.step, self.start = schedule, 0, None
        self.first: torch.Tensor | None = None
        self.bounds = math.log(LAMBDA_RANGE[0]), math.log(LAMBDA_RANGE[1])

    def progress(self) -> float:
        """The fit's progress as codec.fit measures it (steps and/or time), for the schedule factor."""
        if self.start is None:
            self.start = time.perf_counter()
        p = self.step / self.steps if self.steps else 0.0       # one step per epoch: a group is one batch
        return max(p, (time.perf_counter() - self.start) / self.seconds if self.seconds else 0.0)

    def __call__(self, bits: torch.Tensor) -> torch.Tensor:
        p = self.progress()
        rate = warmup_cosine(p, 1.0, self.warmup)
        self.step += 1
        with torch.no_grad():
            bits = bits.detach().clamp_min(1.0)
            if self.first is None:
                self.first = bits.clone()
            # from above, the reference moves from the starting bits to the target over the first SERVO_RAMP
            # of the fit: lambda rises only as fast as the bits can follow
            ref = self.target + (self.first - self.target).clamp_min(0.0) * max(0.0, 1.0 - p / SERVO_RAMP)
            err = torch.log(bits) - torch.log(ref.clamp_min(1.0))
            self.log_i.add_(SERVO_KI * rate * err).clamp_(*self.bounds)
            return (self.log_i + SERVO_KP * err).clamp(*self.bounds).exp()

    @property
    def value(self) -> float:
        return float(self.log_i.exp())


# ---------------------------------------------------------------------------------------------------------------
# the codec


def make_writer(cfg: NirvanaConfig, fps: Fraction, steps: np.ndarray, groups: list[bytes], clip=None) -> Writer:
    """The file (`clip`: the source, whose fields the header records: codec.base.source_fields)."""
    w = Writer(NirvanaCodec.name, VERSION, video_header(cfg.width, cfg.height, cfg.frames, fps, clip))
    w.add_section("config", json.dumps({"model": cfg.to_dict()}, separators=(",", ":")).encode())
    sw = ByteWriter()
    sw.array(np.asarray(steps, np.float32))
    w.add_section("steps", sw.getvalue())
    for k, payload in enumerate(groups):
        w.add_section(f"group/{k}", payload)
    w.add_digests()              # a damaged group that a recomputed CRC hides is still refused
    return w


class NirvanaCodec(VideoCodec):
    name = "nirvana"
    version = VERSION
    description = "NIRVANA: per-group patch networks, autoregressive, quantisation- and rate-aware (Maiya et al. 2023)"
    sections = frozenset({"config", "steps"})          # and group/<k>, one per group (see check)
    segmentable = True
    Options = NirvanaOptions

    def known_section(self, name: str) -> bool:
        return name in self.sections or name.startswith("group/")

    # -- encode

    def encode(self, clip, options: NirvanaOptions, job: Job) -> Encoded:
        lam = float(DEFAULT_LAMBDA if options.lmbda is None else options.lmbda)
        target_bpp = options.bpp
        lr = float(options.latent_lr or DEFAULT_LR)
        size = parse_size(options.size)
        epochs, max_time = options.steps_per_group, options.max_time
        if epochs is None and max_time is None:
            epochs = DEFAULT_STEPS

        T, H, Wd = clip.num_frames, clip.height, clip.width
        device = pick_device(options.device)
        seed = options.seed
        base = NirvanaConfig(H, Wd, T, group=options.group, patch=options.patch or default_patch(H, Wd),
                             key_every=options.key_every)
        size = size if size is not None else default_size(H, Wd, options.group)
        # the file must decode within --max-memory (its own check below decodes it): refused before fitting
        limits = self.DecodeOptions(device=str(device), max_memory=options.max_memory)
        chunk = decode_chunk_groups(device)
        check_size(self.name, size, limits, lambda s: config_for_size(base, s).bounds(0, chunk))
        cfg = config_for_size(base, size)
        cfg.validate(UserError)

        gen = seed_everything(seed)
        data = frames_to_device(clip.frames, device)
        n_groups = cfg.num_groups
        weights = [FIRST_GROUP_FACTOR if k == 0 else 1 for k in range(n_groups)]
        init = init_weights(cfg, gen)
        steps = torch.tensor([float(t.abs().max()) / INIT_LEVELS for t in init]).clamp_min(1e-8)
        latents = [t / s for t, s in zip(init, steps)]
        prev_q: list[np.ndarray] | None = None
        payloads, group_bits, lams, fit_seconds, fit_psnr, fit_steps = [], [], [], 0.0, [], []
        compile_seconds = 0.0
        plan, targets = None, []
        if target_bpp is not None:
            # the budget of the group sections: all but the file's other bytes (header, config, steps, table)
            empty = make_writer(cfg, clip.fps, steps.numpy().astype(np.float32), [b""] * n_groups, clip)
            other_bits = 8 * (len(empty.to_bytes()) + 4 * n_groups)     # + the sections' longer length fields
            plan = RatePlan(cfg, target_bpp * T * H * Wd - other_bits)
        for k in range(n_groups):
            a, b = cfg.group_frames(k)
            key = cfg.is_key(k)
            ref = None if key else [torch.from_numpy(q).float().to(device) for q in prev_q]
            pixels = (b - a) * H * Wd
            group_lr = lr if k == 0 else lr / 2                   # later groups start converged
            # Laplace scales start at the symbols' mean magnitude for integers, at 1 for residuals
            rate_scales = (torch.tensor([float(t.abs().mean()) + 1.0 for t in latents]) if key
                           else torch.ones(len(latents)))
            model = GroupModel(cfg, latents, steps, rate_scales, ref, group_lr, learn_steps=(k == 0)).to(device)

            share = weights[k] / sum(weights)
            group_steps = None if epochs is None else epochs * weights[k]
            group_time = None if max_time is None else max_time * share
            warmup = 0.1 if k == 0 else 0.0
            servo = None
            if plan is not None:
                frames_k = (b - a) / cfg.group
                # a key group's cap: its starting integers coded from zero (at moderate rates it stays near them)
                cap = (8.0 * len(encode_group(GroupModel.round(latents), rate_scales.numpy())) if key
                       else math.inf)
                targets.append(plan.target(k, cap))
                lam = plan.lambda_for(key, targets[-1], frames_k)
                if key:
                    servo = LambdaServo(lam, targets[-1], plan.calib[key], (group_steps, group_time, warmup), device)

            def loss(out, target, model=model, pixels=pixels, lam=lam, servo=servo):
                if servo is None:
                    return F.mse_loss(out, target) + lam * model.rate_bits() / pixels
                return F.mse_loss(out, target) + servo(model.coded_bits()) * model.rate_bits() / pixels

            # no checkpoint: each group is a short fit of its own, and a group's file section is its result
            fcfg = FitConfig(epochs=group_steps, max_time=group_time, batch_size=b - a, lr=group_lr, warmup=warmup,
                             loss=loss, device=device, compile=False, seed=seed + k, log_every=10,
                             desc=f"nirvana group {k + 1}/{n_groups}", on_progress=job.on_progress,
                             show_bar=job.show_bar)
            res = fit(model, data[a:b], fcfg)
            fit_seconds += res.seconds
            compile_seconds += res.compile_seconds
            fit_psnr.append(res.psnr)
            fit_steps.append(res.steps)
            q = model.integers()
            symbols = q if key else [x - y for x, y in zip(q, prev_q)]
            payload = encode_group(symbols, model.rate_scales().detach().cpu().numpy())
            payloads.append(payload)
            group_bits.append(8 * len(payload))
            if plan is not None:
                lam = lam if servo is None else servo.value
                plan.record(key, lam, group_bits[-1], float(model.coded_bits()), frames_k)
            lams.append(lam)
            if k == 0:
                steps = model.steps().detach().float().cpu()      # learned in the first group, fixed after
            latents = [t.detach().cpu() for t in model.latents]
            prev_q = q
        with phase(f"{self.name} write", job.show_bar):
            writer = make_writer(cfg, clip.fps, steps.numpy().astype(np.float32), payloads, clip)
            data_bytes = writer.to_bytes()

        measured = self.measure(data_bytes, clip.frames, device, show_bar=job.show_bar,
                                max_memory=options.max_memory)
        per_frame = measured.pop("per_frame_psnr")
        group_psnr = [float(np.mean(per_frame[a:b])) for a, b in (cfg.group_frames(k) for k in range(n_groups))]
        return Encoded(writer, {
            **measured,
            "fit_seconds": round(fit_seconds, 2), "compile_seconds": round(compile_seconds, 2),
            "device": device_name(device), "params": cfg.params(), "groups": n_groups, "group": cfg.group,
            "patch": cfg.patch, "hidden": cfg.hidden, "channels": cfg.channels, "key_every": cfg.key_every,
            "lambda": lams[0] if lams else lam,
            "frames": T, "height": H, "width": Wd,
            "group_bits": group_bits, "group_psnr": [round(p, 3) for p in group_psnr],
            "group_lambda": lams, "group_fit_psnr": [round(p, 3) for p in fit_psnr], "group_steps": fit_steps,
            **({"group_target_bits": [round(t) for t in targets]} if plan is not None else {}),
        })

    # -- decode

    def bounds(self, reader: Reader, options) -> Bounds:
        return read_config(reader).bounds(reader.file_size, decode_chunk_groups(pick_device(options.device)))

    def load(self, reader: Reader, options) -> LoadedFile:
        return LoadedFile(reader, pick_device(options.device))

    def render(self, decoded: LoadedFile, start: int, stop: int, batch_size: int | None) -> Iterator[torch.Tensor]:
        """Frames start..stop, group by group; the groups run in chunks of decode_chunk_groups (not batch_size:
        the chunk is fixed per device so that any range decodes to the full decode's frames)."""
        cfg = decoded.cfg
        groups = list(range(start // cfg.group, (stop - 1) // cfg.group + 1))
        q = decoded.integers(groups)
        chunk = decode_chunk_groups(decoded.device)
        for c0 in range(0, len(groups), chunk):
            part = groups[c0:c0 + chunk]
            ws = [dequantize(q[g], decoded.steps) for g in part]
            ws += [ws[-1]] * (chunk - len(part))             # always the same batch shape (see above)
            stacked = [torch.stack(t).to(decoded.device) for t in zip(*ws)]
            frames = run_network(cfg, stacked, decoded.coords)[: len(part)]
            for j, g in enumerate(part):
                a, b = cfg.group_frames(g)
                yield frames[j, max(a, start) - a: min(b, stop) - a]

    def save(self, decoded, output: str | None, options) -> dict[str, Any]:
        summary = super().save(decoded, output, options)
        if isinstance(decoded, LoadedFile):          # a --segment file's parts are opened and dropped one by one
            summary["groups_read"] = sorted(set(decoded.sections_read))
        return summary

    def info(self, reader: Reader, options=None) -> dict[str, Any]:
        options = self.DecodeOptions(device="cpu", max_memory=getattr(options, "max_memory", None))
        try:
            self.check(reader)
            self.check_bounds(reader, options, decode=False)
            loaded = self.load(reader, options)
        except BitstreamError as e:
            return {"model": f"unreadable ({e})"}
        c = loaded.cfg
        return {"model": "nirvana", "groups": c.num_groups, "group": c.group, "patch": c.patch,
                "hidden": c.hidden, "channels": c.channels, "layers": c.layers, "params_per_group": c.params(),
                "key_every": c.key_every, "bpp": reader.file_size * 8 / (c.frames * c.height * c.width)}
