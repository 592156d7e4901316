"""The codec interface. Every codec is a `Codec`; video codecs are `VideoCodec`s.

    encode:  source ──► Codec.read ──► Codec.encode ──► Encoded(writer, summary) ──► codec.api writes it atomically
    decode:  .ncb ──► Reader ──► Codec.open (every file check, once, here) ──► decoded
                 ──► VideoCodec.frames (the one place frames are rendered) / Codec.array / Codec.save

Like CompressAI's CompressionModel (compress/decompress) a codec turns data into sections and back; it never prints
and never writes files itself. Its options are a dataclass (codec/options.py), checked there and only there.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import time
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator

import numpy as np

from bitstream.container import Reader, Writer
from bitstream.errors import BitstreamError
from codec.errors import UserError
from codec.options import MAX_PARAMETERS, EncodeOptions, Options, format_bytes
from codec.video.options import VideoDecodeOptions

if TYPE_CHECKING:
    import torch


@dataclass
class Job:
    """How one encode runs, beside what it makes: where a resumable fit keeps its checkpoint, who hears progress."""

    checkpoint: str | None = None                          # path prefix; None: no checkpoint
    on_progress: Callable[[dict], None] | None = None      # the fit loop's readings (codec.fit.FitConfig)
    show_bar: bool = True
    checkpoint_every: float = 60.0                         # seconds between a fit's checkpoints (--checkpoint-every)
    keep_checkpoint: bool = False                          # keep it after success (codec.api.encode_file removes it)


@dataclass(frozen=True)
class Bounds:
    """What decoding a file costs, worked out from its header and config alone (nothing built or allocated yet):
    `Codec.open` and `ncodec info` refuse a file over the caps before `load` (docs/FORMAT.md, Bounds)."""

    parameters: int            # values of the network (or model) the decoder builds
    open_bytes: int            # host memory `ncodec info` needs at most to open the file
    decode_bytes: int = 0      # host memory a decode needs at most before its batches (0: open_bytes)
    batch_bytes: int = 0       # one decode batch's activations, on the decode device (host memory on a CPU)


# --max-memory caps the decoding process, so it counts what the process holds before it reads a file: Python, torch
# and ncodec's modules and the first calls' library state. Measured on a 2-core x86 CPU with torch 2.14: 511-545 MB
# resident after the imports, and 15-25 MB more after the first tiny decode.
RUNTIME_BYTES = 576 << 20
# Operators allocate beside the activations that a config's arithmetic counts (oneDNN's layout copies and channel
# padding, GELU and interpolation temporaries): a CPU decode's peak growth measured 0.9-1.5 times that count over
# NeRV, HNeRV, NeRV++ and NIRVANA frames from 1024x48 to 32032x48 (NeRV++ the highest), so a batch counts twice.
WORKSPACE_FACTOR = 2


@dataclass
class Encoded:
    """What `Codec.encode` returns: the file's sections, and what the encoder measured (no printing)."""

    writer: Writer
    summary: dict[str, Any] = field(default_factory=dict)


