"""Network weights and embeddings <-> bytes for the INR video codecs.

Each stored tensor goes through the shared quantiser (codec.quant: asymmetric min/max, 2^b - 1 steps, per output
channel for weights, per tensor for biases) and the shared coder (QuantizedTensor.to_bytes: an adaptive model
fitted to that tensor's own symbols, range-coded). Optional global magnitude pruning stores a coded keep-mask and
quantises only the kept values. Optional quantisation-aware fine-tuning puts the same quantiser (fake_quantize,
straight-through) into the forward pass through torch parametrizations, so the shared fit loop needs no change.

Payload of the "weights" section: varint count, then per tensor: name, flags (bit 0: pruned), and either the
QuantizedTensor bytes or (mask model, mask payload, QuantizedTensor of the kept values).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.utils.parametrize as parametrize

from bitstream import coder
from bitstream.errors import BitstreamError
from bitstream.serial import ByteReader, ByteWriter
from codec.quant import QuantizedTensor, fake_quantize, huffman_code_lengths, quantize

FLAG_PRUNED = 1
MAX_TENSORS = 4096
MAX_TENSOR_ELEMENTS = 1 << 28


PER_CHANNEL_MIN_FAN_IN = 128


def quant_axis(t: torch.Tensor) -> int | None:
    """Per output channel for matrices and conv kernels with at least 128 weights per channel, else one scale.

    A channel's float32 scale and offset cost 64 bits: over 25 weights (HNeRV's first 1x1 block on a small clip)
    that is 2.5 bits a weight, more than per-channel ranges save; from 128 weights on it is at most 0.5 bit."""
    if t.ndim < 2 or t[0].numel() < PER_CHANNEL_MIN_FAN_IN:
        return None
    return 0


def prunable(name: str, t: torch.Tensor) -> bool:
    """Weights of the stem and blocks (not biases, not the RGB head), as NeRV prunes."""
    return t.ndim >= 2 and not name.startswith("head.")


# ---------------------------------------------------------------------------------------------------------------
# encoding


@dataclass
class TensorReport:
    name: str
    numel: int
    kept: int
    bytes: int               # what this tensor costs in the file (quantiser side info, model, payload)
    symbols: np.ndarray      # the coded symbols, for the Huffman comparison
    bits: int


def encode_state(state: dict[str, torch.Tensor], bits: int = 8,
                 masks: dict[str, torch.Tensor] | None = None) -> tuple[bytes, list[TensorReport]]:
    """Quantise and code a state dict (in its order). `masks[name]` (bool, True = keep) marks pruned tensors."""
    w = ByteWriter()
    w.varint(len(state))
    reports = []
    for name, t in state.items():
        t = t.detach().float().cpu()
        mask = None if masks is None else masks.get(name)
        item = ByteWriter()
        if mask is None:
            qt = quantize(t, bits=bits, axis=quant_axis(t))
            item.u8(0)
            item.bytes_(qt.to_bytes())
            kept, symbols = t.numel(), qt.symbols
        else:
            keep = mask.detach().cpu().bool().reshape(t.shape)
            m = keep.numpy().astype(np.int32).ravel()
            model = coder.Categorical.fit(m)
            item.u8(FLAG_PRUNED)
            item.bytes_(model.to_bytes())
            item.bytes_(coder.encode(m, model))
            values = t[keep]
            if values.numel() == 0:           # everything pruned: one zero keeps the format uniform
                values = torch.zeros(1)
            qt = quantize(values, bits=bits, axis=None)
            item.bytes_(qt.to_bytes())
            kept, symbols = int(keep.sum()), qt.symbols
        w.str_(name)
        payload = item.getvalue()
        w.raw(payload)
        reports.append(TensorReport(name, t.numel(), kept, len(payload) + len(name) + 1, np.asarray(symbols), bits))
    return w.getvalue(), reports


def decode_state(data: bytes, expected: dict[str, torch.Size], device: torch.device | str = "cpu"
                 ) -> dict[str, torch.Tensor]:
    """Inverse of encode_state, checked against the tensor names and shapes the rebuilt network expects."""
    r = ByteReader(data, what="weights section")
    n = r.varint(MAX_TENSORS)
    if n != len(expected):
        raise BitstreamError(f"weights section: {n} tensors, the network has {len(expected)}")
    out: dict[str, torch.Tensor] = {}
    for _ in range(n):
        name = r.str_(256)
        if name not in expected or name in out:
            raise BitstreamError(f"weights section: unexpected tensor {name!r}")
        shape = expected[name]
        numel = int(np.prod(shape)) if len(shape) else 1
        flags = r.u8()
        if flags == 0:
            qt = QuantizedTensor.from_bytes(ByteReader(r.bytes_(), what=f"weights section, tensor {name}"))
            t = qt.dequantize(device="cpu")
            if tuple(t.shape) != tuple(shape):
                raise BitstreamError(f"weights section: tensor {name} has shape {tuple(t.shape)}, "
                                     f"expected {tuple(shape)}")
        elif flags == FLAG_PRUNED:
            model = coder.Categorical.from_bytes(r.bytes_())
            if model.min_symbol < 0 or model.max_symbol > 1:
                raise BitstreamError(f"weights section: tensor {name} has a bad mask model")
            keep = coder.decode(r.bytes_(), model, numel).astype(bool)
            qt = QuantizedTensor.from_bytes(ByteReader(r.bytes_(), what=f"weights section, tensor {name}"))
            values = qt.dequantize(device="cpu").reshape(-1)
            k = int(keep.sum())
            if values.numel() != max(k, 1):
                raise BitstreamError(f"weights section: tensor {name} keeps {k} values but stores {values.numel()}")
            t = torch.zeros(numel)
            t[torch.from_numpy(keep)] = values[:k]
            t = t.reshape(shape)
        else:
            raise BitstreamError(f"weights section: tensor {name} has unknown flags {flags:#x}")
        out[name] = t.to(device)
    r.expect_end()
    return out


def encode_embeddings(emb: torch.Tensor, bits: int = 6) -> tuple[bytes, QuantizedTensor]:
    """HNeRV embeddings [T, C, h, w]: one scale and offset per channel (axis 1)."""
    qt = quantize(emb.detach().float().cpu(), bits=bits, axis=1)
    return qt.to_bytes(), qt


def decode_embeddings(data: bytes, shape: tuple[int, ...]) -> torch.Tensor:
    qt = QuantizedTensor.from_bytes(ByteReader(data, what="embed section"))
    t = qt.dequantize(device="cpu")
    if tuple(t.shape) != tuple(shape):
        raise BitstreamError(f"embed section: shape {tuple(t.shape)}, expected {tuple(shape)}")
    return t


# ---------------------------------------------------------------------------------------------------------------
# pruning and quantisation-aware fine-tuning


def magnitude_masks(module: nn.Module, amount: float) -> dict[str, torch.Tensor]:
    """Global L1-magnitude pruning: keep masks zeroing the `amount` share of the smallest prunable weights."""
    if not 0.0 < amount < 1.0:
        raise ValueError("prune amount must be in (0, 1)")
    named = {n: p.detach() for n, p in module.named_parameters() if prunable(n, p)}
    flat = torch.cat([p.abs().flatten().float().cpu() for p in named.values()])
    k = int(amount * flat.numel())
    if k == 0:
        return {n: torch.ones_like(p, dtype=torch.bool) for n, p in named.items()}
    threshold = torch.kthvalue(flat, k).values
    return {n: (p.abs() > threshold.to(p.device)) for n, p in named.items()}


class _Compress(nn.Module):
    """Parametrization: weight -> fake_quantize(weight * mask). Gradients pass straight through the rounding."""

    def __init__(self, bits: int | None, axis: int | None, mask: torch.Tensor | None):
        super().__init__()
        self.bits, self.axis = bits, axis
        self.register_buffer("mask", mask.float() if mask is not None else None)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.mask is not None:
            w = w * self.mask
        if self.bits is not None:
            w = fake_quantize(w, self.bits, axis=self.axis, mode="ste")
        return w


def attach_compression(module: nn.Module, bits: int | None, masks: dict[str, torch.Tensor] | None = None) -> None:
    """Make `module`'s forward see its weights as they will be stored (pruned and/or quantised)."""
    masks = masks or {}
    for name, p in list(module.named_parameters()):
        owner_name, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        mask = masks.get(name)
        if bits is None and mask is None:
            continue
        axis = None if mask is not None else quant_axis(p)   # pruned tensors store their kept values per tensor
        parametrize.register_parametrization(owner, attr, _Compress(bits, axis, mask))


