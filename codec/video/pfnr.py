"""PFNR (Kang et al., ICLR 2024): a library of videos in one network, one session per video, appendable.

One NeRV-like supernet (input PE(t) || PE(session), MLP stem, five upsampling blocks, the first a Fourier block)
holds every video. Session k uses a binary mask M_k over the supernet's weights chosen by learned scores (the top
`density` share of |score| in each tensor, straight-through gradient to the scores). Weights that an earlier session
used are frozen at their quantised, stored values; session k may reuse them and trains only free ones. Each session
has its own 1x1 RGB head. Session k's output depends only on sessions 1..k, so appending never changes it.

File layout (codec "pfnr", version 1):
  header      kind=video, width, height, frames (all videos together), fps of video 1, pix_fmt=rgb24, videos=N
  config      JSON, written once: {"model": PFNRConfig, "density", "weight_bits", "recipe"}; never rewritten
  sK/meta     video K's frame count, frame rate and source name
  sK/mask     M_K per supernet tensor, coded given U_{K-1} (the union of earlier masks): the positions earlier
              sessions used and the free ones are two adaptive binary Categoricals, range-coded
  sK/weights  per tensor, the values of the weights K added (M_K and not U_{K-1}), quantised per tensor and coded
              with the shared quantiser/coder (codec.quant)
  sK/head     video K's head, quantised and coded as a state dict (codec.video.weights)
Deviations from the paper, and why, are in docs/PFNR.md.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.utils.parametrize as parametrize

from bitstream import coder
from bitstream.atomic import write_atomic
from bitstream.container import MAX_COUNT, Reader, Writer
from bitstream.errors import BitstreamError
from bitstream.serial import ByteReader, ByteWriter, read_json
from codec.base import (Bounds, DecodedVideo, Encoded, Job, VideoCodec, check_size, header_source, phase, read_clips,
                        source_fields, video_header)
from codec.device import device_name, pick_device, precision_label, seed_everything
from codec.errors import UserError
from codec.fit import FitConfig, fit
from codec.quant import QuantizedTensor, quantize
from codec.video import weights as W
from codec.video.inr_codec import decode_batch_size
from codec.video.layers import (OutputHead, PositionalEncoding, UpBlock, UpsamplingConfig, halving_widths, activation,
                                choose_geometry, meta_count, parse_size, solve_width)
from codec.video.options import PFNRDecodeOptions, PFNROptions

VERSION = 1
MAX_SESSIONS = 255
SESSION_SCALE = 256.0            # session k is fed as PE(k / 256): fixed, so a later append changes no earlier input
DEFAULT_DENSITY = 0.3            # the PFNR scripts' 0.3
DEFAULT_EPOCHS = 150             # PFNR's per-session schedule
DEFAULT_LR = 5e-4                # PFNR's (NeRV's) Adam(0.5, 0.999) learning rate
DEFAULT_BPP = 0.1                # sizes the supernet when --size is not given (see default_size)
MIN_SIZE, MAX_DEFAULT_SIZE = 20_000, 3_000_000
MAX_CONFIG_BYTES = 1 << 16
MAX_NAME = 255
SECTION_RE = re.compile(r"s([1-9][0-9]{0,2})/(meta|mask|weights|head)")
KINDS = ("meta", "mask", "weights", "head")


# ---------------------------------------------------------------------------------------------------------------
# the model


@dataclass
class PFNRConfig(UpsamplingConfig):
    """The supernet's shape (stored in the config section)."""
    label = "PFNR"
    height: int
    width: int
    strides: tuple[int, ...]
    grid_h: int
    grid_w: int
    fc_dim: int
    stem_hidden: int = 512
    pe_base: float = 1.25
    pe_levels: int = 40
    kernel: int = 3
    reduce: int = 2
    lower_width: int = 12
    fourier_block: int = 0         # index of the block that is a Fourier block
    modes_h: int = 2               # kept low frequencies: rows 0..modes_h-1 and the last modes_h (negative) rows
    modes_w: int = 3               # columns 0..modes_w-1 of the real FFT
    act: str = "silu"

    def widths(self) -> list[int]:
        return halving_widths(self.fc_dim, len(self.strides), self.reduce, self.lower_width)

    def frame_activations(self) -> int:
        """Peak activation values of one frame: the stem, then per block its input and spectrum (the Fourier
        block) and the conv or spectrum, shuffle or inverse FFT and activation outputs; plus the Fourier block's
        complex weights and their products, built on every call."""
        c_in, c_out = [self.fc_dim, *self.widths()][self.fourier_block: self.fourier_block + 2]
        spectral = 6 * 2 * c_in * c_out * self.modes_h * self.modes_w
        return spectral + self.peak_activations(2 * self.fc_dim * self.grid_h * self.grid_w,
                                                lambda c_in, c, a_in, a_out: 2 * c_in * a_in + 3 * c * a_out)

    def block_input_size(self, i: int) -> tuple[int, int]:
        f = math.prod(self.strides[:i])
        return self.grid_h * f, self.grid_w * f

    def validate(self) -> None:
        ints = [self.height, self.width, self.grid_h, self.grid_w, self.fc_dim, self.stem_hidden, self.pe_levels,
                self.kernel, self.reduce, self.lower_width, self.modes_h, self.modes_w]
        ok = (all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1 << 16 for v in ints)
              and 0 < len(self.strides) <= 8 and all(0 < s <= 8 for s in self.strides)
              and isinstance(self.fourier_block, int) and 0 <= self.fourier_block < len(self.strides)
              and self.kernel % 2 == 1 and self.pe_levels <= 128 and self.stem_hidden <= 4096
              and isinstance(self.pe_base, (int, float)) and 1.0 < self.pe_base <= 4.0
              and self.act in ("gelu", "silu", "relu") and self.fc_dim <= 4096
              and self.grid_h * self.grid_w * self.fc_dim <= 1 << 22
              and self.padding_ok())
        if ok:
            h, w = self.block_input_size(self.fourier_block)
            ok = 2 * self.modes_h <= h and self.modes_w <= w // 2 + 1
        if not ok:
            raise BitstreamError("config section: PFNR config out of range")


