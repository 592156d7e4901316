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

import json
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from bitstream.container import Reader, Writer
from bitstream.errors import BitstreamError
from bitstream.serial import ByteReader, read_json
from codec.base import Bounds, DecodedVideo, Encoded, Job, VideoCodec, check_size, decode_need, header_fps, phase, video_header
from codec.device import accel_for, cpu_thread_limit, device_name, pick_device, seed_everything, to_channels_last
from codec.errors import UserError
from codec.fit import FitConfig, fit, frames_to_device
from codec.options import MAX_PARAMETERS, format_bytes
from codec.quant import QuantizedTensor
from codec.video import weights as W
from codec.video.hnerv import HNeRV, HNeRVConfig, HNeRVDecoder, hnerv_config, hnerv_grid_config
from codec.video.layers import count_params
from codec.video.nerv import NeRV, NeRVConfig, nerv_config
from codec.video.options import HNeRVOptions, INROptions, NeRVOptions

VERSION = 1
DEFAULT_BPP = 0.1                 # the size used when neither --size nor --bpp is given
MIN_DEFAULT_SIZE = 150_000
MAX_CONFIG_BYTES = 1 << 16


def decode_batch_size(device: torch.device) -> int:
    """Frames per decoder call; encode's check and `ncodec decode` use the same value so their output matches."""
    return 16 if device.type == "cuda" else 4


# ---------------------------------------------------------------------------------------------------------------
# one family = model config, fitting-time model, decoder-only model, recipe


@dataclass(frozen=True)
class Recipe:
    """How a family's network is fitted. A recipe changes training only: the file records the network it built, so
    every recipe's files decode with the same decoder."""
    lr: float
    betas: tuple[float, float]
    warmup: float                 # share of the run in linear warm-up from 0.1*lr, then cosine to 0
    loss: str
    batch_size: int
    channels_last: bool = False   # NHWC while fitting on any device (CUDA's Accel has it anyway; a CPU's does not)
    # HNeRV only, recorded in the file's config: learned grids after these blocks, about grid_share of the size
    stage_grids: tuple[int, ...] = ()
    grid_share: float = 0.06


class Family:
    name: str
    lr: float
    betas: tuple[float, float]
    warmup: float
    loss: str
    batch_size: int
    has_embeddings: bool
    default_recipe = "paper"

    @property
    def recipes(self) -> dict[str, Recipe]:
        """Named recipes; a family without its own has one, "paper", from its class attributes."""
        return {"paper": Recipe(self.lr, self.betas, self.warmup, self.loss, self.batch_size)}

    def recipe(self, name: str | None = None) -> Recipe:
        recipes = self.recipes
        name = name or self.default_recipe
        if name not in recipes:
            raise UserError(f"--recipe {name}: {self.name} has {', '.join(recipes)}")
        return recipes[name]

    def config(self, h: int, w: int, t: int, size: float): ...

    def config_rule(self, recipe: Recipe) -> Callable[[int, int, int, float], Any]:
        """(h, w, t, size) -> config of the network a recipe fits (the family's own; HNeRV's may add grids)."""
        return self.config
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
    # HNeRV's Bunny recipe ("hnerv-paper"): Adam (default betas), lr 1e-3, 10% warm-up, L2 loss, batch 2
    name, lr, betas, warmup, loss, batch_size, has_embeddings = "hnerv", 1e-3, (0.9, 0.999), 0.1, "mse", 2, True
    default_recipe = "ncodec"

    @property
    def recipes(self) -> dict[str, Recipe]:
        paper = Recipe(self.lr, self.betas, self.warmup, self.loss, self.batch_size)
        # ncodec's (docs/INR.md, "Recipes"): measured at equal epochs, size and bits by benchmarks/equal_epochs.py
        return {"ncodec": replace(paper, lr=5e-3, batch_size=1, channels_last=True, stage_grids=(2, 3, 4)),
                "hnerv-paper": paper}

    def config(self, h, w, t, size):
        return hnerv_config(h, w, t, size)

    def config_rule(self, recipe):
        return lambda h, w, t, size: hnerv_grid_config(h, w, t, size, recipe.stage_grids, recipe.grid_share)

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


def size_for_bpp(family: Family, h: int, w: int, t: int, bpp: float, weight_bits: int, embed_bits: int,
                 config: Callable[[int, int, int, float], Any] | None = None):
    """The largest model whose estimated file stays at or under `bpp` (bisection on the parameter count);
    `config`: the size rule (default the family's)."""
    config = config or family.config
    target = bpp * t * h * w / 8
    lo, hi, best = 1e3, 1e9, None
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        try:
            cfg = config(h, w, t, mid)
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