class Codec:
    """One codec: source -> sections (`encode`) and sections -> decoded data (`open`)."""

    name: ClassVar[str]
    version: ClassVar[int] = 1                   # the version `encode` writes
    readable: ClassVar[tuple[int, ...]] = ()     # versions `open` reads; () means (version,)
    kind: ClassVar[str]                          # "video" | "images" | "features"
    description: ClassVar[str] = ""
    sections: ClassVar[frozenset[str]] = frozenset()   # the section names the codec writes (others: refused)
    many_inputs: ClassVar[bool] = False          # several inputs make one file (images, a PFNR library)
    segmentable: ClassVar[bool] = False          # one video can be cut into --segment files of this codec
    Options: ClassVar[type[EncodeOptions]] = EncodeOptions
    DecodeOptions: ClassVar[type[Options]] = Options

    # -- encoding

    def read(self, source: Any, options: EncodeOptions) -> Any:
        """A path, a list of paths or an array -> what `encode` takes (read before any fitting starts)."""
        raise NotImplementedError

    def encode(self, source: Any, options: EncodeOptions, job: Job) -> Encoded:
        raise NotImplementedError

    # -- decoding

    def open(self, reader: Reader, options: Options) -> Any:
        """The file's decoded form (a network ready to render, pixels, latents), after `check` and the bounds."""
        self.check(reader)
        bounds = self.check_bounds(reader, options)
        decoded = self.load(reader, options)
        if isinstance(decoded, DecodedVideo):          # what `array` adds its output to (VideoCodec.array)
            decoded.decode_bounds = bounds
        return decoded

    def check(self, reader: Reader) -> None:
        """Every check a file passes before a codec reads its sections: the one place versions are checked.
        A file's section digests (the optional `sha256` section) are registered here and checked as each
        section is read."""
        check_codec(reader, self.name, self.readable or (self.version,), self.kind)
        reader.require_known(self.known_section)
        reader.read_digests()

    def bounds(self, reader: Reader, options: Options) -> Bounds:
        """Parameters and memory of decoding `reader` with `options`, from the header and the small sections
        that describe the network (config, model file header), never from building it. Every codec implements
        it; `check_bounds` applies the caps. Counts that other sections declare are checked here too, when
        reading them costs nothing (a BitstreamError if they cannot match the config)."""
        raise NotImplementedError(f"codec {self.name} does not bound what its files cost to decode")

    def check_bounds(self, reader: Reader, options: Options, decode: bool = True) -> Bounds:
        """The one rule, before `load` (decode=False: `ncodec info`, which opens without rendering)."""
        b = self.bounds(reader, options)
        enforce_bounds(self.name, b, options, decode)
        return b

    def known_section(self, name: str) -> bool:
        """Whether `name` is a section this codec writes (numbered sections: override)."""
        return name in self.sections

    def load(self, reader: Reader, options: Options) -> Any:
        raise NotImplementedError

    def array(self, decoded: Any, options: Options) -> np.ndarray:
        """The decoded data as one array (the Python API's `decode`)."""
        raise NotImplementedError

    def check_output(self, output: str | None) -> None:
        """Refuse an output `save` cannot write, before any decoding is spent on it (UserError)."""

    def save(self, decoded: Any, output: str | None, options: Options) -> dict[str, Any]:
        """Write the decoded data to `output` (None: decode and discard) and say what was written."""
        raise NotImplementedError

    def info(self, reader: Reader, options: Options | None = None) -> dict[str, Any]:
        """What `ncodec info` adds to the container's fields (`options`: device and --max-memory; a codec whose info
        opens the file checks its bounds with decode=False first)."""
        return {}


def enforce_bounds(name: str, b: Bounds, options: Options, decode: bool = True, output_bytes: int = 0) -> None:
    """Refuse (BitstreamError) a file whose network is over MAX_PARAMETERS or whose decode needs more memory than
    --max-memory allows: the runtime (RUNTIME_BYTES), the codec's bounds, and `output_bytes` that the caller keeps
    (an array of decoded frames). The decode batch's activations (times WORKSPACE_FACTOR) count against the host
    cap on a CPU and against the device's own memory on a GPU."""
    if b.parameters > MAX_PARAMETERS:
        raise BitstreamError(f"this {name} file describes a network of {b.parameters:,} values, over the limit of "
                             f"{MAX_PARAMETERS:,} (2^28): refused before allocating")
    cap = options.memory_cap()
    device = _device(options) if decode and b.batch_bytes else None
    on_host = device is not None and device.type == "cpu"
    batch = WORKSPACE_FACTOR * b.batch_bytes
    need = decode_need(b, on_host, decode, output_bytes)
    if need > cap:
        hint = " (or a smaller --batch-size)" if on_host else ""
        if output_bytes:
            hint += f" (or fewer --frames: the decoded frames take {format_bytes(output_bytes)})"
        raise BitstreamError(f"this {name} file needs about {format_bytes(need)} of memory to "
                             f"{'decode' if decode else 'open'} (ncodec and torch included), over the "
                             f"{format_bytes(cap)} cap: refused before allocating; --max-memory {_round_up(need)} "
                             f"allows it if you trust the file{hint}")
    if device is not None and device.type == "cuda":
        import torch

        total = torch.cuda.get_device_properties(device).total_memory
        if batch + 4 * b.parameters > total:
            raise BitstreamError(f"this {name} file needs about {format_bytes(batch + 4 * b.parameters)} "
                                 f"of {device} memory per decode batch, which has {format_bytes(total)}: "
                                 f"refused before allocating; try --batch-size 1 or --device cpu")


def decode_need(b: Bounds, on_host: bool, decode: bool = True, output_bytes: int = 0) -> int:
    """Host memory (bytes) a process decoding (or, decode=False, opening) a file of bounds `b` peaks at: what
    enforce_bounds compares with --max-memory. `on_host`: the decode batch runs on the CPU."""
    held = (b.decode_bytes or b.open_bytes) if decode else b.open_bytes
    return RUNTIME_BYTES + held + (WORKSPACE_FACTOR * b.batch_bytes if on_host and decode else 0) + output_bytes


