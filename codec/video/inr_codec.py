"""The `nerv` and `hnerv` codecs: fit a network to a clip, store its quantised, entropy-coded weights (and HNeRV's
embeddings) in a .ncb file, and decode by rebuilding the network from that file alone.

File layout (codec name "nerv" or "hnerv", version 1):
  header    kind=video, width, height, frames, fps_num, fps_den, pix_fmt=rgb24
  config    JSON: {"model": <the model config>, "weight_bits": b, "embed_bits": b}
  weights   every decoder tensor (codec/video/weights.py)
  embed     HNeRV only: the per-frame embeddings [T, C, h, w]
bpp is the whole file's size x 8 / (frames x height x width).
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from fractions import Fraction
from typing import Any, Iterator

import click
import numpy as np
import torch
import torch.nn as nn

from bitstream.container import Reader, Writer
from bitstream.errors import BitstreamError
from codec.device import device_name, pick_device, seed_everything
from codec.errors import UserError
from codec.fit import FitConfig, cpu_thread_limit, cpu_threads, device_frames_psnr, fit, frames_to_device
from codec.registry import Codec, register
from codec.video import weights as W
from codec.video.hnerv import HNeRV, HNeRVConfig, HNeRVDecoder, hnerv_config
from codec.video.layers import count_params, parse_size
from codec.video.nerv import NeRV, NeRVConfig, nerv_config

VERSION = 1
KNOWN_SECTIONS = {"config", "weights", "embed"}
DEFAULT_BPP = 0.1                 # the size used when neither --size nor --bpp is given
MIN_DEFAULT_SIZE = 150_000
MAX_CONFIG_BYTES = 1 << 16


def decode_batch_size(device: torch.device) -> int:
    """Frames per decoder call; encode's check and `ncodec decode` use the same value so their output matches."""
    return 16 if device.type == "cuda" else 4


# ---------------------------------------------------------------------------------------------------------------
# one family = model config, fitting-time model, decoder-only model, recipe


class Family:
    name: str
    lr: float
    betas: tuple[float, float]
    warmup: float
    loss: str
    batch_size: int
    has_embeddings: bool

    def config(self, h: int, w: int, t: int, size: float): ...
    def config_from_dict(self, d: dict): ...
    def fitting_model(self, cfg) -> nn.Module: ...
    def decoder(self, cfg) -> nn.Module: ...

    def stored_count(self, cfg) -> int:
        with torch.device("meta"):
            n = count_params(self.decoder(cfg))
        return n + (cfg.embed_values if self.has_embeddings else 0)


class NeRVFamily(Family):
    # NeRV's recipe: Adam(0.5, 0.999), lr 5e-4, 20% warm-up, 0.7*L1 + 0.3*(1-SSIM), batch 1
    name, lr, betas, warmup, loss, batch_size, has_embeddings = "nerv", 5e-4, (0.5, 0.999), 0.2, "l1_ssim", 1, False

    def config(self, h, w, t, size):
        return nerv_config(h, w, t, size)

    def config_from_dict(self, d):
        return NeRVConfig.from_dict(d)

    def fitting_model(self, cfg):
        return NeRV(cfg)

    def decoder(self, cfg):
        return NeRV(cfg)


class HNeRVFamily(Family):
    # HNeRV's Bunny recipe: Adam (default betas), lr 1e-3, 10% warm-up, L2 loss, batch 2
    name, lr, betas, warmup, loss, batch_size, has_embeddings = "hnerv", 1e-3, (0.9, 0.999), 0.1, "mse", 2, True

    def config(self, h, w, t, size):
        return hnerv_config(h, w, t, size)

    def config_from_dict(self, d):
        return HNeRVConfig.from_dict(d)

    def fitting_model(self, cfg):
        return HNeRV(cfg)

    def decoder(self, cfg):
        return HNeRVDecoder(cfg)


FAMILIES = {"nerv": NeRVFamily(), "hnerv": HNeRVFamily()}