def read_config(reader: Reader, family: Family) -> tuple[Any, int, int]:
    """(model config, weight bits, embed bits) from the config section, checked against the header."""
    conf = read_json(reader.payload("config"), "config section", MAX_CONFIG_BYTES)
    try:
        model_dict, weight_bits, embed_bits = conf["model"], conf["weight_bits"], conf["embed_bits"]
    except (KeyError, TypeError):
        raise BitstreamError("config section is not a valid INR config") from None
    if not isinstance(model_dict, dict):
        raise BitstreamError("config section is not a valid INR config")
    cfg = family.config_from_dict(model_dict)
    h = reader.header
    if h.get("width") != cfg.width or h.get("height") != cfg.height or h.get("frames") != cfg.frames:
        raise BitstreamError("header and config section disagree on the video size")
    return cfg, weight_bits, embed_bits


def network_shapes(family: Family, cfg) -> dict[str, tuple[int, ...]]:
    """Every stored decoder tensor's shape, from a decoder built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in family.decoder(cfg).state_dict().items()}


def config_bounds(family: Family, cfg, batch: int, file_bytes: int = 0,
                  shapes: dict[str, tuple[int, ...]] | None = None, value_bytes: int = 4) -> Bounds:
    """What decoding a file of this config costs: the decoder's weights (module and decoded state, float32) and the
    largest tensor's decoding buffers (symbols, float copies), the embeddings, the file's payload copies, and a
    decode batch of the network's activations (each config's frame_activations, `value_bytes` each: 2 under the
    fp16 autocast of a CUDA decode)."""
    shapes = network_shapes(family, cfg) if shapes is None else shapes
    sizes = [math.prod(s) for s in shapes.values()]
    embed = cfg.embed_values if family.has_embeddings else 0
    values = sum(sizes) + embed
    open_bytes = file_bytes + 8 * values + 16 * max(sizes + [embed])
    return Bounds(values, open_bytes, open_bytes, batch * value_bytes * cfg.frame_activations())


def check_declared_counts(reader: Reader, shapes: dict[str, tuple[int, ...]], embed: tuple[int, ...] | None) -> None:
    """The weights (and embed) sections declare each tensor's shape before its coded values: they must be the
    config's network, checked before anything is built (reading only the tensors' headers)."""
    r = ByteReader(reader.payload("weights"), what="weights section")
    n = r.varint(W.MAX_TENSORS)
    if n != len(shapes):
        raise BitstreamError(f"weights section: {n} tensors, the config's network has {len(shapes)}")
    seen = set()
    for _ in range(n):
        name = r.str_(256)
        if name not in shapes or name in seen:
            raise BitstreamError(f"weights section: unexpected tensor {name!r}")
        seen.add(name)
        flags = r.u8()
        if flags == 0:
            declared = QuantizedTensor.peek_shape(r.bytes_(), f"weights section, tensor {name}", MAX_PARAMETERS)
            if declared != shapes[name]:
                raise BitstreamError(f"weights section: tensor {name} declares shape {declared}, the config's "
                                     f"network has {shapes[name]}")
        elif flags == W.FLAG_PRUNED:
            r.bytes_(), r.bytes_()                                     # the keep-mask: one symbol per weight
            declared = QuantizedTensor.peek_shape(r.bytes_(), f"weights section, tensor {name}", MAX_PARAMETERS)
            if len(declared) != 1 or declared[0] > max(math.prod(shapes[name]), 1):
                raise BitstreamError(f"weights section: tensor {name} declares {declared} kept values, the "
                                     f"config's network has {shapes[name]}")
        else:
            raise BitstreamError(f"weights section: tensor {name} has unknown flags {flags:#x}")
    r.expect_end()
    if embed is not None:
        declared = QuantizedTensor.peek_shape(reader.payload("embed"), "embed section", MAX_PARAMETERS)
        if declared != embed:
            raise BitstreamError(f"embed section: declares shape {declared}, the config says {embed}")


class LoadedFile(DecodedVideo):
    """A .ncb file's network, rebuilt from the file alone (after Codec.check and the bounds)."""

    def __init__(self, reader: Reader, family: Family, device: torch.device):
        self.family = family
        self.cfg, self.weight_bits, self.embed_bits = read_config(reader, family)
        h = reader.header
        self.width, self.height, self.num_frames = self.cfg.width, self.cfg.height, self.cfg.frames
        self.fps = header_fps(h)
        self.device = device
        decoder = family.decoder(self.cfg)
        expected = {k: v.shape for k, v in decoder.state_dict().items()}
        state = W.decode_state(reader.payload("weights"), expected)
        decoder.load_state_dict(state, strict=True)
        if family.has_embeddings:
            c = self.cfg
            emb = W.decode_embeddings(reader.payload("embed"), (c.frames, c.embed_dim, c.grid_h, c.grid_w))
            self.model: nn.Module = _EmbeddingTable(decoder, emb)
        else:
            self.model = _IndexOnly(decoder)
        self.model.to(device).eval()
        if accel_for(device).channels_last:     # NHWC convolutions run on the tensor cores without layout copies
            to_channels_last(self.model)
        self.params = sum(p.numel() for p in decoder.parameters())