def check_size(name: str, size: float, options: Options, bounds_for: Callable[[float], Bounds],
               smallest: float = 1e3, asked: str | None = None) -> None:
    """Refuse (UserError), before anything is built, an encode of `size` parameters whose file the decoder would
    refuse under the same --max-memory (`options`: the decode options of the encoder's own check), naming the
    largest size that fits. `bounds_for(size)` is the codec's Bounds of the network it would fit for that size
    (a UserError when the size is too small to build). `asked`: the option that chose the size, if not --size."""
    def fits(s: float) -> bool | None:
        if s > MAX_PARAMETERS:
            return False
        try:
            enforce_bounds(name, bounds_for(s), options)
        except BitstreamError:
            return False
        except UserError:
            return None                  # too small for the architecture
        return True

    if fits(size) is not False:
        return
    lo, hi, best = smallest, min(size, float(MAX_PARAMETERS)), None
    while hi / lo > 1.02:
        mid = math.sqrt(lo * hi)
        ok = fits(mid)
        if ok is False:
            hi = mid
        else:
            lo, best = mid, mid if ok else best
    limit = (f"the {format_bytes(options.memory_cap())} decode-memory cap (--max-memory)"
             + (f" and the {MAX_PARAMETERS:,}-value limit" if size > MAX_PARAMETERS else ""))
    largest = f"the largest {name} size that fits is about {_size_text(best)}" if best else \
        f"no {name} size fits"
    asked = asked or f"--size {_size_text(size)}"
    raise UserError(f"{asked} is too large: its file would be over {limit}; {largest} (--size)")


def _size_text(size: float) -> str:
    if size >= 1e9:
        return f"{size:.4g}"
    return f"{size / 1e6:.4g}M" if size >= 1e6 else f"{size / 1e3:.4g}k" if size >= 1e3 else f"{size:.0f}"


def _device(options: Options) -> "torch.device":
    from codec.device import pick_device

    return pick_device(getattr(options, "device", "cpu"))


def _round_up(n: int) -> str:
    """A --max-memory value just above n bytes, in whole GiB (MiB below 1 GiB)."""
    if n < 1 << 30:
        return f"{-(-n // (1 << 20))}M"
    return f"{-(-n // (1 << 30))}G"


def check_codec(reader: Reader, name: str, versions: tuple[int, ...], kind: str) -> None:
    if reader.codec != name:
        raise BitstreamError(f"this is a {reader.codec!r} file, not {name!r}")
    if reader.codec_version not in versions:
        raise BitstreamError(f"{name} version {reader.codec_version} is not supported (this ncodec reads "
                             f"{', '.join(map(str, versions))}): upgrade ncodec")
    if reader.header.get("kind") != kind:
        raise BitstreamError(f"header: kind {reader.header.get('kind')!r} is not {kind!r}")


# ---------------------------------------------------------------------------------------------------------------
# video


class DecodedVideo:
    """What every decoded video has; a codec's decoded form adds its network."""

    width: int
    height: int
    num_frames: int
    fps: Fraction
    device: "torch.device"
    chroma: str | None = None      # the source's chroma subsampling as the header records it (VideoCodec.open)
    decode_bounds: "Bounds | None" = None   # the file's bounds (Codec.open), checked with the frames `array` keeps


def video_header(width: int, height: int, frames: int, fps: Fraction, clips: Any = None,
                 **extra: Any) -> dict[str, Any]:
    """A video file's header (docs/FORMAT.md): the one place it is built. `clips`: the VideoClip (or clips) it was
    encoded from, whose source fields (source_fields) it records."""
    if clips is not None and not isinstance(clips, (list, tuple)):
        clips = [clips]
    return {"kind": "video", "width": width, "height": height, "frames": frames, "fps_num": fps.numerator,
            "fps_den": fps.denominator, "pix_fmt": "rgb24", **(source_fields(clips) if clips else {}), **extra}