class _EmbeddingTable(nn.Module):
    """Decoder fed the stored (quantised) embeddings by frame index: the model used for fine-tuning after the
    encoder is dropped, and for decoding."""

    def __init__(self, decoder: nn.Module, embeddings: torch.Tensor):
        super().__init__()
        self.decoder = decoder
        self.register_buffer("embeddings", embeddings)

    def forward(self, idx: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(self.embeddings.index_select(0, idx))


class _IndexOnly(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, idx, frames=None):
        return self.model(idx)


# ---------------------------------------------------------------------------------------------------------------
# sizes


def estimate_bytes(family: Family, cfg, weight_bits: int, embed_bits: int) -> float:
    """An upper estimate of the file size: every stored value at its fixed bit width (adaptive coding only lowers
    that for trained weights), plus the quantisers' float32 scales/offsets and coder tables, plus the container."""
    with torch.device("meta"):
        dec = family.decoder(cfg)
    total = 1200.0                                    # container preamble, header, config JSON, section table
    for p in dec.parameters():
        channels = p.shape[0] if p.ndim >= 2 else 1
        total += p.numel() * weight_bits / 8 + 8 * channels + 40 + 0.5 * (1 << weight_bits)
    if family.has_embeddings:
        total += cfg.embed_values * embed_bits / 8 + 8 * cfg.embed_dim + 40 + 0.5 * (1 << embed_bits)
    return total


def size_for_bpp(family: Family, h: int, w: int, t: int, bpp: float, weight_bits: int, embed_bits: int):
    """The largest model whose estimated file stays at or under `bpp` (bisection on the parameter count)."""
    target = bpp * t * h * w / 8
    lo, hi, best = 1e3, 1e9, None
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        try:
            cfg = family.config(h, w, t, mid)
        except UserError:
            lo = mid                                  # too small for the architecture: go up
            continue
        if estimate_bytes(family, cfg, weight_bits, embed_bits) <= target:
            best, lo = cfg, mid
        else:
            hi = mid
        if hi / lo < 1.01:
            break
    if best is None:
        raise UserError(f"--bpp {bpp}: even the smallest {family.name} model for {w}x{h}x{t} needs more")
    return best


# ---------------------------------------------------------------------------------------------------------------
# the file


def write_file(path: str, family: Family, cfg, fps: Fraction, weights_payload: bytes,
               embed_payload: bytes | None, weight_bits: int, embed_bits: int) -> bytes:
    header = {"kind": "video", "width": cfg.width, "height": cfg.height, "frames": cfg.frames,
              "fps_num": fps.numerator, "fps_den": fps.denominator, "pix_fmt": "rgb24"}
    writer = Writer(family.name, VERSION, header)
    conf = {"model": cfg.to_dict(), "weight_bits": weight_bits, "embed_bits": embed_bits}
    writer.add_section("config", json.dumps(conf, separators=(",", ":")).encode())
    writer.add_section("weights", weights_payload)
    if embed_payload is not None:
        writer.add_section("embed", embed_payload)
    data = writer.to_bytes()
    writer.write(path)
    return data


class LoadedFile:
    """A .ncb file's network, rebuilt from the file alone."""

    def __init__(self, reader: Reader, expected_codec: str, device: torch.device):
        if reader.codec != expected_codec:
            raise BitstreamError(f"this is a {reader.codec!r} file, not {expected_codec!r}")
        if reader.codec_version != VERSION:
            raise BitstreamError(f"{reader.codec} version {reader.codec_version} is not supported (this ncodec "
                                 f"reads version {VERSION})")
        reader.require_known(KNOWN_SECTIONS)
        self.family = FAMILIES[expected_codec]
        raw = reader.payload("config")
        if len(raw) > MAX_CONFIG_BYTES:
            raise BitstreamError("config section is too large")
        try:
            conf = json.loads(raw.decode("utf-8"))
            model_dict, self.weight_bits, self.embed_bits = conf["model"], conf["weight_bits"], conf["embed_bits"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise BitstreamError("config section is not a valid INR config") from None
        if not isinstance(model_dict, dict):
            raise BitstreamError("config section is not a valid INR config")
        self.cfg = self.family.config_from_dict(model_dict)
        h = reader.header
        if (h.get("kind") != "video" or h.get("width") != self.cfg.width or h.get("height") != self.cfg.height
                or h.get("frames") != self.cfg.frames):
            raise BitstreamError("header and config section disagree on the video size")
        self.fps = Fraction(int(h["fps_num"]), int(h["fps_den"]))
        self.device = device
        decoder = self.family.decoder(self.cfg)
        expected = {k: v.shape for k, v in decoder.state_dict().items()}
        state = W.decode_state(reader.payload("weights"), expected)
        decoder.load_state_dict(state, strict=True)
        if self.family.has_embeddings:
            c = self.cfg
            emb = W.decode_embeddings(reader.payload("embed"), (c.frames, c.embed_dim, c.grid_h, c.grid_w))
            self.model: nn.Module = _EmbeddingTable(decoder, emb)
        else:
            self.model = _IndexOnly(decoder)
        self.model.to(device).eval()
        if device.type == "cuda":       # NHWC convolutions run on the tensor cores without layout copies
            self.model.to(memory_format=torch.channels_last)
        self.params = sum(p.numel() for p in decoder.parameters())


def render(loaded: LoadedFile, start: int = 0, stop: int | None = None, batch_size: int | None = None
           ) -> Iterator[torch.Tensor]:
    """Frames start..stop as uint8 [B, H, W, 3] tensors on the decoding device, batch by batch.

    On CUDA the network runs under fp16 autocast (11-bit mantissa: its output error is far below the uint8 step)
    with cudnn's deterministic algorithms, so decoding the same file twice gives identical frames."""
    dev = loaded.device
    stop = loaded.cfg.frames if stop is None else stop
    bs = batch_size or decode_batch_size(dev)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    threads = torch.get_num_threads()
    try:
        if not cuda:
            torch.set_num_threads(cpu_threads())
        with torch.inference_mode():
            for s in range(start, stop, bs):
                idx = torch.arange(s, min(s + bs, stop), device=dev)
                with (torch.autocast("cuda", dtype=torch.float16) if cuda else contextlib.nullcontext()):
                    out = loaded.model(idx)
                yield out.float().clamp_(0, 1).mul_(255).round_().to(torch.uint8).permute(0, 2, 3, 1)
    finally:
        torch.set_num_threads(threads)


def parse_frame_range(text: str | None, total: int) -> tuple[int, int]:
    if text is None or text == "":
        return 0, total
    parts = str(text).split(":")
    try:
        if len(parts) == 1:
            a, b = int(parts[0]), int(parts[0]) + 1
        elif len(parts) == 2:
            a = int(parts[0]) if parts[0] else 0
            b = int(parts[1]) if parts[1] else total
        else:
            raise ValueError
    except ValueError:
        raise UserError(f"--frames {text!r}: expected A:B (from 0, B excluded)") from None
    if not 0 <= a < b <= total:
        raise UserError(f"--frames {text!r}: the file has frames 0:{total}")
    return a, b


# ---------------------------------------------------------------------------------------------------------------
# the codecs


def _int_opt(opts, key, default):
    v = opts.get(key)
    return default if v is None else v


class INRVideoCodec(Codec):
    kind = "video"
    version = VERSION
    family_name: str

    encode_options = [
        click.Option(["--batch-size"], type=int, default=None,
                     help="Frames per step when fitting (NeRV 1, HNeRV 2) / per call when decoding."),
        click.Option(["--lr"], type=float, default=None, help="Peak learning rate (NeRV 5e-4, HNeRV 1e-3)."),
        click.Option(["--weight-bits"], type=int, default=None, help="INR codecs: bits per weight (default 8)."),
        click.Option(["--embed-bits"], type=int, default=None, help="HNeRV: bits per embedding value (default 6)."),
        click.Option(["--prune"], type=float, default=None,
                     help="INR codecs: share of stem/block weights to prune by magnitude, e.g. 0.2 (default 0)."),
        click.Option(["--qat-epochs"], type=int, default=None,
                     help="INR codecs: epochs of quantisation-aware fine-tuning after the fit (default 0)."),
    ]
    decode_options = [
        click.Option(["--batch-size"], type=int, default=None, help="Frames per decoder call."),
    ]

    @property
    def family(self) -> Family:
        return FAMILIES[self.family_name]

    # -- encode

    def encode(self, inputs: list[str], output: str, opts: dict[str, Any]) -> dict[str, Any]:
        from codec.video.io import read_video

        fam = self.family
        if len(inputs) != 1:
            raise UserError(f"{self.name} encodes one video at a time, got {len(inputs)} inputs")
        weight_bits = _int_opt(opts, "weight_bits", 8)
        embed_bits = _int_opt(opts, "embed_bits", 6)
        for what, b in (("--weight-bits", weight_bits), ("--embed-bits", embed_bits)):
            if not 2 <= b <= 16:
                raise UserError(f"{what} must be in 2..16, got {b}")
        prune = float(_int_opt(opts, "prune", 0.0))
        if not 0.0 <= prune < 1.0:
            raise UserError(f"--prune must be in [0, 1), got {prune}")
        qat_epochs = int(_int_opt(opts, "qat_epochs", 0))
        if qat_epochs < 0:
            raise UserError(f"--qat-epochs must be >= 0, got {qat_epochs}")
        batch_size = int(_int_opt(opts, "batch_size", fam.batch_size))
        lr = float(_int_opt(opts, "lr", fam.lr))
        if batch_size <= 0 or not lr > 0:
            raise UserError("--batch-size and --lr must be positive")
        if opts.get("size") is not None and opts.get("bpp") is not None:
            raise UserError("give --size or --bpp, not both")
        epochs, max_time = opts.get("epochs"), opts.get("max_time")
        if epochs is None and max_time is None:
            epochs = 300                              # the papers' schedule
        size = parse_size(opts.get("size"))           # validates before the (slow) video read

        clip = read_video(inputs[0], frames=opts.get("frames"), crop=opts.get("crop"))
        T, H, Wd = clip.num_frames, clip.height, clip.width
        device = pick_device(opts.get("device", "auto"))
        seed = int(opts.get("seed") or 0)

        if size is not None:
            cfg = fam.config(H, Wd, T, size)
        else:
            bpp = opts.get("bpp")
            if bpp is not None:
                cfg = size_for_bpp(fam, H, Wd, T, bpp, weight_bits, embed_bits)
            else:
                try:                                  # the default: the size for 0.1 bpp, if the clip allows it
                    cfg = size_for_bpp(fam, H, Wd, T, DEFAULT_BPP, weight_bits, embed_bits)
                except UserError:
                    cfg = fam.config(H, Wd, T, MIN_DEFAULT_SIZE)

        seed_everything(seed)
        model = fam.fitting_model(cfg)
        data = frames_to_device(clip.frames, device)
        fit_budget = max_time
        tune_budget = None
        if max_time is not None and (qat_epochs > 0):
            fit_budget, tune_budget = 0.85 * max_time, 0.15 * max_time
        ckpt = str(output) + ".ckpt"
        fingerprint = {"codec": self.name, "config": cfg.to_dict(), "frames": [T, H, Wd], "seed": seed,
                       "batch_size": batch_size, "lr": lr}
        fcfg = FitConfig(epochs=epochs, max_time=fit_budget, batch_size=batch_size, lr=lr, betas=fam.betas,
                         warmup=fam.warmup, loss=fam.loss, device=device, seed=seed, checkpoint=ckpt,
                         resume=bool(opts.get("resume")), fingerprint=fingerprint, desc=f"{self.name} fit")
        result = fit(model, data, fcfg)
        fit_seconds = result.seconds

        # the stored network: decoder (+ quantised embeddings for HNeRV)
        embed_payload, embed_symbols = None, None
        if fam.has_embeddings:
            with cpu_thread_limit(device), torch.inference_mode():
                emb = torch.cat([model.encoder(data[s:s + 16].float().div(255))
                                 for s in range(0, T, 16)]).float().cpu()
            embed_payload, qemb = W.encode_embeddings(emb, embed_bits)
            embed_symbols = qemb.symbols
            decoder = model.decoder
            tune_model: nn.Module = _EmbeddingTable(decoder, qemb.dequantize(device=device))
            del model
        else:
            decoder = model
            tune_model = model

        masks = W.magnitude_masks(decoder, prune) if prune > 0 else None
        if masks is not None or qat_epochs > 0:
            if masks is not None:
                with torch.no_grad():
                    for name, p in decoder.named_parameters():
                        if name in masks:
                            p.mul_(masks[name].to(p.dtype))
            if qat_epochs > 0:
                W.attach_compression(decoder, weight_bits, masks)
                tune = FitConfig(epochs=qat_epochs, max_time=tune_budget, batch_size=batch_size, lr=lr * 0.1,
                                 betas=fam.betas, warmup=0.0, loss=fam.loss, device=device, seed=seed + 1,
                                 compile=False, desc=f"{self.name} QAT")
                tres = fit(tune_model, data, tune)
                fit_seconds += tres.seconds
                W.detach_compression(decoder, masks)

        weights_payload, reports = W.encode_state(decoder.state_dict(), weight_bits, masks)
        file_bytes = write_file(output, fam, cfg, clip.fps, weights_payload, embed_payload, weight_bits, embed_bits)

        with cpu_thread_limit(device):
            return self._verify(file_bytes, data, clip, device, output, fam, cfg, result, fit_seconds, reports,
                                embed_symbols, weight_bits, embed_bits, prune, qat_epochs)

    def _verify(self, file_bytes, data, clip, device, output, fam, cfg, result, fit_seconds, reports,
                embed_symbols, weight_bits, embed_bits, prune, qat_epochs) -> dict[str, Any]:
        """Decode the file as `ncodec decode` will, measure it, and build encode's summary."""
        from codec.video import metrics

        T, H, Wd = clip.num_frames, clip.height, clip.width
        ckpt = str(output) + ".ckpt"
        t0 = time.perf_counter()
        loaded = LoadedFile(Reader.from_bytes(file_bytes), self.name, device)
        psnrs, decoded = [], np.empty_like(clip.frames)
        s = 0
        for batch in render(loaded):
            n = batch.shape[0]
            ref = data[s:s + n].permute(0, 2, 3, 1)
            psnrs.append(device_frames_psnr(ref, batch).cpu())
            decoded[s:s + n] = batch.cpu().numpy()
            s += n
        decode_seconds = time.perf_counter() - t0
        per_frame = torch.cat(psnrs).numpy()
        summary: dict[str, Any] = {
            "file": str(output), "bytes": len(file_bytes),
            "bpp": metrics.bpp(len(file_bytes), T, H, Wd),
            "psnr": float(per_frame.mean()),
            "ms_ssim": float(metrics.ms_ssim(clip.frames, decoded, device=device)),
            "psnr_fit": result.psnr,
            "fit_seconds": round(fit_seconds, 2), "epochs": round(result.epochs, 2), "steps": result.steps,
            "stopped_by": result.stopped_by,
            "device": device_name(device), "params": fam.stored_count(cfg),
            "frames": T, "height": H, "width": Wd,
            "decode_fps": round(T / max(decode_seconds, 1e-9), 1),
            "checkpoint": ckpt + ".safetensors",
            "weight_bits": weight_bits, **({"embed_bits": embed_bits} if fam.has_embeddings else {}),
            "prune": prune, "qat_epochs": qat_epochs,
            "coding": W.coding_comparison(reports, [(embed_symbols, embed_bits)] if embed_symbols is not None else []),
            "history": _thin(result.history, 60),
        }
        return summary

    # -- decode

    def decode(self, reader: Reader, output: str | None, opts: dict[str, Any]) -> dict[str, Any]:
        from codec.video.io import stream_frames

        device = pick_device(opts.get("device", "auto"))
        t0 = time.perf_counter()
        loaded = LoadedFile(reader, self.name, device)
        a, b = parse_frame_range(opts.get("frames"), loaded.cfg.frames)
        bs = opts.get("batch_size")
        if bs is not None and bs <= 0:
            raise UserError(f"--batch-size must be positive, got {bs}")
        n, secs = stream_frames(render(loaded, a, b, bs), output, loaded.cfg.width, loaded.cfg.height, loaded.fps)
        return {"frames": n, "width": loaded.cfg.width, "height": loaded.cfg.height,
                "fps": round(n / max(secs, 1e-9), 1), "seconds": round(time.perf_counter() - t0, 3),
                "output": output or "(none: decoded and discarded)", "device": device_name(device)}

    def info(self, reader: Reader) -> dict[str, Any]:
        try:    # `ncodec info` shows what it can of a damaged file: the container fields still print
            loaded = LoadedFile(reader, self.name, torch.device("cpu"))
        except BitstreamError as e:
            return {"model": f"unreadable ({e})"}
        c = loaded.cfg
        out = {"model": self.name, "decoder_params": loaded.params, "fc_dim": c.fc_dim,
               "strides": ",".join(map(str, c.strides)), "grid": f"{c.grid_h}x{c.grid_w}",
               "widths": ",".join(map(str, c.widths())), "weight_bits": loaded.weight_bits,
               "bpp": reader.file_size * 8 / (c.frames * c.height * c.width)}
        if self.family.has_embeddings:
            out["embed_values"] = c.embed_values
            out["embed_bits"] = loaded.embed_bits
        return out


def _thin(history: list[dict], n: int) -> list[dict]:
    """At most n entries of the fit history, evenly spaced, always keeping the first and the last."""
    if len(history) <= n:
        return history
    keep = sorted({round(i * (len(history) - 1) / (n - 1)) for i in range(n)})
    return [history[i] for i in keep]


@register
class NeRVCodec(INRVideoCodec):
    name = "nerv"
    family_name = "nerv"
    description = "NeRV: a network fed the frame index (Chen et al. 2021)"


@register
class HNeRVCodec(INRVideoCodec):
    name = "hnerv"
    family_name = "hnerv"
    description = "HNeRV: tiny per-frame embeddings + a decoder network (Chen et al. 2023)"
