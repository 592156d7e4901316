"""`--codec pc`: lossless images coded pixel by pixel with an HCLT's exact conditionals.

File layout (.ncb, kind "images"):
    header   count, height, width, channels; model_sha256 (32 bytes, the .pcm file's hash);
             batch (images coded together; the decoder mirrors it); squeeze (1: .npy output is N x H x W);
             pixels_sha256 (32 bytes, the SHA-256 of the images as uint8 [N, H, W, C]; files before it have none):
             a decode that gives other pixels is refused, never returned
    pixels   the range coder's words: batch after batch, pixel by pixel in the tree's pre-order, all images
             of a batch at each step
    names    optional: the PNG file names, restored when decoding to a folder
"""
from __future__ import annotations

import hashlib
import math
import re
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from bitstream.container import Reader, Writer
from bitstream.errors import BitstreamError
from bitstream.serial import ByteReader, ByteWriter
from codec.base import Bounds, Codec, Encoded, Job
from codec.errors import UnverifiedOutputWarning, UserError
from codec.lossless.pc import coding
from codec.lossless.pc.images import ImageSet, images_from_array, read_images, write_images
from codec.lossless.pc.model_file import PCModel, load_model, peek
from codec.lossless.pc.options import DEFAULT_BATCH, MAX_BATCH, PCDecodeOptions, PCOptions

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


@dataclass
class DecodedImages:
    """A decoded pc file: its images, their stored names, and how the decode went."""

    pixels: np.ndarray            # [N, H, W, C] uint8
    names: list[str] | None
    squeeze: bool                 # the input was N x H x W: arrays and .npy outputs come back that way
    device: str
    seconds: float
    verified: bool = True         # False: the file has no pixels_sha256 (before version 3), nothing checked them


def pixels_digest(pixels: np.ndarray) -> bytes:
    """SHA-256 of images as uint8 [N, H, W, C] in C order: what the header's pixels_sha256 holds."""
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.uint8)).digest()


def _header(reader: Reader) -> tuple[int, int, bytes | None]:
    """(count, batch, pixels_sha256 or None) after checking the header fields the decoder needs."""
    hdr = reader.header
    sha = hdr.get("model_sha256")
    if not isinstance(sha, bytes) or len(sha) != 32:
        raise BitstreamError("header: model_sha256 is missing or not 32 bytes")
    batch = hdr.get("batch")
    if type(batch) is not int or not 1 <= batch <= MAX_BATCH:
        raise BitstreamError(f"header: batch {batch!r} is not in [1, {MAX_BATCH}]")
    if hdr.get("squeeze") not in (0, 1):
        raise BitstreamError("header: squeeze must be 0 or 1")
    n = hdr.get("count")
    if type(n) is not int or n < 1:
        raise BitstreamError(f"header: count {n!r} is not a positive integer")
    digest = hdr.get("pixels_sha256")
    if digest is None and reader.codec_version >= DIGEST_VERSION:
        raise BitstreamError(f"header: pixels_sha256 is missing (pc version {reader.codec_version} files have it)")
    if digest is not None and (not isinstance(digest, bytes) or len(digest) != 32):
        raise BitstreamError("header: pixels_sha256 is not 32 bytes")
    return n, batch, digest


def least_bits_per_image(model: PCModel) -> float:
    """A lower bound on what one image costs under `model`: before decoding, it bounds how many images a pixels
    section can honestly hold (a header claiming more would make the decoder run on for nothing).

    A pixel's coding table mixes the latent states' integer leaf rows, so no symbol's share exceeds the largest
    share in any one row; the coder's 24-bit quantisation adds at most 2^-23 to it, and leaves every other of the
    256 symbols at least 2^-24."""
    leaf = coding.quantize_params(model.leaf)                              # [D, M, K], as the coder uses them
    share = (leaf / leaf.sum(-1, keepdims=True)).max(axis=(1, 2))          # [D]
    p = np.minimum(share + 2.0**-23, 1 - (leaf.shape[2] - 1) * 2.0**-24)
    return float(-np.log2(p).sum())


DIGEST_VERSION = 3      # from this version on the header must carry pixels_sha256 (version 2's arithmetic)


def coder_version(file_version: int) -> int:
    """The coder's message arithmetic (coding.py) a file version uses."""
    return min(file_version, coding.VERSION)