def source_fields(clips: list, header: dict | None = None) -> dict[str, Any]:
    """The optional header fields that say what a video was encoded from, each kept only where every clip (and
    `header`, a library's earlier videos) agrees: `chroma` ("420", "422", "444": the source's chroma subsampling,
    which a y4m output keeps) and, for a cropped source, `source_height` and `source_width` (its frame size before
    the centre crop, which `ncodec eval` applies to the reference). Files without them decode as before (4:4:4 y4m;
    eval crops a larger reference to the centre)."""
    rows = []
    for c in clips:
        row = {"chroma": c.chroma} if getattr(c, "chroma", None) else {}
        size = getattr(c, "source_size", None)
        if size and tuple(size) != (c.height, c.width):
            row["source_height"], row["source_width"] = int(size[0]), int(size[1])
        rows.append(row)
    if header is not None:
        rows.append({k: header[k] for k in ("chroma", "source_height", "source_width") if k in header})
    first = rows[0] if rows else {}
    return {k: v for k, v in first.items() if all(r.get(k) == v for r in rows)}


def header_source(header: dict) -> tuple[str | None, tuple[int, int] | None]:
    """(chroma, (source_height, source_width)) of a header, each None when absent or not well-formed (a header is
    untrusted: a bad optional field is ignored, never used)."""
    chroma = header.get("chroma") if header.get("chroma") in ("420", "422", "444") else None
    h, w = header.get("source_height"), header.get("source_width")
    ok = all(type(v) is int and 0 < v <= 1 << 16 for v in (h, w))
    return chroma, ((h, w) if ok else None)


def frames_digest(frames: np.ndarray) -> str:
    """SHA-256 of decoded frames: what "decodes to exactly the same frames" is checked with."""
    return hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()


def header_fps(header: dict) -> Fraction:
    return Fraction(int(header["fps_num"]), int(header["fps_den"]))


def parse_frame_range(text: str | None, total: int) -> tuple[int, int]:
    """'A:B', 'A' (one frame), ':B' or 'A:' -> (a, b) within 0..total."""
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


