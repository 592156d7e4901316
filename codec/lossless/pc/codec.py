"""`--codec pc`: lossless images coded pixel by pixel with an HCLT's exact conditionals.

File layout (.ncb, kind "images"):
    header   count, height, width, channels; model_sha256 (32 bytes, the .pcm file's hash);
             batch (images coded together; the decoder mirrors it); squeeze (1: .npy output is N x H x W)
    pixels   the range coder's words: batch after batch, pixel by pixel in the tree's pre-order, all images
             of a batch at each step
    names    optional: the PNG file names, restored when decoding to a folder
"""
from __future__ import annotations

import math
import re
import time
from typing import Any

import click
import numpy as np

from bitstream.errors import BitstreamError
from bitstream.serial import ByteReader, ByteWriter
from codec.errors import UserError
from codec.lossless.pc import coding
from codec.lossless.pc.images import read_images, write_images
from codec.lossless.pc.model_file import PCModel, load_model
from codec.registry import Codec, register

DEFAULT_BATCH = 2000
MAX_BATCH = 1 << 20
_NAME_RE = re.compile(r"[A-Za-z0-9_.+-]{1,200}\.png", re.IGNORECASE)


def integer_model(model: PCModel, device, version: int = coding.VERSION) -> coding.IntegerHCLT:
    return coding.IntegerHCLT(model.parent, model.root, model.edge, model.leaf, device=device, version=version)


def encode_array(model: PCModel, pixels: np.ndarray, device="cpu", batch: int = DEFAULT_BATCH,
                 on_batch=None) -> tuple[bytes, float]:
    """Images [N, H, W, C] uint8 -> (coded words, ideal bits under the integer tables)."""
    from bitstream.coder import RangeEncoder, TableModel

    enc = RangeEncoder()
    flat = pixels.reshape(len(pixels), -1)
    coding.encode_images(integer_model(model, device), flat, enc, TableModel, chunk=batch, on_chunk=on_batch)
    return enc.to_bytes(), float(enc.ideal_bits)


def decode_array(model: PCModel, data: bytes, count: int, device="cpu", batch: int = DEFAULT_BATCH,
                 on_batch=None, version: int = coding.VERSION) -> np.ndarray:
    """Inverse of encode_array (a stream coded with the coder's `version`): [count, H, W, C] uint8."""
    from bitstream.coder import RangeDecoder, TableModel

    dec = RangeDecoder(data)
    flat = coding.decode_images(integer_model(model, device, version), dec, count, TableModel, chunk=batch,
                                on_chunk=on_batch)
    return flat.reshape(count, model.height, model.width, model.channels)


def _device(opts: dict[str, Any]):
    from codec.device import pick_device

    return pick_device(opts.get("device") or "auto")


