"""The .pcm model file: a safetensors file (no pickle, nothing executed on load) with the HCLT's tree and its
probabilities, plus metadata (image shape, latents, how it was trained). A file is named by the sha256 of its
bytes; the .ncb files coded with it carry that hash.

Probabilities are stored as float32 probabilities (not logs): the coder turns them into integers with
exact arithmetic only (see coding.quantize_params), so no transcendental function that could differ between
machines sits between the file and the coded bits. Version 2 files (the zoo's, `to_bytes(packed_tables=True)`) hold the
edge and leaf tables as 8-bit codes, xz-compressed, with their codebook (packed.py): a table lookup on load.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from bitstream.atomic import write_atomic
from codec.errors import UserError
from codec.lossless.pc import hclt, packed
from codec.lossless.pc.circuit import HCLT

FORMAT = "ncodec-pc-hclt"
VERSION = 1                  # float tables (float32; the first zoo files float16)
PACKED_VERSION = 2           # edge and leaf as packed codes (`{name}_xz`, `{name}_codebook`)
PACKED_TABLES = ("edge", "leaf")
MAX_TABLE_VALUES = 2**30     # what a 4 GiB float32 file could hold: packed tables may not claim more
MAX_FILE_BYTES = 2**32
MAX_LATENTS = 4096
MAX_VARS = 2**20


@dataclass
class PCModel:
    """A loaded model: tree, probabilities (float32) and the image shape it codes."""
    parent: np.ndarray            # [D] int64, -1 at the root
    root: np.ndarray              # [M]
    edge: np.ndarray              # [D, M, M], row = parent state
    leaf: np.ndarray              # [D, M, 256]
    height: int
    width: int
    channels: int
    sha256: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def latents(self) -> int:
        return self.root.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.height, self.width, self.channels

    def circuit(self) -> HCLT:
        """The float model (for likelihoods and further training)."""
        m = HCLT(self.parent, self.latents, self.leaf.shape[2])
        with torch.no_grad():
            for param, p in ((m.log_root, self.root), (m.log_edge, self.edge), (m.log_leaf, self.leaf)):
                t = torch.from_numpy(p.astype(np.float64))
                param.copy_((t / t.sum(-1, keepdim=True)).clamp_min(1e-30).log().float())
        return m


def probabilities(model: HCLT) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The circuit's normalised parameters as float32 probabilities (what a model file stores)."""
    out = []
    with torch.no_grad():
        for p in (model.log_root, model.log_edge, model.log_leaf):
            q = p.detach().double().cpu().exp()
            out.append((q / q.sum(-1, keepdim=True)).float().numpy())
    return out[0], out[1], out[2]


def from_circuit(model: HCLT, height: int, width: int, channels: int, meta: dict | None = None) -> PCModel:
    root, edge, leaf = probabilities(model)
    return PCModel(model.tree.astype(np.int64), root, edge, leaf, int(height), int(width), int(channels),
                   meta=dict(meta or {}))


def to_bytes(m: PCModel, packed_tables: bool = False) -> bytes:
    """The file's bytes; `packed_tables`: edge and leaf as 8-bit codes (version 2, a slightly different model whose
    bits are measured again)."""
    from safetensors.numpy import save

    meta = {"format": FORMAT, "version": str(PACKED_VERSION if packed_tables else VERSION),
            "height": str(m.height), "width": str(m.width), "channels": str(m.channels), "latents": str(m.latents),
            "info": json.dumps(m.meta, sort_keys=True)}
    tensors = {"parent": np.ascontiguousarray(m.parent, dtype=np.int64),
               "root": np.ascontiguousarray(m.root, dtype=np.float32)}
    for name in PACKED_TABLES:
        if packed_tables:
            tensors[f"{name}_xz"] = np.frombuffer(packed.pack(getattr(m, name)), dtype=np.uint8)
            tensors[f"{name}_codebook"] = packed.codebook()
        else:
            tensors[name] = np.ascontiguousarray(getattr(m, name), dtype=np.float32)
    return save(tensors, metadata=meta)


def save_model(m: PCModel, path: str | os.PathLike) -> str:
    """Write atomically; returns (and sets) the file's sha256."""
    data = to_bytes(m)
    write_atomic(path, data)
    m.sha256 = hashlib.sha256(data).hexdigest()
    return m.sha256