@contextlib.contextmanager
def decode_settings(device: "torch.device", dtype: "torch.dtype | None" = None,
                    threads: int | None = None) -> Iterator[None]:
    """The settings every decode runs under, so that the encoder's check and a fresh `ncodec decode` agree: no TF32
    (which fitting turns on), deterministic cuDNN algorithms without autotuning, autocast to `dtype` (None: float32)
    and on a CPU `threads` threads (default: the CPU thread rule, codec.device.cpu_threads). What it changes is
    restored on exit, so a fit after a decode runs as before. `VideoCodec.frames` enters it around each batch, never
    across a yield, so the caller's code between batches runs under its own settings."""
    import torch

    from codec.device import autocast, cpu_threads

    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_num_threads())
    try:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        if device.type == "cpu":
            n = cpu_threads() if threads is None else threads
            if n != saved[4]:
                torch.set_num_threads(n)
        with autocast(device, dtype):
            yield
    finally:
        (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = saved[:4]
        if torch.get_num_threads() != saved[4]:
            torch.set_num_threads(saved[4])


def to_uint8_frames(out: "torch.Tensor") -> np.ndarray:
    """A network's output [B, 3, H, W] in [0, 1] -> uint8 frames [B, H, W, 3], rounded to nearest (NaN -> 0, which a
    cast to uint8 would leave undefined)."""
    import torch

    x = torch.nan_to_num(out.float(), nan=0.0)
    return x.clamp_(0, 1).mul_(255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@contextlib.contextmanager
def phase(desc: str, show: bool = True) -> Iterator[None]:
    """A status line on stderr for one step after a fit that has no count of its own (quantise and code, write):
    its name while it runs and its time when it ends (codec.progress: silent where the bars are)."""
    from codec.progress import progress

    with progress(total=1, desc=desc, unit="step", disable=None if show else True,
                  bar_format="{desc} [{elapsed}]") as bar:
        yield
        bar.update(1)


class VideoCodec(Codec):
    """A codec whose decoded form renders frames: `render` is the codec's, `frames` the one way to get them."""

    kind = "video"
    DecodeOptions = VideoDecodeOptions
    # whether the network may decode under the device's reduced-precision autocast (Accel.decode_dtype: fp16 on
    # CUDA); a batch whose output is not finite is decoded again in float32
    reduced_precision: ClassVar[bool] = False

    # -- encoding

    def read(self, source: Any, options: EncodeOptions):
        """One video: a path (file or PNG folder) or a uint8 array [T, H, W, 3]."""
        clips = read_clips(source, options)
        if len(clips) != 1:
            raise UserError(f"{self.name} encodes one video at a time, got {len(clips)} inputs")
        return clips[0]

    def measure(self, data: bytes, reference: np.ndarray, device: "torch.device", *, show_bar: bool = True,
                **decode_options: Any) -> dict[str, Any]:
        """Decode `data` as `ncodec decode` will and compare it with `reference`: the encoder's honest numbers
        (with the sha256 of the decoded frames, what "decodes to the same frames" is checked with). `psnr` is RGB;
        `psnr_y` and `psnr_yuv` are the video-coding papers' (metrics.psnr_yuv, BT.601 full range)."""
        from codec.progress import progress
        from codec.video import metrics

        options = self.DecodeOptions(device=str(device), **decode_options)
        t0 = time.perf_counter()
        decoded = self.open(Reader.from_bytes(data), options)
        parts = []
        with progress(total=reference.shape[0], desc=f"{self.name} verify: decode", unit="frame",
                      disable=None if show_bar else True) as bar:
            for batch in self.frames(decoded):
                parts.append(batch)
                bar.update(batch.shape[0])
        frames = np.concatenate(parts)
        seconds = time.perf_counter() - t0
        if frames.shape != reference.shape:
            raise RuntimeError(f"decoded {frames.shape} frames for a {reference.shape} reference")
        with phase(f"{self.name} verify: PSNR, MS-SSIM", show_bar):
            mean, per_frame = metrics.psnr(reference, frames)
            yuv = metrics.psnr_yuv(reference, frames)
            ms_ssim = float(metrics.ms_ssim(reference, frames, device=device))
        t, h, w = reference.shape[:3]
        from codec.device import precision_label

        return {"bytes": len(data), "bpp": metrics.bpp(len(data), t, h, w), "psnr": float(mean),
                "psnr_y": yuv["psnr_y"], "psnr_yuv": yuv["psnr_yuv"],
                "psnr_holds_for": precision_label(device, self.decode_dtype(device)),
                "ms_ssim": ms_ssim, "decode_fps": round(t / max(seconds, 1e-9), 1), "per_frame_psnr": per_frame,
                "sha256": frames_digest(frames)}

    def stored(self, reader: Reader, video: int | None = None) -> dict[str, Any]:
        """What the file holds of one video, for `ncodec eval`: frames, height, width, the bytes its bpp counts,
        and the source fields its header records (chroma, source_size: None when absent). A library codec
        overrides it to pick `video` and count the bytes that video added."""
        check_codec(reader, self.name, self.readable or (self.version,), self.kind)
        if video not in (None, 1):
            raise UserError(f"--video {video}: a {self.name} file holds one video")
        h = reader.header
        chroma, source_size = header_source(h)
        return {"frames": int(h["frames"]), "height": int(h["height"]), "width": int(h["width"]),
                "bytes": reader.file_size, "chroma": chroma, "source_size": source_size}

    # -- decoding

    def open(self, reader: Reader, options: Options):
        if self.segmentable and reader.has("segments"):
            from codec.video import segmented

            check_codec(reader, self.name, self.readable or (self.version,), self.kind)
            decoded = segmented.SegmentedVideo(reader, options)
        else:
            decoded = super().open(reader, options)
        decoded.chroma = header_source(reader.header)[0]     # what a y4m output keeps (VideoCodec.save)
        return decoded

    def render(self, decoded: Any, start: int, stop: int, batch_size: int | None) -> Iterator["torch.Tensor"]:
        """Frames start..stop as the network's float output [B, 3, H, W] in [0, 1], batch by batch (run by `frames`
        under decode_settings: no precision, cuDNN or autocast settings of its own)."""
        raise NotImplementedError

    def decode_dtype(self, device: "torch.device") -> "torch.dtype | None":
        """The autocast dtype this codec decodes under on `device` (None: float32)."""
        if not self.reduced_precision:
            return None
        from codec.device import accel_for

        return accel_for(device).decode_dtype

    def frames(self, decoded: Any, start: int = 0, stop: int | None = None,
               batch_size: int | None = None) -> Iterator[np.ndarray]:
        """Frames start..stop as uint8 [B, H, W, 3] batches: decoding, the encoder's check, --segment files, Ray
        and the benchmarks all take frames from here."""
        stop = decoded.num_frames if stop is None else stop
        if not 0 <= start < stop <= decoded.num_frames:
            raise UserError(f"frames {start}:{stop}: the video has frames 0:{decoded.num_frames}")
        from codec.video import segmented

        if isinstance(decoded, segmented.SegmentedVideo):
            for sub, s, e in decoded.parts(self, start, stop):
                yield from self.frames(sub, s, e, batch_size)
            return
        import torch

        from codec.device import cpu_threads, precision_label

        device = decoded.device
        dtype = self.decode_dtype(device)
        threads = cpu_threads() if device.type == "cpu" else None    # chosen once: one decode, one thread count
        batches = self.render(decoded, start, stop, batch_size)
        pos, warned = start, False
        while True:
            # the settings and inference mode around each step only: the caller's code between batches runs as it
            # would, and a generator dropped half-way leaves nothing changed
            with decode_settings(device, dtype, threads), torch.inference_mode():
                out = next(batches, None)
                if out is None:
                    return
                n = out.shape[0]
                redo = dtype is not None and not bool(torch.isfinite(out).all())
                batch = None if redo else to_uint8_frames(out)
            if redo:    # fp16 overflowed (max 65504) into inf or NaN: these frames again in float32
                if not warned:
                    warnings.warn(f"{self.name}: {precision_label(device, dtype)} decoding overflowed at frames "
                                  f"{pos}:{pos + n}; such batches are decoded in float32", RuntimeWarning)
                    warned = True
                with decode_settings(device, None, threads), torch.inference_mode():
                    batch = to_uint8_frames(torch.cat(list(self.render(decoded, pos, pos + n, n))))
            pos += n
            yield batch

    def array(self, decoded: Any, options: Options) -> np.ndarray:
        """Frames A:B (--frames) in one array, allocated once and checked with the decode's bounds under the cap
        first (unlike a file output, an array keeps every frame)."""
        a, b = parse_frame_range(getattr(options, "frames", None), decoded.num_frames)
        # int(): a config's JSON `true` passes as 1 (the header's 1 equals it), which no array shape takes
        shape = (b - a, int(decoded.height), int(decoded.width), 3)
        bounds = getattr(decoded, "decode_bounds", None) or Bounds(0, 0)   # --segment: parts check their own
        enforce_bounds(self.name, bounds, options, output_bytes=math.prod(shape))
        out = np.empty(shape, np.uint8)
        pos = 0
        for batch in self.frames(decoded, a, b, getattr(options, "batch_size", None)):
            out[pos:pos + batch.shape[0]] = batch
            pos += batch.shape[0]
        if pos != b - a:
            raise RuntimeError(f"{self.name} rendered {pos} frames for {a}:{b}")
        return out

    def save(self, decoded: Any, output: str | None, options: Options) -> dict[str, Any]:
        from codec.device import device_name
        from codec.progress import progress
        from codec.video.io import STDIO, stream_frames, y4m_pix_fmt

        a, b = parse_frame_range(getattr(options, "frames", None), decoded.num_frames)
        chroma = getattr(decoded, "chroma", None)
        t0 = time.perf_counter()
        # frames, frames/s and the ETA on stderr (standard output may be the y4m itself)
        with progress(total=b - a, desc=f"{self.name} decode", unit="frame") as bar:
            def counted() -> Iterator[np.ndarray]:
                for batch in self.frames(decoded, a, b, getattr(options, "batch_size", None)):
                    bar.update(batch.shape[0])
                    yield batch
            n, secs = stream_frames(counted(), output, decoded.width, decoded.height, decoded.fps, chroma=chroma)
        y4m = output is not None and (str(output) == STDIO or str(output).lower().endswith(".y4m"))
        return {"frames": n, "width": decoded.width, "height": decoded.height,
                "fps": round(n / max(secs, 1e-9), 1), "seconds": round(time.perf_counter() - t0, 3),
                "output": output or "(none: decoded and discarded)",
                **({"pix_fmt": y4m_pix_fmt(chroma, decoded.width, decoded.height)} if y4m else {}),
                "device": device_name(decoded.device)}


def read_clips(source: Any, options: EncodeOptions) -> list:
    """Video sources -> VideoClips, with the options' --max-frames and --crop applied."""
    from codec.video.io import DEFAULT_FPS, VideoClip, center_crop, parse_crop, read_video

    frames, crop = getattr(options, "max_frames", None), getattr(options, "crop", None)
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim != 4 or source.shape[-1] != 3 or not source.shape[0]:
            raise UserError(f"a video array must be uint8 [T, H, W, 3], got {source.dtype} {list(source.shape)}")
        arr = source[:frames] if frames else source
        if crop:
            arr = center_crop(arr, parse_crop(crop))
        return [VideoClip(np.ascontiguousarray(arr), DEFAULT_FPS, "array", None, source.shape[1:3])]
    paths = [source] if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__") else list(source)
    if not paths:
        raise UserError("no input video")
    return [read_video(p, frames=frames, crop=crop) for p in paths]