@register
class PCCodec(Codec):
    name = "pc"
    version = coding.VERSION          # the coder's message arithmetic (coding.py); version 1 files still decode
    kind = "images"
    takes_many_inputs = True          # every image goes into the one .ncb file
    description = "lossless images: hidden Chow-Liu tree circuit (--model MODEL.pcm) + range coder"
    encode_options = [
        click.Option(["--pc-batch"], type=int, default=DEFAULT_BATCH, show_default=True,
                     help="pc: images coded together (speed and memory; the size barely changes)."),
    ]

    def encode(self, inputs: list[str], output: str, opts: dict[str, Any]) -> dict[str, Any]:
        from bitstream.container import Writer
        from codec.progress import progress

        model = load_model(opts.get("model"))
        images = read_images(inputs)
        if images.shape != model.shape:
            raise UserError("images are {}x{}x{} (HxWxC) but the model codes {}x{}x{}".format(
                *images.shape, *model.shape))
        batch = int(opts.get("pc_batch") or DEFAULT_BATCH)
        if not 1 <= batch <= MAX_BATCH:
            raise UserError(f"--pc-batch must be in [1, {MAX_BATCH}], got {batch}")
        device = _device(opts)
        n = len(images.pixels)
        t0 = time.perf_counter()
        with progress(total=n, desc="pc encode", unit="img") as bar:
            data, ideal = encode_array(model, images.pixels, device, batch, on_batch=bar.update)
        seconds = time.perf_counter() - t0
        h, w, c = model.shape
        header = {"kind": "images", "count": n, "height": h, "width": w, "channels": c,
                  "model_sha256": bytes.fromhex(model.sha256), "batch": batch, "squeeze": int(images.squeeze)}
        writer = Writer(self.name, self.version, header)
        writer.add_section("pixels", data)
        if images.names is not None and all(_NAME_RE.fullmatch(x) for x in images.names):
            names = ByteWriter()
            names.varint(len(images.names))
            for x in images.names:
                names.str_(x)
            writer.add_section("names", names.getvalue(), required=False)
        size = writer.write(output)
        dims = n * h * w * c
        return {"output": output, "images": n, "height": h, "width": w, "channels": c, "bytes": size,
                "bits_per_dim": size * 8 / dims, "payload_bits_per_dim": len(data) * 8 / dims,
                "ideal_bits_per_dim": ideal / dims, "model_sha256": model.sha256, "device": str(device),
                "seconds": seconds, "images_per_s": n / max(seconds, 1e-9)}

    def _check(self, reader) -> dict[str, Any]:
        reader.require_known({"pixels", "names"})
        if reader.codec_version not in coding.VERSIONS:
            raise BitstreamError(f"pc stream version {reader.codec_version} is unknown to this ncodec (it decodes "
                                 f"{', '.join(map(str, coding.VERSIONS))}): upgrade ncodec")
        hdr = reader.header
        if hdr.get("kind") != "images":
            raise BitstreamError(f"header: kind {hdr.get('kind')!r} is not 'images'")
        sha = hdr.get("model_sha256")
        if not isinstance(sha, bytes) or len(sha) != 32:
            raise BitstreamError("header: model_sha256 is missing or not 32 bytes")
        batch = hdr.get("batch")
        if type(batch) is not int or not 1 <= batch <= MAX_BATCH:
            raise BitstreamError(f"header: batch {batch!r} is not in [1, {MAX_BATCH}]")
        if hdr.get("squeeze") not in (0, 1):
            raise BitstreamError("header: squeeze must be 0 or 1")
        return hdr

    def decode(self, reader, output: str | None, opts: dict[str, Any]) -> dict[str, Any]:
        from codec.progress import progress

        hdr = self._check(reader)
        if not output:
            raise UserError("decode needs -o: a folder for PNGs or a file.npy")
        model = load_model(opts.get("model"))
        if model.sha256 != hdr["model_sha256"].hex():
            raise UserError(f"{opts.get('model')} (sha256 {model.sha256[:16]}...) is not the model this file was "
                            f"coded with (sha256 {hdr['model_sha256'].hex()[:16]}...)")
        shape = (hdr["height"], hdr["width"], hdr["channels"])
        if shape != model.shape:
            raise BitstreamError("header: image shape {}x{}x{} differs from its model's".format(*shape))
        names = self._names(reader, hdr["count"])
        n = hdr["count"]
        payload = reader.payload("pixels")
        # Even a certain symbol costs -log2(1 - 255 * 2^-24) bits under the coder's 24-bit probabilities, so
        # the payload bounds how many pixels the header may honestly claim (before allocating for them).
        least = n * model.parent.size * -math.log2(1 - 255 * 2.0**-24)
        if len(payload) * 8 + 64 < least:
            raise BitstreamError(f"section 'pixels': {len(payload)} bytes cannot hold {n} images")
        device = _device(opts)
        t0 = time.perf_counter()
        with progress(total=n, desc="pc decode", unit="img") as bar:
            pixels = decode_array(model, payload, n, device, hdr["batch"], on_batch=bar.update,
                                  version=reader.codec_version)
        seconds = time.perf_counter() - t0
        written = write_images(output, pixels, names, squeeze=bool(hdr["squeeze"]))
        return {"output": output, "format": written, "images": n, "height": shape[0], "width": shape[1],
                "channels": shape[2], "device": str(device), "seconds": seconds,
                "images_per_s": n / max(seconds, 1e-9)}

    @staticmethod
    def _names(reader, count: int) -> list[str] | None:
        if not reader.has("names"):
            return None
        r = ByteReader(reader.payload("names"), what="section 'names'")
        k = r.varint(max_value=count)
        if k != count:
            raise BitstreamError(f"section 'names': {k} names for {count} images")
        names = [r.str_(max_len=256) for _ in range(k)]
        r.expect_end()
        if len(set(names)) != len(names) or not all(_NAME_RE.fullmatch(x) for x in names):
            raise BitstreamError("section 'names': file names must be unique plain names ending in .png")
        return names

    def info(self, reader) -> dict[str, Any]:
        hdr = reader.header
        dims = 1
        for key in ("count", "height", "width", "channels"):
            dims *= hdr.get(key, 0) if type(hdr.get(key)) is int else 0
        return {"bits_per_dim": reader.file_size * 8 / dims} if dims else {}
