"""`--codec student`: images -> the Entropic Student's quantised latents in a .ncb file -> predicted classes.

Each image's latent is one range-coded stream under the student's context prior when its file has one (training
fits it), else under its CompressAI CDF tables; out-of-range symbols are escaped losslessly, never clipped. Streams
are trimmed to whole bytes (version 2; version-1 files of whole 32-bit words still decode). The header names the
student's model id, and decoding with any other student is refused.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from bitstream.coder import CdfTableModel, RangeDecoder, RangeEncoder, TableModel, trim_stream, untrim_stream
from bitstream.container import Reader, Writer
from bitstream.errors import BitstreamError
from bitstream.serial import ByteReader, ByteWriter
from codec.base import Bounds, Codec, Encoded, Job
from codec.device import pick_device
from codec.errors import UserError
from codec.features.collection import MAX_NAME_BYTES, Collection, check_name, read_collection, to_array
from codec.features.data import to_float
from codec.features.model_file import load_student, peek_student
from codec.features.options import StudentDecodeOptions, StudentOptions
from codec.features.student import Student
from codec.progress import write_json

MAX_STREAM_BYTES = 1 << 24       # one image's latent stream; far above any real latent, refuses absurd claims
CLASSIFY_BATCH = 256             # images the server half classifies at once


class LatentCoder:
    """One image's latent [C, h, w] <-> one range-coded stream, under the student's context prior when it has one
    (codec/features/context_prior.py), else its factorised CDF tables. Streams are trimmed to whole bytes
    (`trim_stream`); `trim=False` reads and writes the whole 32-bit words of version-1 files; `in_context=False` codes
    under the factorised tables even when the student has a context prior (to compare the two)."""

    def __init__(self, student: Student, trim: bool = True, in_context: bool = True):
        self.shape = student.latent_shape
        self.trim = trim
        c, h, w = self.shape
        self.tables = student.tables()
        self.model = CdfTableModel(*self.tables, np.repeat(np.arange(c), h * w))
        self.prior = student.context_prior if in_context else None
        if self.prior is not None:           # every channel's tables, one row per (channel, context)
            counts = self.prior.counts
            self.rows = TableModel(counts.reshape(-1, counts.shape[2]))
        self._escapes: dict[tuple[int, int], CdfTableModel] = {}

    def encode(self, symbols: np.ndarray) -> bytes:
        if tuple(symbols.shape) != self.shape:
            raise ValueError(f"latent of shape {symbols.shape}, expected {self.shape}")
        symbols = np.ascontiguousarray(symbols, dtype=np.int32)
        enc = RangeEncoder()
        if self.prior is None:
            enc.encode(symbols, self.model)
        else:
            self._encode_in_context(enc, symbols)
        data = enc.to_bytes()
        if not self.trim:
            return data
        return trim_stream(data, lambda words: np.array_equal(self._decode_words(words), symbols))

    def mean_bytes(self, symbols: np.ndarray) -> float:
        """Mean stream length of latents [N, C, h, w]."""
        return float(np.mean([len(self.encode(s)) for s in symbols]))

    def decode(self, data: bytes) -> np.ndarray:
        """Symbols [C, h, w]; BitstreamError for bytes that are not a stream."""
        if not data:                         # the seal writes a word, and trimming keeps at least one of its bytes
            raise BitstreamError("empty latent stream")
        return self._decode_words(untrim_stream(data) if self.trim else data)

    def _decode_words(self, words: bytes) -> np.ndarray:
        dec = RangeDecoder(words)
        if self.prior is None:
            return dec.decode(self.model, self.model.n).reshape(self.shape)
        return self._decode_in_context(dec)

    # ---- the context prior: channel by channel in its order, column by column (the column's rows at once)
    def _escape_model(self, channel: int, n: int) -> CdfTableModel:
        """The factorised tables for n escaped symbols of one channel (escapes are rare: built when needed)."""
        if (channel, n) not in self._escapes:
            self._escapes[(channel, n)] = CdfTableModel(*self.tables, np.full(n, channel))
        return self._escapes[(channel, n)]

    def _encode_in_context(self, enc: RangeEncoder, symbols: np.ndarray) -> None:
        prior = self.prior
        rows = prior.contexts(symbols) + np.arange(self.shape[0])[:, None, None] * prior.contexts_per_channel
        entries, order = prior.entries(symbols), prior.order
        if not np.any(entries == prior.escape):       # the usual case: one call, the same stream as column by column
            enc.encode(entries[order].transpose(0, 2, 1), self.rows.pick(rows[order].transpose(0, 2, 1).ravel()))
            return
        for ch in order:
            for x in range(self.shape[2]):
                enc.encode(entries[ch, :, x], self.rows.pick(rows[ch, :, x]))
                escaped = symbols[ch, entries[ch, :, x] == prior.escape, x]
                if escaped.size:
                    enc.encode(escaped, self._escape_model(int(ch), escaped.size))

    def _decode_in_context(self, dec: RangeDecoder) -> np.ndarray:
        prior = self.prior
        c, h, w = self.shape
        out = np.zeros(self.shape, np.int64)
        for ch in prior.order:
            base = prior.channel_contexts(out, ch, own=False) + ch * prior.contexts_per_channel
            for x in range(w):         # the own channel's parents lie in the columns to the left: decoded by now
                own = prior.channel_contexts(out, ch, own=True)[:, x]
                entries = dec.decode(self.rows.pick(base[:, x] + own), h)
                values = entries.astype(np.int64) + prior.min_symbol
                escaped = entries == prior.escape
                if escaped.any():
                    values[escaped] = dec.decode(self._escape_model(int(ch), int(escaped.sum())), int(escaped.sum()))
                out[ch, :, x] = values
        return out.astype(np.int32)


def open_student(path: str, device: str = "auto") -> tuple[Student, str, torch.device]:
    student, model_id = load_student(path)
    dev = pick_device(device)
    return student.to(dev).eval(), model_id, dev


@torch.no_grad()
def encode_images(student: Student, images: torch.Tensor, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """uint8 images [N, C, H, W] -> int32 symbols [N, C, h, w] (the device half's network)."""
    out = []
    for i in range(0, images.shape[0], batch_size):
        y = student.encode(to_float(images[i:i + batch_size].to(device)))
        out.append(student.to_symbols(y).cpu().numpy())
    return np.concatenate(out)


@torch.no_grad()
def classify_symbols(student: Student, symbols: np.ndarray, device: torch.device,
                     batch_size: int = CLASSIFY_BATCH) -> np.ndarray:
    """int32 symbols [N, C, h, w] -> predicted class per image (the server half's network)."""
    out = []
    for i in range(0, symbols.shape[0], batch_size):
        s = torch.from_numpy(np.ascontiguousarray(symbols[i:i + batch_size])).to(device)
        out.append(student.classify_symbols(s).argmax(1).cpu().numpy())
    return np.concatenate(out).astype(np.int64)


@dataclass
class Images:
    """What `StudentCodec.read` found: an image collection (loaded once the student says its size), or images in
    memory."""

    names: list[str]
    collection: Collection | None = None
    array: np.ndarray | None = None       # uint8 [N, H, W, C]

    def pixels(self, channels: int, size: tuple[int, int]) -> torch.Tensor:
        """uint8 [N, C, H, W] as the student takes them; another size is refused, never resized."""
        if self.collection is not None:
            return self.collection.pixels(channels, size)
        a = self.array
        if tuple(a.shape[1:3]) != tuple(size):
            raise UserError(f"the images are {a.shape[2]}x{a.shape[1]} pixels but the model takes "
                            f"{size[1]}x{size[0]} images")
        # through Pillow, as image files are: the same grey/RGB conversion whatever the array's channels
        return torch.from_numpy(np.stack([to_array(Image.fromarray(x[..., 0] if x.shape[2] == 1 else x), channels)
                                          for x in a]))


@dataclass
class Predictions:
    """A decoded student file: each image's predicted class."""

    names: list[str]
    predicted: np.ndarray          # int64 [N]
    classes: list[str]
    model_id: str
    decode_ms_per_image: float


class StudentCodec(Codec):
    name = "student"
    version = 2                       # 1: latents as whole 32-bit words; 2: trimmed
    readable = (1, 2)
    kind = "features"
    description = "Entropic Student: images -> a learned, entropy-coded latent -> classes (split computing)"
    sections = frozenset({"latents", "names"})
    many_inputs = True                # every image's latent goes into the one .ncb file
    Options = StudentOptions
    DecodeOptions = StudentDecodeOptions

    def read(self, source: Any, options: StudentOptions) -> Images:
        """Image files, folders of class subfolders, tar archives of them (codec/features/collection.py), or a
        uint8 array [N, H, W, C] or [N, H, W]."""
        if isinstance(source, np.ndarray):
            a = source[..., None] if source.ndim == 3 else source
            if source.dtype != np.uint8 or a.ndim != 4 or not len(a) or a.shape[3] not in (1, 2, 3, 4):
                raise UserError(f"images must be a uint8 array [N, H, W] or [N, H, W, C] (C = 1 to 4), got "
                                f"{source.dtype} {list(source.shape)}")
            return Images([f"#{i}" for i in range(len(a))], array=a)
        found = read_collection(source)
        return Images(found.names, collection=found)

    def encode(self, images: Images, options: StudentOptions, job: Job) -> Encoded:
        student, model_id, dev = open_student(options.model, options.device)
        c, h, w = student.image_shape
        pixels = images.pixels(c, (h, w))
        n = len(pixels)
        t0 = time.perf_counter()
        symbols = encode_images(student, pixels, dev)
        coder = LatentCoder(student)
        streams = [coder.encode(s) for s in symbols]
        encode_ms = (time.perf_counter() - t0) * 1000 / n
        lc, lh, lw = student.latent_shape
        writer = Writer(self.name, self.version, {"kind": self.kind, "count": n, "latent_c": lc, "latent_h": lh,
                                                  "latent_w": lw, "model_id": model_id})
        body = ByteWriter()
        for s in streams:
            body.bytes_(s)
        writer.add_section("latents", body.getvalue())
        if images.collection is not None:        # an array's images have no names: decoding numbers them
            names = ByteWriter()
            for name in images.names:
                names.str_(name)
            writer.add_section("names", names.getvalue(), required=False)
        size = len(writer.to_bytes())
        payload = sum(len(s) for s in streams)
        return Encoded(writer, {"images": n, "bytes": size, "bytes_per_image": size / n,
                                "latent_bytes_per_image": payload / n, "latent_shape": f"{lc}x{lh}x{lw}",
                                "encode_ms_per_image": encode_ms, "model_id": model_id, "device": str(dev)})

    def bounds(self, reader: Reader, options: StudentDecodeOptions) -> Bounds:
        """From the header and the student file's header (config and tensor shapes; nothing is loaded): the file
        read and its tensors, the network Student builds, every image's symbols (int32 kept, int64 while decoded)
        and a classification batch's feature maps. Each latent stream takes at least two bytes (its length and
        one byte), so the latents section bounds the count the header declares."""
        cost, file_bytes = peek_student(options.model)
        header = reader.header
        shape = (header.get("latent_c"), header.get("latent_h"), header.get("latent_w"))
        if shape != cost.latent_shape:
            raise BitstreamError(f"latent shape {shape} does not match the student's {cost.latent_shape}")
        count = header.get("count")
        if type(count) is not int or count < 1:
            raise BitstreamError(f"header: count {count!r} is not a positive integer")
        payload = reader.section("latents").length
        if 2 * count > payload:
            raise BitstreamError(f"section 'latents': {payload} bytes cannot hold {count} latent streams")
        latent = math.prod(cost.latent_shape)
        need = (2 * file_bytes + 8 * (cost.built + cost.stored) + payload + 12 * count * latent
                + 16 * min(count, CLASSIFY_BATCH) * cost.widest * cost.image_size ** 2)
        return Bounds(cost.built + cost.stored, 0, need)

    def load(self, reader: Reader, options: StudentDecodeOptions) -> Predictions:
        student, model_id, dev = open_student(options.model, options.device)
        header = reader.header
        if header.get("model_id") != model_id:
            raise UserError(f"this file was encoded with student model {header.get('model_id')}, but "
                            f"{options.model} is model {model_id}: decode with the same student")
        shape = (header.get("latent_c"), header.get("latent_h"), header.get("latent_w"))
        if shape != student.latent_shape:
            raise BitstreamError(f"latent shape {shape} does not match the student's {student.latent_shape}")
        count = header.get("count")
        if type(count) is not int or count < 1:
            raise BitstreamError(f"header: count {count!r} is not a positive integer")
        coder = LatentCoder(student, trim=reader.codec_version >= 2)
        body = ByteReader(reader.payload("latents"), "section 'latents'")
        symbols = np.stack([coder.decode(body.bytes_(MAX_STREAM_BYTES)) for _ in range(count)])
        body.expect_end()
        names = self._names(reader, count)
        t0 = time.perf_counter()
        predicted = classify_symbols(student, symbols, dev)
        server_ms = (time.perf_counter() - t0) * 1000 / count
        return Predictions(names, predicted, student.classes, model_id, server_ms)

    def array(self, decoded: Predictions, options: StudentDecodeOptions) -> np.ndarray:
        """The predicted class of each image, int64 [N]."""
        return decoded.predicted

    def check_output(self, output: str | None) -> None:
        if output is not None and not output.lower().endswith(".json"):
            raise UserError(f"the student codec decodes to predicted classes: give -o a .json file, not {output}")

    def save(self, decoded: Predictions, output: str | None, options: StudentDecodeOptions) -> dict[str, Any]:
        """The predictions as a summary (the CLI prints its rows as a table), and as JSON in `output` if given."""
        self.check_output(output)
        classes = decoded.classes
        rows = [{"image": n, "class": int(k), "label": classes[k]} for n, k in zip(decoded.names, decoded.predicted)]
        summary = {"images": len(rows), "model_id": decoded.model_id,
                   "decode_ms_per_image": decoded.decode_ms_per_image,
                   "classes": " ".join(classes[k] for k in decoded.predicted), "predictions": rows}
        if output is not None:
            write_json(output, {"model_id": decoded.model_id, "predictions": rows})
            summary["output"] = output
        return summary

    @staticmethod
    def _names(reader: Reader, count: int) -> list[str]:
        """Each image's path relative to its input's root (older files hold base names, which pass the same check).
        Untrusted: bounded, and checked with the encoder's rule (collection.check_name) before anything uses them."""
        if not reader.has("names"):
            return [f"#{i}" for i in range(count)]
        r = ByteReader(reader.payload("names"), "section 'names'")
        names = [r.str_(MAX_NAME_BYTES) for _ in range(count)]
        r.expect_end()
        for i, name in enumerate(names):
            problem = check_name(name)
            if problem is not None:
                raise BitstreamError(f"section 'names': image {i} has {problem}")
        return names

    def info(self, reader: Reader, options=None) -> dict[str, Any]:
        h = reader.header
        return {"images": h.get("count"),
                "latent_shape": f"{h.get('latent_c')}x{h.get('latent_h')}x{h.get('latent_w')}"}

