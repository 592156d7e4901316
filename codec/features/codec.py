"""`--codec student`: images -> the Entropic Student's quantised latents in a .ncb file -> predicted classes.

Each image's latent is one range-coded stream under the student's context prior when its file has one (training
fits it), else under its CompressAI CDF tables; out-of-range symbols are escaped losslessly, never clipped. Streams
are trimmed to whole bytes (version 2; version-1 files of whole 32-bit words still decode). The header names the
student's model id, and decoding with any other student is refused.
"""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from bitstream.coder import CdfTableModel, RangeDecoder, RangeEncoder, TableModel, trim_stream, untrim_stream
from bitstream.container import Reader, Writer
from bitstream.errors import BitstreamError
from bitstream.serial import ByteReader, ByteWriter
from codec.device import pick_device
from codec.errors import UserError
from codec.features.data import expand_inputs, load_images, to_float
from codec.features.model_file import load_student
from codec.features.student import Student
from codec.progress import print_table, write_json
from codec.registry import Codec, register

MAX_STREAM_BYTES = 1 << 24       # one image's latent stream; far above any real latent, refuses absurd claims


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


def open_student(path: str | None, device: str = "auto") -> tuple[Student, str, torch.device]:
    if not path:
        raise UserError("the student codec needs --model STUDENT (train one with `ncodec train student`)")
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
                     batch_size: int = 256) -> np.ndarray:
    """int32 symbols [N, C, h, w] -> predicted class per image (the server half's network)."""
    out = []
    for i in range(0, symbols.shape[0], batch_size):
        s = torch.from_numpy(np.ascontiguousarray(symbols[i:i + batch_size])).to(device)
        out.append(student.classify_symbols(s).argmax(1).cpu().numpy())
    return np.concatenate(out).astype(np.int64)


@register
class StudentCodec(Codec):
    name = "student"
    version = 2                       # 1: latents as whole 32-bit words; 2: trimmed (both decode)
    kind = "features"
    takes_many_inputs = True          # every image's latent goes into the one .ncb file
    description = "Entropic Student: images -> a learned, entropy-coded latent -> classes (split computing)"

    def encode(self, inputs: list[str], output: str, opts: dict[str, Any]) -> dict[str, Any]:
        student, model_id, dev = open_student(opts.get("model"), opts.get("device") or "auto")
        paths = expand_inputs(inputs)
        c, h, w = student.image_shape
        images = load_images(paths, c, (h, w))
        t0 = time.perf_counter()
        symbols = encode_images(student, images, dev)
        coder = LatentCoder(student)
        streams = [coder.encode(s) for s in symbols]
        encode_ms = (time.perf_counter() - t0) * 1000 / len(paths)
        lc, lh, lw = student.latent_shape
        writer = Writer(self.name, self.version, {"kind": self.kind, "count": len(paths), "latent_c": lc,
                                                  "latent_h": lh, "latent_w": lw, "model_id": model_id})
        body = ByteWriter()
        for s in streams:
            body.bytes_(s)
        writer.add_section("latents", body.getvalue())
        names = ByteWriter()
        for p in paths:
            names.str_(os.path.basename(p)[:255])
        writer.add_section("names", names.getvalue(), required=False)
        size = writer.write(output)
        payload = sum(len(s) for s in streams)
        return {"output": output, "images": len(paths), "bytes": size, "bytes_per_image": size / len(paths),
                "latent_bytes_per_image": payload / len(paths), "latent_shape": f"{lc}x{lh}x{lw}",
                "encode_ms_per_image": encode_ms, "model_id": model_id, "device": str(dev)}

    def decode(self, reader: Reader, output: str | None, opts: dict[str, Any]) -> dict[str, Any]:
        if output is not None and not output.lower().endswith(".json"):
            raise UserError(f"the student codec decodes to predicted classes: give -o a .json file, not {output}")
        student, model_id, dev = open_student(opts.get("model"), opts.get("device") or "auto")
        header = reader.header
        if not 1 <= reader.codec_version <= self.version:
            raise BitstreamError(f"student stream version {reader.codec_version} is unknown to this ncodec (it "
                                 f"decodes versions 1 to {self.version})")
        if header.get("kind") != self.kind:
            raise BitstreamError(f"header kind {header.get('kind')!r} is not {self.kind!r}")
        if header.get("model_id") != model_id:
            raise UserError(f"this file was encoded with student model {header.get('model_id')}, but "
                            f"{opts.get('model')} is model {model_id}: decode with the same student")
        shape = (header["latent_c"], header["latent_h"], header["latent_w"])
        if shape != student.latent_shape:
            raise BitstreamError(f"latent shape {shape} does not match the student's {student.latent_shape}")
        reader.require_known({"latents", "names"})
        count = int(header["count"])
        coder = LatentCoder(student, trim=reader.codec_version >= 2)
        body = ByteReader(reader.payload("latents"), "section 'latents'")
        symbols = np.stack([coder.decode(body.bytes_(MAX_STREAM_BYTES)) for _ in range(count)])
        body.expect_end()
        names = self._names(reader, count)
        t0 = time.perf_counter()
        predicted = classify_symbols(student, symbols, dev)
        server_ms = (time.perf_counter() - t0) * 1000 / count
        classes = student.classes
        rows = [{"image": n, "class": int(k), "label": classes[k]} for n, k in zip(names, predicted)]
        summary = {"images": count, "model_id": model_id, "decode_ms_per_image": server_ms,
                   "classes": " ".join(classes[k] for k in predicted), "predictions": rows}
        if output is not None:
            write_json(output, {"model_id": model_id, "predictions": rows})
            summary["output"] = output
        elif not opts.get("json"):
            print_table(rows, ["image", "class", "label"], title="predicted classes")
        return summary

    @staticmethod
    def _names(reader: Reader, count: int) -> list[str]:
        if not reader.has("names"):
            return [f"#{i}" for i in range(count)]
        r = ByteReader(reader.payload("names"), "section 'names'")
        names = [r.str_(255) for _ in range(count)]
        r.expect_end()
        return names

    def info(self, reader: Reader) -> dict[str, Any]:
        h = reader.header
        return {"images": h.get("count"),
                "latent_shape": f"{h.get('latent_c')}x{h.get('latent_h')}x{h.get('latent_w')}"}