def detach_compression(module: nn.Module, masks: dict[str, torch.Tensor] | None = None) -> None:
    """Remove the parametrizations, keeping the latent (unquantised) weights with pruned entries zeroed."""
    for sub in list(module.modules()):
        if parametrize.is_parametrized(sub):
            for attr in list(sub.parametrizations.keys()):
                parametrize.remove_parametrizations(sub, attr, leave_parametrized=False)
    if masks:
        with torch.no_grad():
            params = dict(module.named_parameters())
            for name, m in masks.items():
                params[name].mul_(m.to(params[name].device, params[name].dtype))


# ---------------------------------------------------------------------------------------------------------------
# the comparison the benchmark prints: adaptive per-tensor coding against a Huffman code


def huffman_bits(symbols: np.ndarray) -> int:
    """Bits of `symbols` under the Huffman code of their own histogram (the table not counted, as HNeRV's bpp)."""
    s = np.asarray(symbols).astype(np.int64).ravel()
    if s.size == 0:
        return 0
    counts = np.bincount(s - int(s.min()))
    return int(counts @ huffman_code_lengths(counts))


def coding_comparison(reports: list[TensorReport], extra: list[tuple[np.ndarray, int]] = ()) -> dict:
    """Bytes of the stored symbols at fixed length, under one Huffman table over everything (HNeRV's scheme) and
    under per-tensor Huffman tables, to set beside our coded bytes. `extra`: (symbols, bits) such as embeddings."""
    items = [(r.symbols.ravel(), r.bits) for r in reports] + [(np.asarray(s).ravel(), b) for s, b in extra]
    # one shared table needs one alphabet: each tensor's symbols start at 0, as the quantiser stores them
    joined = np.concatenate([s - s.min() for s, _ in items]) if items else np.zeros(0, np.int64)
    return {"symbols": int(joined.size),
            "fixed_length_bytes": sum(s.size * b for s, b in items) / 8,
            "huffman_one_table_bytes": huffman_bits(joined) / 8,
            "huffman_per_tensor_bytes": sum(huffman_bits(s) for s, _ in items) / 8}
