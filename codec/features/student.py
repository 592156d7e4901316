"""The Entropic Student (Matsubara et al., WACV 2022): the teacher's first stages replaced by
encoder -> quantised latent with a learned factorised prior (CompressAI's EntropyBottleneck) -> decoder.

The encoder is the device half: a few strided convolutions (5x5 by default) with GDN, far cheaper than the teacher
stages it replaces. The decoder reproduces the teacher's feature at the split point; the tail (the teacher's later
stages, pool and linear) classifies from there, on the server.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from compressai.entropy_models import EntropyBottleneck
from compressai.layers import GDN, ResidualBlock

from codec.errors import UserError
from codec.features.context_prior import ALL_KEYS as CONTEXT_KEYS
from codec.features.context_prior import ContextPrior
from codec.features.teacher import STAGES, CifarResNet, stage_stride

DEFAULTS = {"split": "layer1", "latent_channels": 16, "encoder_channels": 32, "encoder_stride": 4,
            "decoder_channels": 64, "encoder_blocks": 0, "encoder_kernel": 5, "decoder_blocks": 0}
ENCODER_KERNELS = (3, 5, 7)
PRIOR_INIT_SCALE = 1.0


def make_config(teacher_config: dict[str, Any], **options) -> dict[str, Any]:
    """A student config: the teacher's architecture plus the bottleneck's shape (None options take the defaults)."""
    cfg = {"teacher": dict(teacher_config)}
    for k, v in DEFAULTS.items():
        cfg[k] = options.get(k) if options.get(k) is not None else v
    check_config(cfg)
    return cfg


def check_config(cfg: dict[str, Any]) -> None:
    if cfg["split"] not in STAGES[:-1]:
        raise UserError(f"--split {cfg['split']!r}: expected one of {', '.join(STAGES[:-1])} "
                        f"(the last stage must stay on the server)")
    stride = int(cfg["encoder_stride"])
    if stride < 1 or stride & (stride - 1) or stride > 16:
        raise UserError(f"encoder stride {stride}: expected 1, 2, 4, 8 or 16")
    if stride < stage_stride(cfg["split"]):
        raise UserError(f"encoder stride {stride} is finer than the teacher's {cfg['split']} "
                        f"(stride {stage_stride(cfg['split'])})")
    size = int(cfg["teacher"]["image_size"])
    if size % stride:
        raise UserError(f"image size {size} is not a multiple of the encoder stride {stride}")
    for k in ("latent_channels", "encoder_channels", "decoder_channels"):
        if not 1 <= int(cfg[k]) <= 1024:
            raise UserError(f"{k} = {cfg[k]}: expected 1..1024")
    for k in ("encoder_blocks", "decoder_blocks"):
        if not 0 <= int(cfg.get(k, 0)) <= 8:
            raise UserError(f"{k} = {cfg[k]}: expected 0..8")
    if int(cfg.get("encoder_kernel", 5)) not in ENCODER_KERNELS:
        raise UserError(f"encoder_kernel = {cfg['encoder_kernel']}: expected one of {ENCODER_KERNELS}")


def make_encoder(c_in: int, width: int, latent: int, stride: int, blocks: int = 0, kernel: int = 5) -> nn.Sequential:
    """Strided kernel x kernel convolutions with GDN down to 1/stride, `blocks` residual blocks (two 3x3
    convolutions each) at the latent's resolution, then a 3x3 convolution to the latent channels."""
    layers: list[nn.Module] = []
    c = c_in
    for _ in range(max(1, int(math.log2(stride)))):
        layers += [nn.Conv2d(c, width, kernel, 2 if stride > 1 else 1, kernel // 2), GDN(width)]
        c = width
    # depth where it is cheapest: at 1/stride of the image a block costs a quarter of one at the resolution above
    layers += [ResidualBlock(width, width) for _ in range(blocks)]
    layers.append(nn.Conv2d(c, latent, 3, 1, 1))
    return nn.Sequential(*layers)


def make_decoder(latent: int, width: int, c_out: int, upsample: int, blocks: int = 0) -> nn.Sequential:
    """3x3 convolution, `blocks` residual blocks at the latent's resolution, then transposed convolutions (x2 each)
    with inverse GDN, then 3x3 to the teacher's channels."""
    layers: list[nn.Module] = [nn.Conv2d(latent, width, 3, 1, 1), GDN(width, inverse=True)]
    # depth on the server, where it is free for the device: at the latent's resolution a block is cheapest
    layers += [ResidualBlock(width, width) for _ in range(blocks)]
    for _ in range(int(math.log2(upsample))):
        layers += [nn.ConvTranspose2d(width, width, 4, 2, 1), GDN(width, inverse=True)]
    layers.append(nn.Conv2d(width, c_out, 3, 1, 1))
    return nn.Sequential(*layers)


class Student(nn.Module):
    def __init__(self, config: dict[str, Any]):
        super().__init__()
        check_config(config)
        self.config = config
        tcfg = config["teacher"]
        split = config["split"]
        k = STAGES.index(split)
        stride = int(config["encoder_stride"])
        n = int(config["latent_channels"])
        self.register_buffer("mean", torch.tensor(tcfg["mean"], dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(tcfg["std"], dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        # files written before encoder_blocks, encoder_kernel and decoder_blocks existed have none of them
        self.encoder = make_encoder(int(tcfg["in_channels"]), int(config["encoder_channels"]), n, stride,
                                    int(config.get("encoder_blocks", 0)), int(config.get("encoder_kernel", 5)))
        # a narrow initial prior (CompressAI's default is 10) lets a short run reach low rates: the prior need
        # not first shrink from a width of tens of quantisation steps
        self.entropy_bottleneck = EntropyBottleneck(n, init_scale=PRIOR_INIT_SCALE)
        self.decoder = make_decoder(n, int(config["decoder_channels"]), int(tcfg["widths"][k]),
                                    stride // stage_stride(split), int(config.get("decoder_blocks", 0)))
        # the tail keeps the teacher's module names so its weights copy over by name
        shell = CifarResNet(tcfg)
        self.tail_names = list(STAGES[k + 1:])
        self.tail = nn.ModuleDict({name: getattr(shell, name) for name in self.tail_names})
        self.linear = shell.linear
        # integer tables for coding the latent in context (fitted after training; None: the factorised tables)
        self.context_prior: ContextPrior | None = None

    # ---- shapes
    @property
    def image_shape(self) -> tuple[int, int, int]:
        t = self.config["teacher"]
        return int(t["in_channels"]), int(t["image_size"]), int(t["image_size"])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c, h, w = self.image_shape
        s = int(self.config["encoder_stride"])
        return int(self.config["latent_channels"]), h // s, w // s

    @property
    def classes(self) -> list[str]:
        return list(self.config["teacher"]["classes"])

    # ---- the device half
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> the continuous latent y."""
        return self.encoder((x - self.mean) / self.std)

    def medians(self) -> torch.Tensor:
        return self.entropy_bottleneck.quantiles[:, 0, 1].detach().view(1, -1, 1, 1)

    def to_symbols(self, y: torch.Tensor) -> torch.Tensor:
        """round(y - median) per channel: CompressAI's integer symbols, which the CDF tables code."""
        return torch.round(y - self.medians()).to(torch.int32)

    def from_symbols(self, symbols: torch.Tensor) -> torch.Tensor:
        return symbols.to(self.medians().dtype) + self.medians()

    # ---- the server half
    def decode(self, y_hat: torch.Tensor) -> torch.Tensor:
        """The quantised latent -> the teacher's feature at the split point."""
        return self.decoder(y_hat)

    def tail_features(self, feat: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.tail_names:
            feat = self.tail[name](feat)
            out[name] = feat
        out["logits"] = self.linear(torch.nn.functional.adaptive_avg_pool2d(feat, 1).flatten(1))
        return out

    def classify_symbols(self, symbols: torch.Tensor) -> torch.Tensor:
        return self.tail_features(self.decode(self.from_symbols(symbols)))["logits"]

    # ---- whole model
    def forward_train(self, x: torch.Tensor, with_tail: bool = True,
                      hard: bool = False) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Stage 1: features and the latent's likelihoods under the prior (uniform noise, the bottleneck's training
        mode). hard=True decodes the rounded latent instead, with a straight-through gradient, so the decoder trains
        on what the bitstream carries; the rate is still that of the noisy latent."""
        y = self.encode(x)
        y_tilde, likelihoods = self.entropy_bottleneck(y)
        if hard:
            y_tilde = y + (self.from_symbols(self.to_symbols(y)) - y).detach()
        feat = self.decode(y_tilde)
        out = {self.config["split"]: feat}
        if with_tail:
            out.update(self.tail_features(feat))
        return out, likelihoods

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits with the latent hard-quantised exactly as the bitstream carries it."""
        return self.classify_symbols(self.to_symbols(self.encode(x)))

    # ---- entropy-coding tables
    def update_tables(self) -> None:
        """Freeze the prior into CompressAI's integer CDF tables (what both ends of the bitstream use)."""
        self.entropy_bottleneck.update(force=True)

    def tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        eb = self.entropy_bottleneck
        if eb._offset.numel() == 0:
            raise UserError("the student's entropy tables are missing (the model was not finished by training)")
        return (eb._quantized_cdf.detach().cpu().numpy().astype(np.int32),
                eb._cdf_length.detach().cpu().numpy().astype(np.int32).reshape(-1),
                eb._offset.detach().cpu().numpy().astype(np.int32).reshape(-1))

    def set_tables(self, quantized_cdf: torch.Tensor, cdf_length: torch.Tensor, offset: torch.Tensor) -> None:
        """Install stored tables whatever their size (CompressAI's buffers are variable-sized)."""
        eb = self.entropy_bottleneck
        eb._quantized_cdf = quantized_cdf.to(torch.int32).clone()
        eb._cdf_length = cdf_length.to(torch.int32).clone()
        eb._offset = offset.to(torch.int32).clone()

    def copy_tail_from(self, teacher: CifarResNet) -> None:
        for name in self.tail_names:
            self.tail[name].load_state_dict(getattr(teacher, name).state_dict())
        self.linear.load_state_dict(teacher.linear.state_dict())


TABLE_KEYS = ("entropy_bottleneck._quantized_cdf", "entropy_bottleneck._cdf_length", "entropy_bottleneck._offset")


def load_student_state(student: Student, state: dict[str, torch.Tensor]) -> None:
    """Load weights, the variable-sized CDF tables (a plain load_state_dict fails on their sizes) and the context
    prior if the file has one."""
    missing = [k for k in TABLE_KEYS if k not in state]
    if missing:
        raise UserError(f"student model lacks its entropy tables ({missing[0]})")
    student.set_tables(*(state[k] for k in TABLE_KEYS))
    if any(k in state for k in CONTEXT_KEYS):
        try:
            student.context_prior = ContextPrior.from_tensors(state, student.latent_shape[0])
        except ValueError as e:
            raise UserError(f"student model's {e}") from None
    rest = {k: v for k, v in state.items() if k not in TABLE_KEYS and k not in CONTEXT_KEYS}
    result = student.load_state_dict({**rest, **{k: getattr(student.entropy_bottleneck, k.split('.')[-1])
                                                 for k in TABLE_KEYS}}, strict=False)
    bad = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")] + list(result.unexpected_keys)
    if bad:
        raise UserError(f"student model does not match its config (e.g. {bad[0]})")
