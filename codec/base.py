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
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator

import numpy as np

from bitstream.container import Reader, Writer
from bitstream.errors import BitstreamError
from codec.errors import UserError
from codec.options import EncodeOptions, Options
from codec.video.options import VideoDecodeOptions

if TYPE_CHECKING:
    import torch


@dataclass
class Job:
    """How one encode runs, beside what it makes: where a resumable fit keeps its checkpoint, who hears progress."""

    checkpoint: str | None = None                          # path prefix; None: no checkpoint
    on_progress: Callable[[dict], None] | None = None      # the fit loop's readings (codec.fit.FitConfig)
    show_bar: bool = True


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
        """The file's decoded form (a network ready to render, pixels, latents), after `check`."""
        self.check(reader)
        return self.load(reader, options)

    def check(self, reader: Reader) -> None:
        """Every check a file passes before a codec reads its sections: the one place versions are checked."""
        check_codec(reader, self.name, self.readable or (self.version,), self.kind)
        reader.require_known(self.known_section)

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

    def info(self, reader: Reader) -> dict[str, Any]:
        """What `ncodec info` adds to the container's fields."""
        return {}


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


def video_header(width: int, height: int, frames: int, fps: Fraction, **extra: Any) -> dict[str, Any]:
    """A video file's header (docs/FORMAT.md): the one place it is built."""
    return {"kind": "video", "width": width, "height": height, "frames": frames, "fps_num": fps.numerator,
            "fps_den": fps.denominator, "pix_fmt": "rgb24", **extra}


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
def decode_settings(device: "torch.device") -> Iterator[None]:
    """The settings every decode runs under, so that the encoder's check and a fresh `ncodec decode` agree:
    float32 matmuls and convolutions (no TF32, which fitting turns on), deterministic cuDNN algorithms, and the
    CPU thread rule. What it changes is restored on exit, so a fit after a decode runs as fast as before."""
    import torch

    from codec.device import cpu_threads

    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_num_threads())
    try:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        if device.type == "cpu":
            torch.set_num_threads(cpu_threads())
        yield
    finally:
        (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = saved[:4]
        torch.set_num_threads(saved[4])


def to_uint8_frames(out: "torch.Tensor") -> np.ndarray:
    """A network's output [B, 3, H, W] in [0, 1] -> uint8 frames [B, H, W, 3], rounded to nearest."""
    import torch

    return out.float().clamp_(0, 1).mul_(255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class VideoCodec(Codec):
    """A codec whose decoded form renders frames: `render` is the codec's, `frames` the one way to get them."""

    kind = "video"
    DecodeOptions = VideoDecodeOptions

    # -- encoding

    def read(self, source: Any, options: EncodeOptions):
        """One video: a path (file or PNG folder) or a uint8 array [T, H, W, 3]."""
        clips = read_clips(source, options)
        if len(clips) != 1:
            raise UserError(f"{self.name} encodes one video at a time, got {len(clips)} inputs")
        return clips[0]

    def measure(self, data: bytes, reference: np.ndarray, device: "torch.device", **decode_options: Any
                ) -> dict[str, Any]:
        """Decode `data` as `ncodec decode` will and compare it with `reference`: the encoder's honest numbers
        (with the sha256 of the decoded frames, what "decodes to the same frames" is checked with)."""
        from codec.video import metrics

        options = self.DecodeOptions(device=str(device), **decode_options)
        t0 = time.perf_counter()
        decoded = self.open(Reader.from_bytes(data), options)
        frames = np.concatenate(list(self.frames(decoded)))
        seconds = time.perf_counter() - t0
        if frames.shape != reference.shape:
            raise RuntimeError(f"decoded {frames.shape} frames for a {reference.shape} reference")
        mean, per_frame = metrics.psnr(reference, frames)
        t, h, w = reference.shape[:3]
        return {"bytes": len(data), "bpp": metrics.bpp(len(data), t, h, w), "psnr": float(mean),
                "ms_ssim": float(metrics.ms_ssim(reference, frames, device=device)),
                "decode_fps": round(t / max(seconds, 1e-9), 1), "per_frame_psnr": per_frame,
                "sha256": frames_digest(frames)}

    # -- decoding

    def open(self, reader: Reader, options: Options):
        if self.segmentable and reader.has("segments"):
            from codec.video import segmented

            check_codec(reader, self.name, self.readable or (self.version,), self.kind)
            return segmented.SegmentedVideo(reader, options)
        return super().open(reader, options)

    def render(self, decoded: Any, start: int, stop: int, batch_size: int | None) -> Iterator["torch.Tensor"]:
        """Frames start..stop as the network's float output [B, 3, H, W] in [0, 1], batch by batch."""
        raise NotImplementedError

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

        with decode_settings(decoded.device):
            batches = self.render(decoded, start, stop, batch_size)
            while True:
                # inference mode around each step only: the caller's code between batches runs as it would
                with torch.inference_mode():
                    out = next(batches, None)
                    if out is None:
                        return
                    batch = to_uint8_frames(out)
                yield batch

    def array(self, decoded: Any, options: Options) -> np.ndarray:
        a, b = parse_frame_range(getattr(options, "frames", None), decoded.num_frames)
        return np.concatenate(list(self.frames(decoded, a, b, getattr(options, "batch_size", None))))

    def save(self, decoded: Any, output: str | None, options: Options) -> dict[str, Any]:
        from codec.device import device_name
        from codec.progress import progress
        from codec.video.io import stream_frames

        a, b = parse_frame_range(getattr(options, "frames", None), decoded.num_frames)
        t0 = time.perf_counter()
        with progress(total=b - a, desc=f"{self.name} decode", unit="frame") as bar:
            def counted() -> Iterator[np.ndarray]:
                for batch in self.frames(decoded, a, b, getattr(options, "batch_size", None)):
                    bar.update(batch.shape[0])
                    yield batch
            n, secs = stream_frames(counted(), output, decoded.width, decoded.height, decoded.fps)
        return {"frames": n, "width": decoded.width, "height": decoded.height,
                "fps": round(n / max(secs, 1e-9), 1), "seconds": round(time.perf_counter() - t0, 3),
                "output": output or "(none: decoded and discarded)", "device": device_name(decoded.device)}


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
        return [VideoClip(np.ascontiguousarray(arr), DEFAULT_FPS, "array")]
    paths = [source] if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__") else list(source)
    if not paths:
        raise UserError("no input video")
    return [read_video(p, frames=frames, crop=crop) for p in paths]