def from_bytes(data: bytes, what: str = "model") -> PCModel:
    """Parse and validate a model file's bytes; anything wrong is a one-line UserError."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    bad = f"{what} is not an ncodec pc model file"
    try:
        tensors = load(bytes(data))
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(bytes(data[8:8 + header_len])).get("__metadata__") or {}
    except (SafetensorError, ValueError, AttributeError, RecursionError) as e:   # framing, header JSON, metadata
        raise UserError(f"{bad} ({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{bad} (format tag {meta.get('format')!r})")
    if meta.get("version") not in (str(VERSION), str(PACKED_VERSION)):
        raise UserError(f"{what}: pc model version {meta.get('version')!r} is not supported "
                        f"(this build reads {VERSION} and {PACKED_VERSION})")
    try:
        h, w, c = (int(meta[k]) for k in ("height", "width", "channels"))
        info = json.loads(meta.get("info", "{}"))
    except (KeyError, ValueError, TypeError, RecursionError):
        raise UserError(f"{bad} (metadata incomplete)") from None
    for name in ("root", "edge", "leaf"):     # the first zoo files stored probabilities in half precision
        if name in tensors and tensors[name].dtype == np.float16:
            tensors[name] = tensors[name].astype(np.float32)
    if meta.get("version") == str(PACKED_VERSION):
        _unpack_tables(tensors, what)
    need = {"parent": np.int64, "root": np.float32, "edge": np.float32, "leaf": np.float32}
    for name, dt in need.items():
        if name not in tensors or tensors[name].dtype != dt:
            raise UserError(f"{bad} (tensor {name!r} missing or not {np.dtype(dt).name})")
    parent, root, edge, leaf = (tensors[k] for k in ("parent", "root", "edge", "leaf"))
    d = parent.shape[0] if parent.ndim == 1 else -1
    m = root.shape[0] if root.ndim == 1 else -1
    if not (1 <= d <= MAX_VARS and 1 <= m <= MAX_LATENTS and edge.shape == (d, m, m)
            and leaf.ndim == 3 and leaf.shape[:2] == (d, m) and leaf.shape[2] == 256):
        raise UserError(f"{bad} (tensor shapes do not fit together)")
    if min(h, w, c) < 1 or h * w * c != d:
        raise UserError(f"{bad} (image shape {h}x{w}x{c} does not match its {d} variables)")
    for name, p in (("root", root), ("edge", edge), ("leaf", leaf)):
        if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
            raise UserError(f"{bad} (tensor {name!r} holds values that are not probabilities)")
    hclt.check_tree(parent)
    return PCModel(parent, root, edge, leaf, h, w, c, hashlib.sha256(bytes(data)).hexdigest(), info)


def _unpack_tables(tensors: dict[str, np.ndarray], what: str) -> None:
    """Version 2: edge and leaf from their codes, at the shapes the tree and the root give (bounded first)."""
    parent, root = tensors.get("parent"), tensors.get("root")
    if parent is None or root is None or parent.ndim != 1 or root.ndim != 1:
        raise UserError(f"{what} is not an ncodec pc model file (tensor 'parent' or 'root' missing)")
    d, m = parent.shape[0], root.shape[0]
    if not (1 <= d <= MAX_VARS and 1 <= m <= MAX_LATENTS and d * m * (m + 256) <= MAX_TABLE_VALUES):
        raise UserError(f"{what} is not an ncodec pc model file ({d} variables x {m} latents is too large)")
    for name, shape in (("edge", (d, m, m)), ("leaf", (d, m, 256))):
        blob, table = tensors.get(f"{name}_xz"), tensors.get(f"{name}_codebook")
        if blob is None or table is None or blob.dtype != np.uint8 or blob.ndim != 1:
            raise UserError(f"{what} is not an ncodec pc model file (packed tensor {name!r} missing)")
        tensors[name] = packed.unpack(blob.tobytes(), table, shape, f"{what}, tensor {name!r}")


def load_model(path: str | os.PathLike) -> PCModel:
    if path is None:
        raise UserError("the pc codec needs --model MODEL.pcm (train one with `ncodec train pc`)")
    from codec.zoo import resolve_model

    path = resolve_model(path)                  # a path, or the name of a zoo model (`ncodec models`)
    if not os.path.isfile(path):
        raise UserError(f"model file {path} does not exist")
    if os.path.getsize(path) > MAX_FILE_BYTES:
        raise UserError(f"model file {path} is larger than 4 GiB: not a pc model")
    with open(path, "rb") as f:
        data = f.read()
    return from_bytes(data, what=f"model file {path}")


@dataclass(frozen=True)
class ModelShape:
    """What a model file asks of a coder, read from its safetensors header and tree alone (the codec's bounds)."""
    variables: int       # D
    latents: int         # M
    depth: int           # the tree's depth: the coder keeps a message open per level
    file_bytes: int


def peek(path: str | os.PathLike) -> ModelShape:
    """A model file's sizes without loading its probability tables: the header's shapes and the parent array
    (D int64 values), checked as from_bytes checks them."""
    from safetensors import SafetensorError, safe_open

    from codec.zoo import resolve_model

    if path is None:
        raise UserError("the pc codec needs --model MODEL.pcm (train one with `ncodec train pc`)")
    path = resolve_model(path)
    if not os.path.isfile(path):
        raise UserError(f"model file {path} does not exist")
    size = os.path.getsize(path)
    bad = f"model file {path} is not an ncodec pc model file"
    if size > MAX_FILE_BYTES:
        raise UserError(f"model file {path} is larger than 4 GiB: not a pc model")
    try:
        with safe_open(os.fspath(path), framework="np") as f:
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in ("parent", "root")}
            d = shapes["parent"][0] if len(shapes["parent"]) == 1 else 0
            m = shapes["root"][0] if len(shapes["root"]) == 1 else 0
            if meta.get("version") == str(PACKED_VERSION):      # the tables' shapes are the ones unpacking makes
                shapes.update(edge=(d, m, m), leaf=(d, m, 256))
            else:
                shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in ("edge", "leaf")})
            parent = f.get_tensor("parent") if 1 <= d <= MAX_VARS else None
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as e:
        raise UserError(f"{bad} ({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{bad} (format tag {meta.get('format')!r})")
    if not (parent is not None and parent.dtype == np.int64 and 1 <= m <= MAX_LATENTS
            and shapes["edge"] == (d, m, m) and shapes["leaf"] == (d, m, 256)):
        raise UserError(f"{bad} (tensor shapes do not fit together)")
    depth = int(hclt.depths(hclt.check_tree(parent)).max())
    return ModelShape(d, m, depth, size)