class PCCodec(Codec):
    name = "pc"
    version = DIGEST_VERSION          # version 2's arithmetic, with the pixels' digest required
    readable = (*coding.VERSIONS, DIGEST_VERSION)   # versions 1 and 2 still decode (without a digest check)
    kind = "images"
    description = "lossless images: hidden Chow-Liu tree circuit (--model MODEL.pcm) + range coder"
    sections = frozenset({"pixels", "names"})
    many_inputs = True                # every image goes into the one .ncb file
    Options = PCOptions
    DecodeOptions = PCDecodeOptions

    def read(self, source: Any, options: PCOptions) -> ImageSet:
        """Paths (PNGs, PNG folders, .npy, MNIST IDX files) or a uint8 array [N, H, W] / [N, H, W, C]."""
        if isinstance(source, np.ndarray):
            return images_from_array(source)
        return read_images(source)

    def encode(self, images: ImageSet, options: PCOptions, job: Job) -> Encoded:
        from codec.device import pick_device
        from codec.progress import progress

        model = load_model(options.model)
        if images.shape != model.shape:
            raise UserError("images are {}x{}x{} (HxWxC) but the model codes {}x{}x{}".format(
                *images.shape, *model.shape))
        device = pick_device(options.device)
        n = len(images.pixels)
        t0 = time.perf_counter()
        with progress(total=n, desc="pc encode", unit="img", disable=None if job.show_bar else True) as bar:
            data, ideal = encode_array(model, images.pixels, device, options.pc_batch, on_batch=bar.update)
        seconds = time.perf_counter() - t0
        h, w, c = model.shape
        header = {"kind": self.kind, "count": n, "height": h, "width": w, "channels": c,
                  "model_sha256": bytes.fromhex(model.sha256), "batch": options.pc_batch,
                  "squeeze": int(images.squeeze), "pixels_sha256": pixels_digest(images.pixels)}
        writer = Writer(self.name, self.version, header)
        writer.add_section("pixels", data)
        if images.names is not None and all(_NAME_RE.fullmatch(x) for x in images.names):
            names = ByteWriter()
            names.varint(len(images.names))
            for x in images.names:
                names.str_(x)
            writer.add_section("names", names.getvalue(), required=False)
        size = len(writer.to_bytes())
        dims = n * h * w * c
        return Encoded(writer, {
            "images": n, "height": h, "width": w, "channels": c, "bytes": size, "bits_per_dim": size * 8 / dims,
            "payload_bits_per_dim": len(data) * 8 / dims, "ideal_bits_per_dim": ideal / dims,
            "model_sha256": model.sha256, "device": str(device), "seconds": seconds,
            "images_per_s": n / max(seconds, 1e-9)})

    def bounds(self, reader: Reader, options: PCDecodeOptions) -> Bounds:
        """From the header and the model file's shapes and tree (its tables are not loaded): the model file read
        and parsed, its integer tables (float64, transposed copies, and the quantiser's buffers), the coder's open
        messages (two [batch, M] float64 per tree level) and per-pixel tables, and the decoded images. The pixels
        section must be able to hold the images the header declares."""
        n, batch, _ = _header(reader)
        shape = peek(options.model)
        d, m = shape.variables, shape.latents
        values = d * m * (m + 256)
        payload = reader.section("pixels").length
        # Even a certain symbol costs -log2(1 - 255 * 2^-24) bits under the coder's 24-bit probabilities, so
        # the payload bounds how many pixels the header may honestly claim (before allocating for them).
        least = n * d * -math.log2(1 - 255 * 2.0**-24)
        if payload * 8 + 64 < least:
            raise BitstreamError(f"section 'pixels': {payload} bytes cannot hold {n} images")
        b = min(batch, n)
        need = (3 * shape.file_bytes + 20 * values + 24 * d * m * max(m, 256) + 16 * (shape.depth + 2) * b * m
                + 48 * b * 256 + n * d + payload)
        return Bounds(values + m, 0, need)

    def load(self, reader: Reader, options: PCDecodeOptions) -> DecodedImages:
        from codec.device import pick_device
        from codec.progress import progress

        hdr = reader.header
        n, batch, digest = _header(reader)
        sha = hdr["model_sha256"]
        model = load_model(options.model)
        if model.sha256 != sha.hex():
            raise UserError(f"{options.model} (sha256 {model.sha256[:16]}...) is not the model this file was "
                            f"coded with (sha256 {sha.hex()[:16]}...)")
        shape = (hdr.get("height"), hdr.get("width"), hdr.get("channels"))
        if shape != model.shape:
            raise BitstreamError("header: image shape {}x{}x{} differs from its model's".format(*shape))
        names = self._names(reader, n)
        payload = reader.payload("pixels")
        if len(payload) * 8 + 64 < n * least_bits_per_image(model):
            raise BitstreamError(f"section 'pixels': {len(payload)} bytes cannot hold {n} images under this model")
        device = pick_device(options.device)
        t0 = time.perf_counter()
        with progress(total=n, desc="pc decode", unit="img") as bar:
            pixels = decode_array(model, payload, n, device, batch, on_batch=bar.update,
                                  version=coder_version(reader.codec_version))
        if digest is not None and pixels_digest(pixels) != digest:
            raise BitstreamError("section 'pixels' decodes to images whose SHA-256 differs from the header's "
                                 "pixels_sha256: the file is damaged")
        if digest is None:      # older files decode as before, but a damaged payload would go unnoticed: say so
            warnings.warn(f"this pc file (version {reader.codec_version}) carries no pixel digest; its output "
                          f"cannot be verified", UnverifiedOutputWarning, stacklevel=2)
        return DecodedImages(pixels, names, bool(hdr["squeeze"]), str(device), time.perf_counter() - t0,
                             verified=digest is not None)

    def array(self, decoded: DecodedImages, options: PCDecodeOptions) -> np.ndarray:
        """uint8 [N, H, W] when the file says its input was (squeeze), else [N, H, W, C]."""
        p = decoded.pixels
        return p[..., 0] if decoded.squeeze and p.shape[3] == 1 else p

    def check_output(self, output: str | None) -> None:
        if not output:
            raise UserError("decode needs -o: a folder for PNGs or a file.npy")

    def save(self, decoded: DecodedImages, output: str | None, options: PCDecodeOptions) -> dict[str, Any]:
        self.check_output(output)
        written = write_images(output, decoded.pixels, decoded.names, squeeze=decoded.squeeze)
        n, h, w, c = decoded.pixels.shape
        return {"output": output, "format": written, "images": n, "height": h, "width": w, "channels": c,
                "device": decoded.device, "seconds": decoded.seconds,
                "images_per_s": n / max(decoded.seconds, 1e-9)}

    @staticmethod
    def _names(reader: Reader, count: int) -> list[str] | None:
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

    def info(self, reader: Reader, options=None) -> dict[str, Any]:
        hdr = reader.header
        dims = 1
        for key in ("count", "height", "width", "channels"):
            dims *= hdr.get(key, 0) if type(hdr.get(key)) is int else 0
        return {"bits_per_dim": reader.file_size * 8 / dims} if dims else {}