class FourierUpBlock(nn.Module):
    """PFNR's Fourier stage: rFFT2 of the input, the lowest modes_h x modes_w frequencies (both signs of the vertical
    one) multiplied by learned complex weights [C_out, C_in], inverse rFFT2 at `stride` x the size (upsampling by
    zero-padding the spectrum), then the activation. Real and imaginary parts are separate tensors, so each gets its
    own session mask, as in the paper."""

    def __init__(self, c_in: int, c_out: int, stride: int, modes_h: int, modes_w: int, act: str):
        super().__init__()
        self.stride, self.modes_h, self.modes_w = stride, modes_h, modes_w
        bound = 1.0 / math.sqrt(c_in)
        shape = (c_out, c_in, 2, modes_h, modes_w)   # axis 2: the positive and the negative vertical frequencies
        self.weight_re = nn.Parameter(torch.empty(shape).uniform_(-bound, bound))
        self.weight_im = nn.Parameter(torch.empty(shape).uniform_(-bound, bound))
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        mh, mw, s = self.modes_h, self.modes_w, self.stride
        # "forward" normalisation on both transforms keeps amplitudes when the output grid is larger
        spec = torch.fft.rfft2(x.float(), norm="forward")
        weight = torch.complex(self.weight_re.float(), self.weight_im.float())
        out = spec.new_zeros(b, weight.shape[0], h * s, (w * s) // 2 + 1)
        out[:, :, :mh, :mw] = torch.einsum("bihw,oihw->bohw", spec[:, :, :mh, :mw], weight[:, :, 0])
        out[:, :, -mh:, :mw] = torch.einsum("bihw,oihw->bohw", spec[:, :, h - mh:, :mw], weight[:, :, 1])
        y = torch.fft.irfft2(out, s=(h * s, w * s), norm="forward")
        return self.act(y.to(x.dtype))


class PFNRBody(nn.Module):
    """Everything the sessions share (all of it masked per session): stem and blocks."""

    def __init__(self, cfg: PFNRConfig):
        super().__init__()
        self.cfg = cfg
        pe_dim = 2 * cfg.pe_levels
        self.stem = nn.Sequential(
            nn.Linear(2 * pe_dim, cfg.stem_hidden), activation(cfg.act),
            nn.Linear(cfg.stem_hidden, cfg.fc_dim * cfg.grid_h * cfg.grid_w), activation(cfg.act))
        blocks, c_in = [], cfg.fc_dim
        for i, (c_out, s) in enumerate(zip(cfg.widths(), cfg.strides)):
            if i == cfg.fourier_block:
                blocks.append(FourierUpBlock(c_in, c_out, s, cfg.modes_h, cfg.modes_w, cfg.act))
            else:
                blocks.append(UpBlock(c_in, c_out, cfg.kernel, s, cfg.act))
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        x = self.stem(code).view(-1, self.cfg.fc_dim, self.cfg.grid_h, self.cfg.grid_w)
        for block in self.blocks:
            x = block(x)
        return x


class PFNR(nn.Module):
    """One session's network: model(idx, frames=None) -> frames [B, 3, height, width] of video `session`."""

    def __init__(self, cfg: PFNRConfig, session: int, frames: int):
        super().__init__()
        self.cfg, self.session, self.frames = cfg, session, frames
        self.pe = PositionalEncoding(cfg.pe_base, cfg.pe_levels)
        self.body = PFNRBody(cfg)
        self.head = OutputHead(cfg.widths()[-1], 1)

    def forward(self, idx: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        t = idx.float() / self.frames                       # t = i / T, as NeRV
        s = torch.full_like(t, self.session / SESSION_SCALE)
        x = self.body(torch.cat([self.pe(t), self.pe(s)], dim=1))
        return self.head(x)[:, :, : self.cfg.height, : self.cfg.width]


def layout(cfg: PFNRConfig) -> list[tuple[str, torch.Size]]:
    """The masked tensors, in the order the mask and weights sections store them."""
    with torch.device("meta"):
        body = PFNRBody(cfg)
    return [(n, p.shape) for n, p in body.named_parameters()]


def body_params(cfg: PFNRConfig) -> int:
    return sum(int(np.prod(s)) for _, s in layout(cfg))


def default_stem_hidden(size: float) -> int:
    """NeRV's 512, scaled down for small supernets so the stem's first layer stays about 5% of the size."""
    return int(min(512, max(16, round(0.05 * size / 160))))


def pfnr_config(height: int, width: int, size: float) -> PFNRConfig:
    """The supernet of about `size` parameters (stem and blocks, the per-video heads not counted).

    Strides as NeRV's (choose_geometry, start grid >= 4 a side); the Fourier block is block 0 and keeps every
    frequency of the start grid (modes = the grid's own spectrum); fc_dim is solved for the count."""
    geo = choose_geometry(height, width, n_blocks=5, min_side=4)
    hidden = default_stem_hidden(size)
    base = PFNRConfig(height, width, geo.strides, geo.grid_h, geo.grid_w, fc_dim=1, stem_hidden=hidden,
                      modes_h=max(1, geo.grid_h // 2), modes_w=geo.grid_w // 2 + 1)

    def count(fc: int) -> int:
        return meta_count(lambda: PFNRBody(replace(base, fc_dim=fc)))

    if count(1) > size:
        raise UserError(f"--size {size:.0f} is below the smallest PFNR supernet for {width}x{height} "
                        f"({count(1)} parameters)")
    fc = solve_width(count, size, math.sqrt(size / 100), "PFNR supernet")
    cfg = replace(base, fc_dim=fc)
    cfg.validate()
    return cfg


def default_size(pixels: float, density: float, weight_bits: int) -> float:
    """A supernet whose first session stores about DEFAULT_BPP bits per pixel of weights (masks not counted)."""
    return float(min(MAX_DEFAULT_SIZE, max(MIN_SIZE, DEFAULT_BPP * pixels / (weight_bits * density))))


# ---------------------------------------------------------------------------------------------------------------
# session masks while fitting (WSN): top-k of |scores| with a straight-through gradient


class _TopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor, k: int) -> torch.Tensor:
        flat = scores.reshape(-1)
        mask = torch.zeros_like(flat)
        mask[torch.topk(flat, k, sorted=False).indices] = 1.0
        return mask.view_as(scores)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def keep_count(numel: int, density: float) -> int:
    return max(1, min(numel, int(round(density * numel))))


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    return _TopK.apply(scores.abs(), k)


class SessionWeight(nn.Module):
    """Parametrization of one supernet tensor for the session being fitted:
    weight = top-k(|scores|) * (earlier sessions' stored value where they used it, else the free latent weight).
    Frozen positions get no gradient (torch.where), so only free weights and the scores learn."""

    def __init__(self, frozen: torch.Tensor, used: torch.Tensor, density: float):
        super().__init__()
        self.register_buffer("frozen", frozen.clone())
        self.register_buffer("used", used.clone())
        self.k = keep_count(frozen.numel(), density)
        fan_in = frozen[0].numel() if frozen.ndim >= 2 else frozen.numel()
        bound = 1.0 / math.sqrt(max(fan_in, 1))
        self.scores = nn.Parameter(torch.empty_like(frozen).uniform_(-bound, bound))

    def mask(self) -> torch.Tensor:
        return topk_mask(self.scores, self.k)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.mask() * torch.where(self.used, self.frozen, w)


# ---------------------------------------------------------------------------------------------------------------
# the library: config, the decoded state of sessions 1..K, and their sections


@dataclass
class SessionMeta:
    frames: int
    fps: Fraction
    name: str

    def to_bytes(self) -> bytes:
        w = ByteWriter()
        w.varint(self.frames)
        w.varint(self.fps.numerator)
        w.varint(self.fps.denominator)
        w.str_(self.name)
        return w.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, what: str) -> "SessionMeta":
        r = ByteReader(data, what=what)
        frames = r.varint(MAX_COUNT)
        num, den = r.varint(2**31 - 1), r.varint(2**31 - 1)
        name = r.str_(4 * MAX_NAME)
        r.expect_end()
        if frames < 1 or num < 1 or den < 1:
            raise BitstreamError(f"{what}: frame count and frame rate must be positive")
        return cls(frames, Fraction(num, den), name)


@dataclass
class Library:
    """A PFNR library in memory: what the decoder knows after reading sessions 1..len(sessions)."""
    cfg: PFNRConfig
    density: float
    weight_bits: int
    recipe: dict
    config_payload: bytes
    values: dict[str, torch.Tensor]                      # every stored weight (float32, CPU), 0 where unused
    used: dict[str, torch.Tensor]                        # U_K: positions some session used
    metas: list[SessionMeta] = field(default_factory=list)
    masks: list[dict[str, torch.Tensor]] = field(default_factory=list)
    payloads: list[dict[str, bytes]] = field(default_factory=list)
    added: list[int] = field(default_factory=list)      # weights each session added to the supernet
    source: dict = field(default_factory=dict)           # the header's source fields all its videos share

    @classmethod
    def create(cls, cfg: PFNRConfig, density: float, weight_bits: int, recipe: dict) -> "Library":
        conf = {"model": cfg.to_dict(), "density": density, "weight_bits": weight_bits, "recipe": recipe}
        return cls._from_config(json.dumps(conf, separators=(",", ":")).encode())

    @classmethod
    def _from_config(cls, payload: bytes) -> "Library":
        cfg, density, bits, recipe = parse_config(payload)
        lay = layout(cfg)
        values = {n: torch.zeros(s) for n, s in lay}
        used = {n: torch.zeros(s, dtype=torch.bool) for n, s in lay}
        return cls(cfg, density, bits, recipe, payload, values, used)

    @classmethod
    def read(cls, reader: Reader, upto: int | None = None) -> "Library":
        """The library as the decoder sees it after sessions 1..upto (all by default), from a checked file."""
        lib = cls._from_config(reader.payload("config"))
        n = reader.header["videos"]
        if (lib.cfg.height, lib.cfg.width) != (reader.header["height"], reader.header["width"]):
            raise BitstreamError("header and config section disagree on the frame size")
        for k in range(1, (n if upto is None else upto) + 1):
            lib.add({kind: reader.payload(f"s{k}/{kind}") for kind in KINDS})
        lib.source = source_fields([], reader.header)
        return lib

    @property
    def num_videos(self) -> int:
        return len(self.metas)

    def add(self, payloads: dict[str, bytes]) -> None:
        """Decode one session's sections and fold them into the state (the one path encoder and decoder share)."""
        k = self.num_videos + 1
        meta = SessionMeta.from_bytes(payloads["meta"], f"section 's{k}/meta'")
        mask = decode_masks(payloads["mask"], self.used, self.density, f"section 's{k}/mask'")
        new = {n: mask[n] & ~self.used[n] for n in mask}
        added = decode_new_weights(payloads["weights"], new, f"section 's{k}/weights'")
        for n in self.values:
            self.values[n].view(-1)[new[n].view(-1)] = added[n]
            self.used[n] |= mask[n]
        self.metas.append(meta)
        self.added.append(sum(int(v.sum()) for v in new.values()))
        self.masks.append(mask)
        self.payloads.append(dict(payloads))

    def session_model(self, k: int, device: torch.device) -> PFNR:
        """Video k's network, rebuilt from the decoded sections (its head is parsed here)."""
        meta = self.metas[k - 1]
        model = PFNR(self.cfg, k, meta.frames)
        expected = {n: v.shape for n, v in model.head.state_dict().items()}
        head = W.decode_state(self.payloads[k - 1]["head"], expected)
        state = {f"body.{n}": self.masks[k - 1][n] * self.values[n] for n in self.values}
        state.update({f"head.{n}": v for n, v in head.items()})
        model.load_state_dict(state, strict=True)
        return model.to(device).eval()

    def session_bytes(self, k: int) -> int:
        return sum(len(p) for p in self.payloads[k - 1].values())

    def writer(self) -> Writer:
        """The whole library as a file (the header's frame rate is video 1's)."""
        header = video_header(self.cfg.width, self.cfg.height, sum(m.frames for m in self.metas), self.metas[0].fps,
                              videos=self.num_videos, **self.source)
        writer = Writer(PFNRCodec.name, VERSION, header)
        writer.add_section("config", self.config_payload)
        for k, payloads in enumerate(self.payloads, 1):
            for kind in KINDS:
                writer.add_section(f"s{k}/{kind}", payloads[kind])
        writer.add_digests()         # damage that a recomputed CRC hides is still refused
        return writer


def parse_config(payload: bytes) -> tuple[PFNRConfig, float, int, dict]:
    """(supernet config, density, weight bits, recipe) of a config section, checked; nothing allocated."""
    conf = read_json(payload, "config section", MAX_CONFIG_BYTES)
    try:
        model, density, bits, recipe = conf["model"], conf["density"], conf["weight_bits"], conf["recipe"]
    except (KeyError, TypeError):
        raise BitstreamError("config section is not a valid PFNR config") from None
    if not (isinstance(model, dict) and isinstance(recipe, dict) and isinstance(density, float)
            and 0 < density <= 1 and isinstance(bits, int) and 2 <= bits <= 16):
        raise BitstreamError("config section is not a valid PFNR config")
    return PFNRConfig.from_dict(model), density, bits, recipe


def library_bounds(cfg: PFNRConfig, videos: int, video: int, batch: int, file_bytes: int = 0) -> Bounds:
    """What opening a library of `videos` videos (ncodec info folds in every session) and decoding video `video`
    cost, from the config alone: per supernet weight its stored value (float32), the union of masks and each
    session's mask (bytes), a session's decoding buffers (its mask, new weights and their float copies), and the
    video's network (module and state, float32); plus a decode batch of activations."""
    p = body_params(cfg)
    open_bytes = file_bytes + p * (5 + videos + 6)
    decode_bytes = file_bytes + p * (5 + video + 6 + 8)
    return Bounds(p, open_bytes, decode_bytes, batch * 4 * cfg.frame_activations())


# -- masks and new weights <-> bytes


def encode_masks(masks: dict[str, torch.Tensor], used: dict[str, torch.Tensor]) -> bytes:
    """Per tensor, M_k at the positions earlier sessions used, then at the free ones: two adaptive binary models."""
    w = ByteWriter()
    for name, u in used.items():
        m, u = masks[name].reshape(-1).cpu(), u.reshape(-1)
        for group in (m[u], m[~u]):
            if group.numel() == 0:
                continue
            s = group.numpy().astype(np.int32)
            model = coder.Categorical.fit(s)
            w.bytes_(model.to_bytes())
            w.bytes_(coder.encode(s, model))
    return w.getvalue()


def decode_masks(data: bytes, used: dict[str, torch.Tensor], density: float, what: str) -> dict[str, torch.Tensor]:
    r = ByteReader(data, what=what)
    out = {}
    for name, u in used.items():
        flat_u = u.reshape(-1)
        m = torch.zeros(flat_u.numel(), dtype=torch.bool)
        for sel in (flat_u, ~flat_u):
            n = int(sel.sum())
            if n == 0:
                continue
            model = coder.Categorical.from_bytes(r.bytes_(1 << 16))
            if model.min_symbol < 0 or model.max_symbol > 1:
                raise BitstreamError(f"{what}: tensor {name} has a bad mask model")
            m[sel] = torch.from_numpy(coder.decode(r.bytes_(n + 64), model, n).astype(bool))
        if int(m.sum()) != keep_count(m.numel(), density):
            raise BitstreamError(f"{what}: tensor {name} keeps {int(m.sum())} weights, the density says "
                                 f"{keep_count(m.numel(), density)}")
        out[name] = m.view(u.shape)
    r.expect_end()
    return out


def encode_new_weights(latent: dict[str, torch.Tensor], new: dict[str, torch.Tensor], bits: int) -> bytes:
    """The values of the weights this session added, one tensor each, quantised per tensor (shared quantiser)."""
    w = ByteWriter()
    for name, sel in new.items():
        values = latent[name].detach().float().cpu().reshape(-1)[sel.reshape(-1).cpu()]
        w.bytes_(quantize(values, bits=bits, axis=None).to_bytes())
    return w.getvalue()


def decode_new_weights(data: bytes, new: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    r = ByteReader(data, what=what)
    out = {}
    for name, sel in new.items():
        n = int(sel.sum())
        item = ByteReader(r.bytes_(), what=f"{what}, tensor {name}")
        qt = QuantizedTensor.from_bytes(item, max_elements=n)
        item.expect_end()
        if qt.shape != (n,):
            raise BitstreamError(f"{what}: tensor {name} stores {qt.shape} values, its mask adds {n}")
        out[name] = qt.dequantize(device="cpu")
    r.expect_end()
    return out


# ---------------------------------------------------------------------------------------------------------------
# fitting one session


def fit_session(lib: Library, frames: np.ndarray, name: str, fps: Fraction, device: torch.device, seed: int,
                epochs: int | None, max_time: float | None, job: Job) -> dict[str, Any]:
    """Fit video number len(lib)+1 against the library's stored weights and add its sections to `lib`."""
    k = lib.num_videos + 1
    if k > MAX_SESSIONS:
        raise UserError(f"a pfnr library holds at most {MAX_SESSIONS} videos")
    seed_everything(seed * 1009 + k)     # fresh free weights and scores per session, reproducible
    model = PFNR(lib.cfg, k, frames.shape[0])
    for tensor, _ in layout(lib.cfg):
        owner_name, _, attr = f"body.{tensor}".rpartition(".")
        parametrize.register_parametrization(model.get_submodule(owner_name), attr,
                                             SessionWeight(lib.values[tensor], lib.used[tensor], lib.density))
    r = lib.recipe
    cfg = FitConfig(epochs=epochs, max_time=max_time, batch_size=int(r["batch_size"]), lr=float(r["lr"]),
                    betas=tuple(r["betas"]), warmup=float(r["warmup"]), loss=str(r["loss"]), device=device,
                    seed=seed + k, compile=False, desc=f"pfnr video {k}", on_progress=job.on_progress,
                    show_bar=job.show_bar)
    result = fit(model, frames, cfg)

    with phase(f"pfnr video {k}: quantise and code", job.show_bar):
        latent, masks = {}, {}
        with torch.no_grad():
            for tensor, _ in layout(lib.cfg):
                owner = model.get_submodule(f"body.{tensor}".rpartition(".")[0])
                param = owner.parametrizations[tensor.rpartition(".")[2]]
                latent[tensor] = param.original.detach().cpu()
                masks[tensor] = param[0].mask().detach().cpu().bool()
        new = {n: masks[n] & ~lib.used[n] for n in masks}
        head_payload, _ = W.encode_state({n: v.detach().cpu() for n, v in model.head.state_dict().items()},
                                         lib.weight_bits)
        meta = SessionMeta(int(frames.shape[0]), fps, name[-MAX_NAME:])
        payloads = {"meta": meta.to_bytes(), "mask": encode_masks(masks, lib.used),
                    "weights": encode_new_weights(latent, new, lib.weight_bits), "head": head_payload}
        added = sum(int(v.sum()) for v in new.values())
        reused = sum(int((masks[n] & lib.used[n]).sum()) for n in masks)
        lib.add(payloads)
    return {"fit_seconds": round(result.seconds, 2), "epochs": round(result.epochs, 2), "steps": result.steps,
            "stopped_by": result.stopped_by, "psnr_fit": result.psnr, "new_weights": added,
            "reused_weights": reused}


# ---------------------------------------------------------------------------------------------------------------
# decoding


class LibraryVideo(DecodedVideo):
    """One video of a library, opened: its network, rebuilt from sessions 1..video."""

    def __init__(self, lib: Library, video: int, device: torch.device):
        meta = lib.metas[video - 1]
        self.video, self.name = video, meta.name
        self.model = lib.session_model(video, device)
        self.width, self.height, self.num_frames, self.fps = lib.cfg.width, lib.cfg.height, meta.frames, meta.fps
        self.device = device


# ---------------------------------------------------------------------------------------------------------------
# the codec


def _read_or_none(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _check_size(clips: list, size: tuple[int, int]) -> None:
    for c in clips:
        if (c.height, c.width) != size:
            raise UserError(f"{c.source} is {c.width}x{c.height} but the library holds {size[1]}x{size[0]} frames: "
                            f"scale or crop every video to one size first (see docs/PFNR.md)")


class PFNRCodec(VideoCodec):
    name = "pfnr"
    version = VERSION
    description = "PFNR: a library of videos in one masked network, appendable (Kang et al. 2024)"
    sections = frozenset({"config"})        # and sK/meta, sK/mask, sK/weights, sK/head per video (see check)
    many_inputs = True                      # several inputs are one library, not a batch of separate files
    Options = PFNROptions
    DecodeOptions = PFNRDecodeOptions

    def known_section(self, name: str) -> bool:
        return name in self.sections or SECTION_RE.fullmatch(name) is not None

    def check(self, reader: Reader) -> None:
        super().check(reader)
        n = reader.header.get("videos")
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_SESSIONS:
            raise BitstreamError(f"header: a pfnr library needs videos in 1..{MAX_SESSIONS}")

    # -- encode and append

    def read(self, source: Any, options: PFNROptions) -> list:
        """The library's videos (a path, a list of paths or one array), all of one frame size."""
        clips = read_clips(source, options)
        if len(clips) > MAX_SESSIONS:
            raise UserError(f"a pfnr library holds at most {MAX_SESSIONS} videos")
        _check_size(clips, (clips[0].height, clips[0].width))
        return clips

    def encode(self, clips: list, options: PFNROptions, job: Job) -> Encoded:
        density, bits = options.density, options.weight_bits
        size = parse_size(options.size)
        h, w = clips[0].height, clips[0].width
        if size is None:
            size = default_size(np.mean([c.num_frames for c in clips]) * h * w, density, bits)
        recipe = {"lr": float(options.lr or DEFAULT_LR), "betas": [0.5, 0.999], "warmup": 0.2, "loss": "l1_ssim",
                  "batch_size": options.batch_size}
        # the library must decode within --max-memory (its own check below decodes it): refused before fitting
        device = pick_device(options.device)
        limits = self.DecodeOptions(device=str(device), max_memory=options.max_memory)
        batch = decode_batch_size(device)
        check_size(self.name, size, limits, lambda s: library_bounds(pfnr_config(h, w, s), len(clips), len(clips),
                                                                    batch))
        lib = Library.create(pfnr_config(h, w, size), density, bits, recipe)
        return self._add(lib, clips, options, job)

    def append(self, path: str, inputs: list[str], options: PFNROptions, job: Job | None = None) -> dict[str, Any]:
        """Fit `inputs` as the library's next videos and replace the file with the longer library. The library's
        own settings (size, density, weight bits, learning rate, batch size) hold: `options` gives the rest."""
        if not inputs:
            raise UserError("append needs at least one video")
        with open(path, "rb") as f:
            before = f.read()
        reader = Reader.from_bytes(before)
        if reader.codec != self.name:
            raise UserError(f"{path} is a {reader.codec!r} file: only pfnr libraries can be appended to")
        self.check(reader)
        self.check_bounds(reader, self.DecodeOptions(device="cpu", max_memory=options.max_memory), decode=False)
        try:
            lib = Library.read(reader)
        except BitstreamError as e:
            raise BitstreamError(f"{path}: cannot append to a damaged library ({e})") from None
        clips = read_clips(inputs, options)
        if lib.num_videos + len(clips) > MAX_SESSIONS:
            raise UserError(f"a pfnr library holds at most {MAX_SESSIONS} videos")
        _check_size(clips, (lib.cfg.height, lib.cfg.width))
        encoded = self._add(lib, clips, options, job or Job())
        data = encoded.writer.to_bytes()
        if _read_or_none(path) != before:
            raise UserError(f"{path} changed while this append was fitting (another append?): nothing written")
        write_atomic(path, data)          # a library being appended to is replaced whole, or not at all
        return {"file": str(path), **encoded.summary}

    def _add(self, lib: Library, clips: list, options: PFNROptions, job: Job) -> Encoded:
        """Fit each clip as the library's next video, then measure each one from the new file's bytes alone."""
        device = pick_device(options.device)
        epochs, max_time = options.epochs, options.max_time
        if epochs is None and max_time is None:
            epochs = DEFAULT_EPOCHS
        per_video_time = None if max_time is None else max_time / len(clips)
        first_new = lib.num_videos + 1
        # the header keeps what every video, the earlier ones included, says of its source (chroma, crop)
        lib.source = source_fields(clips, lib.source if lib.num_videos else None)
        fits = [fit_session(lib, c.frames, os.path.basename(str(c.source).rstrip("/")), c.fps, device, options.seed,
                            epochs, per_video_time, job) for c in clips]
        with phase(f"{self.name} write", job.show_bar):
            writer = lib.writer()
            data = writer.to_bytes()
        videos = []
        for k, (clip, f) in enumerate(zip(clips, fits), first_new):
            m = self.measure(data, clip.frames, device, show_bar=job.show_bar, video=k,
                             max_memory=options.max_memory)
            videos.append({"video": k, "name": lib.metas[k - 1].name, "frames": clip.num_frames, "psnr": m["psnr"],
                           "psnr_y": m["psnr_y"], "psnr_yuv": m["psnr_yuv"],
                           "ms_ssim": m["ms_ssim"], "bytes_added": lib.session_bytes(k),
                           "decode_fps": m["decode_fps"], "sha256": m["sha256"], **f})
        h, w = lib.cfg.height, lib.cfg.width
        total_frames = sum(m.frames for m in lib.metas)
        summary: dict[str, Any] = {
            "bytes": len(data), "videos_in_library": lib.num_videos,
            "bpp": len(data) * 8 / (total_frames * h * w), "psnr": float(np.mean([v["psnr"] for v in videos])),
            "psnr_holds_for": precision_label(device, self.decode_dtype(device)),
            "fit_seconds": round(sum(f["fit_seconds"] for f in fits), 2), "device": device_name(device),
            "supernet_params": body_params(lib.cfg), "density": lib.density, "weight_bits": lib.weight_bits,
            "height": h, "width": w,
            "videos": videos,          # one row per video fitted now (the CLI prints it as a table)
        }
        return Encoded(writer, summary)

    # -- decode and info

    def bounds(self, reader: Reader, options) -> Bounds:
        cfg = parse_config(reader.payload("config"))[0]
        n = reader.header["videos"]
        video = getattr(options, "video", None) or 1
        batch = getattr(options, "batch_size", None) or decode_batch_size(pick_device(options.device))
        return library_bounds(cfg, n, min(max(video, 1), n), batch, reader.file_size)

    def load(self, reader: Reader, options: PFNRDecodeOptions) -> LibraryVideo:
        n = reader.header["videos"]
        k = options.video
        if k is None:
            if n != 1:
                raise UserError(f"this library holds {n} videos: choose one with --video K (1..{n})")
            k = 1
        if not 1 <= k <= n:
            raise UserError(f"--video {k}: this library holds videos 1..{n}")
        return LibraryVideo(Library.read(reader, upto=k), k, pick_device(options.device))

    def stored(self, reader: Reader, video: int | None = None) -> dict[str, Any]:
        """Video `video` of the library for `ncodec eval`: its frames, and as its bytes those of its own sections
        (sK/*, what `ncodec info` lists as bytes_added); the config and the container are the library's, counted in
        library_bytes."""
        self.check(reader)
        n = reader.header["videos"]
        if video is None:
            if n != 1:
                raise UserError(f"this library holds {n} videos: choose one with --video K (1..{n})")
            video = 1
        if not 1 <= video <= n:
            raise UserError(f"--video {video}: this library holds videos 1..{n}")
        meta = SessionMeta.from_bytes(reader.payload(f"s{video}/meta"), f"section 's{video}/meta'")
        h = reader.header
        chroma, source_size = header_source(h)
        return {"video": video, "frames": meta.frames, "height": int(h["height"]), "width": int(h["width"]),
                "bytes": sum(reader.section(f"s{video}/{kind}").length for kind in KINDS),
                "library_bytes": reader.file_size, "library_frames": int(h["frames"]),
                "chroma": chroma, "source_size": source_size}

    def render(self, decoded: LibraryVideo, start: int, stop: int, batch_size: int | None
               ) -> Iterator[torch.Tensor]:
        bs = batch_size or decode_batch_size(decoded.device)
        for s in range(start, stop, bs):
            yield decoded.model(torch.arange(s, min(s + bs, stop), device=decoded.device))

    def save(self, decoded: LibraryVideo, output: str | None, options: PFNRDecodeOptions) -> dict[str, Any]:
        return {"video": decoded.video, "name": decoded.name, **super().save(decoded, output, options)}

    def info(self, reader: Reader, options=None) -> dict[str, Any]:
        options = self.DecodeOptions(device="cpu", max_memory=getattr(options, "max_memory", None))
        try:
            self.check(reader)
            self.check_bounds(reader, options, decode=False)
            lib = Library._from_config(reader.payload("config"))
        except BitstreamError as e:
            return {"model": f"unreadable ({e})"}
        n = reader.header["videos"]
        out: dict[str, Any] = {"model": self.name, "videos": n, "supernet_params": body_params(lib.cfg),
                               "density": lib.density, "weight_bits": lib.weight_bits,
                               "strides": ",".join(map(str, lib.cfg.strides)),
                               "widths": ",".join(map(str, lib.cfg.widths()))}
        listing, broken = [], None
        for k in range(1, n + 1):
            sections = [f"s{k}/{kind}" for kind in KINDS]
            row: dict[str, Any] = {"video": k, "name": "", "frames": "", "fps": "",
                                   "bytes_added": sum(reader.section(s).length for s in sections if reader.has(s)),
                                   "new_weights": "", "status": "ok"}
            try:        # the meta section alone still names a video whose other sections are damaged
                meta = SessionMeta.from_bytes(reader.payload(f"s{k}/meta"), f"section 's{k}/meta'")
                row.update(name=meta.name, frames=meta.frames, fps=round(float(meta.fps), 3))
                if broken is None:
                    lib.add({kind: reader.payload(f"s{k}/{kind}") for kind in KINDS})
                    row["new_weights"] = lib.added[-1]
                else:
                    row["status"] = f"not decodable: depends on video {broken}"
            except BitstreamError as e:
                broken = broken or k
                row["status"] = f"damaged ({e})"
            listing.append(row)
        out["video_list"] = listing
        return out