# ---------------------------------------------------------------------------------------------------------------
# the codecs


class INRVideoCodec(VideoCodec):
    """NeRV-style codecs: one network for the whole clip (a Family says which)."""

    version = VERSION
    sections = frozenset({"config", "weights", "embed"})
    segmentable = True
    reduced_precision = True          # fp16 autocast decoding on CUDA (docs/INR.md, "Decoding")
    Options = INROptions
    family_name: str

    @property
    def family(self) -> Family:
        return FAMILIES[self.family_name]

    # -- encode

    def encode(self, clip, options: INROptions, job: Job) -> Encoded:
        fam = self.family
        recipe_name = getattr(options, "recipe", None) or fam.default_recipe
        recipe = fam.recipe(recipe_name)
        weight_bits = options.weight_bits
        embed_bits = getattr(options, "embed_bits", 6)
        batch_size = options.batch_size or recipe.batch_size
        lr = options.lr or recipe.lr
        epochs, max_time = options.epochs, options.max_time
        if epochs is None and max_time is None:
            epochs = 300                              # the papers' schedule
        size = options.parameter_count()
        T, H, Wd = clip.num_frames, clip.height, clip.width
        device = pick_device(options.device)
        seed = options.seed

        # the network must decode within --max-memory (its own check below decodes it): refused before fitting
        limits = self.DecodeOptions(device=str(device), max_memory=options.max_memory)
        batch, value_bytes = decode_batch_size(device), 4 if self.decode_dtype(device) is None else 2
        config = fam.config_rule(recipe)
        if size is not None:
            check_size(self.name, size, limits, lambda s: config_bounds(fam, config(H, Wd, T, s), batch,
                                                                       value_bytes=value_bytes))
            cfg = config(H, Wd, T, size)
        elif options.bpp is not None:
            cfg = size_for_bpp(fam, H, Wd, T, options.bpp, weight_bits, embed_bits, config)
        else:
            try:                                      # the default: the size for 0.1 bpp, if the clip allows it
                cfg = size_for_bpp(fam, H, Wd, T, DEFAULT_BPP, weight_bits, embed_bits, config)
            except UserError:
                cfg = config(H, Wd, T, MIN_DEFAULT_SIZE)
        if size is None:
            check_size(self.name, fam.stored_count(cfg), limits,
                       lambda s: config_bounds(fam, config(H, Wd, T, s), batch, value_bytes=value_bytes),
                       asked=f"--bpp {options.bpp or DEFAULT_BPP}")

        seed_everything(seed)
        model = fam.fitting_model(cfg)
        data = frames_to_device(clip.frames, device)
        fit_accel = accel_for(device)
        if recipe.channels_last:    # fit only: decoding keeps the device's layout, so files decode as before
            fit_accel = replace(fit_accel, channels_last=True)
        fit_budget, tune_budget = max_time, None
        if max_time is not None and options.qat_epochs > 0:
            fit_budget, tune_budget = 0.85 * max_time, 0.15 * max_time
        fingerprint = {"codec": self.name, "config": cfg.to_dict(), "frames": [T, H, Wd], "seed": seed,
                       "batch_size": batch_size, "lr": lr, "recipe": recipe_name}
        fcfg = FitConfig(epochs=epochs, max_time=fit_budget, batch_size=batch_size, lr=lr, betas=recipe.betas,
                         warmup=recipe.warmup, loss=recipe.loss, device=device, seed=seed, checkpoint=job.checkpoint,
                         checkpoint_every=job.checkpoint_every,
                         resume=options.resume, fingerprint=fingerprint, desc=f"{self.name} fit", accel=fit_accel,
                         on_progress=job.on_progress, show_bar=job.show_bar, guard=True)
        result = fit(model, data, fcfg)
        fit_seconds = result.seconds

        # the stored network: decoder (+ quantised embeddings for HNeRV)
        embed_payload, embed_symbols = None, None
        if fam.has_embeddings:
            with phase(f"{self.name} embeddings: quantise and code", job.show_bar):
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

        masks = W.magnitude_masks(decoder, options.prune) if options.prune > 0 else None
        if masks is not None:
            with torch.no_grad():
                for name, p in decoder.named_parameters():
                    if name in masks:
                        p.mul_(masks[name].to(p.dtype))
        if options.qat_epochs > 0:
            W.attach_compression(decoder, weight_bits, masks)
            tune = FitConfig(epochs=options.qat_epochs, max_time=tune_budget, batch_size=batch_size, lr=lr * 0.1,
                             betas=recipe.betas, warmup=0.0, loss=recipe.loss, device=device, seed=seed + 1,
                             compile=False, desc=f"{self.name} QAT", on_progress=job.on_progress,
                             show_bar=job.show_bar)
            fit_seconds += fit(tune_model, data, tune).seconds
            W.detach_compression(decoder, masks)

        with phase(f"{self.name} weights: quantise and code", job.show_bar):
            weights_payload, reports = W.encode_state(decoder.state_dict(), weight_bits, masks)
        with phase(f"{self.name} write", job.show_bar):
            writer = Writer(self.name, VERSION, video_header(cfg.width, cfg.height, cfg.frames, clip.fps, clip))
            conf = {"model": cfg.to_dict(), "weight_bits": weight_bits, "embed_bits": embed_bits}
            writer.add_section("config", json.dumps(conf, separators=(",", ":")).encode())
            writer.add_section("weights", weights_payload)
            if embed_payload is not None:
                writer.add_section("embed", embed_payload)
            writer.add_digests()         # damage that a recomputed CRC hides is still refused
            data_bytes = writer.to_bytes()

        measured = self.measure(data_bytes, clip.frames, device, show_bar=job.show_bar,
                                max_memory=options.max_memory)
        summary: dict[str, Any] = {
            **{k: v for k, v in measured.items() if k != "per_frame_psnr"},
            "psnr_fit": result.psnr,
            "fit_seconds": round(fit_seconds, 2), "compile_seconds": round(result.compile_seconds, 2),
            "epochs": round(result.epochs, 2), "steps": result.steps,
            "stopped_by": result.stopped_by, "fit_recoveries": result.recoveries,
            "device": device_name(device), "params": fam.stored_count(cfg), "recipe": recipe_name,
            "lr": lr, "batch_size": batch_size,
            "frames": T, "height": H, "width": Wd,
            "checkpoint": f"{job.checkpoint}.safetensors" if job.checkpoint else None,
            "weight_bits": weight_bits, **({"embed_bits": embed_bits} if fam.has_embeddings else {}),
            "prune": options.prune, "qat_epochs": options.qat_epochs,
            "coding": W.coding_comparison(reports, [(embed_symbols, embed_bits)] if embed_symbols is not None else []),
            "history": _thin(result.history, 60),
        }
        return Encoded(writer, summary)

    # -- decode

    def bounds(self, reader: Reader, options) -> Bounds:
        fam = self.family
        cfg, _, _ = read_config(reader, fam)
        shapes = network_shapes(fam, cfg)
        device = pick_device(options.device)
        batch = getattr(options, "batch_size", None) or decode_batch_size(device)
        value_bytes = 4 if self.decode_dtype(device) is None else 2
        b = config_bounds(fam, cfg, batch, reader.file_size, shapes, value_bytes)
        if b.parameters <= MAX_PARAMETERS:        # else refused on the count alone
            embed = (cfg.frames, cfg.embed_dim, cfg.grid_h, cfg.grid_w) if fam.has_embeddings else None
            check_declared_counts(reader, shapes, embed)
        return b

    def load(self, reader: Reader, options) -> LoadedFile:
        return LoadedFile(reader, self.family, pick_device(options.device))

    def render(self, decoded: LoadedFile, start: int, stop: int, batch_size: int | None) -> Iterator[torch.Tensor]:
        """The network, batch by batch; `frames` runs it under the device's decode dtype (fp16 autocast on CUDA:
        11-bit mantissa, its output error is far below the uint8 step; an overflowing batch is redone in float32)."""
        dev = decoded.device
        bs = batch_size or decode_batch_size(dev)
        for s in range(start, stop, bs):
            yield decoded.model(torch.arange(s, min(s + bs, stop), device=dev))

    def info(self, reader: Reader, options=None) -> dict[str, Any]:
        options = self.DecodeOptions(device="cpu", max_memory=getattr(options, "max_memory", None))
        try:    # `ncodec info` shows what it can of a damaged or refused file: the container fields still print
            self.check(reader)
            bounds = self.check_bounds(reader, options, decode=False)
            loaded = self.load(reader, options)
        except BitstreamError as e:
            return {"model": f"unreadable ({e})"}
        c = loaded.cfg
        out = {"model": self.name, "decoder_params": loaded.params,
               "decode_memory": format_bytes(decode_need(bounds, on_host=True)), "fc_dim": c.fc_dim,
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


class NeRVCodec(INRVideoCodec):
    name = "nerv"
    family_name = "nerv"
    Options = NeRVOptions
    description = "NeRV: a network fed the frame index (Chen et al. 2021)"


class HNeRVCodec(INRVideoCodec):
    name = "hnerv"
    family_name = "hnerv"
    Options = HNeRVOptions
    description = "HNeRV: tiny per-frame embeddings + a decoder network (Chen et al. 2023)"
