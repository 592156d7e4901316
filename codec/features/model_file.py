"""Model files: safetensors (plain tensors, never pickle) with a JSON description in the metadata.

A student file carries its CompressAI CDF tables as ordinary tensors, so loading never depends on the table sizes
a freshly built EntropyBottleneck happens to have. Every model has an id (a hash of its config and tensors) that
bitstreams and the split protocol carry, so a latent is never decoded by the wrong student.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from bitstream.atomic import write_atomic
from codec.errors import UserError

FORMAT = "ncodec-features"
VERSION = 1
MAX_HEADER = 16 << 20


@dataclass
class ModelFile:
    kind: str                       # "teacher" | "student"
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]            # anything else stored (the training record)

    @property
    def model_id(self) -> str:
        return model_id(self.config, self.tensors)


def model_id(config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    """16 hex digits of SHA-256 over the config and every tensor (name, dtype, shape, bytes)."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def state_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's persistent state as independent contiguous CPU tensors (safetensors refuses shared storage)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def save(path: str | os.PathLike, kind: str, config: dict[str, Any], tensors: dict[str, torch.Tensor],
         meta: dict[str, Any] | None = None) -> str:
    """Write atomically; returns the model id."""
    description = {"format": FORMAT, "version": VERSION, "kind": kind, "config": config, "meta": meta or {},
                   "model_id": model_id(config, tensors)}
    data = st_save(tensors, metadata={"ncodec": json.dumps(description)})
    write_atomic(path, data)
    return description["model_id"]


def load(path: str | os.PathLike, expect: str | None = None) -> ModelFile:
    """Read a model file (a path or a zoo model's name); anything that is not one of ours is a one-line UserError."""
    from codec.zoo import resolve_model

    path = resolve_model(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UserError(f"model file {path} not found") from None
    except IsADirectoryError:
        raise UserError(f"model file {path} is a folder") from None
    description = _description(data, path)
    try:
        tensors = st_load(data)
    except SafetensorError as e:
        raise UserError(f"{path}: damaged model file ({e})") from None
    kind = description.get("kind")
    if expect is not None and kind != expect:
        raise UserError(f"{path} is a {kind} model, not a {expect}")
    return ModelFile(kind, description.get("config") or {}, tensors, description.get("meta") or {})


def _description(data: bytes, path: str) -> dict[str, Any]:
    """The JSON in the safetensors header's metadata, checked before any tensor is read."""
    not_one = f"{path} is not an ncodec model file"
    if len(data) < 8:
        raise UserError(not_one)
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(MAX_HEADER, len(data) - 8):
        raise UserError(not_one)
    try:
        header = json.loads(data[8:8 + n])
        description = json.loads(header["__metadata__"]["ncodec"])
    except (ValueError, KeyError, TypeError, RecursionError):
        raise UserError(not_one) from None
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise UserError(not_one)
    if description.get("version") != VERSION:
        raise UserError(f"{path}: model file version {description.get('version')} is not supported "
                        f"(this ncodec reads version {VERSION})")
    return description


# ---- the two model kinds


def save_teacher(path, teacher, meta: dict[str, Any] | None = None) -> str:
    return save(path, "teacher", teacher.config, state_tensors(teacher), meta)


def load_teacher(path: str):
    """An ncodec teacher file, or a pretrained CIFAR ResNet checkpoint ({'state_dict': ...}, read weights-only)."""
    from codec.features.teacher import CifarResNet, load_pretrained_resnet
    from codec.zoo import resolve_model

    path = resolve_model(path)                  # a path, or the name of a zoo model (`ncodec models`)
    with _open_or_error(path) as f:
        head = f.read(8)
    if path.endswith((".th", ".pth", ".pt", ".tar")) or head[:2] == b"PK":   # torch's zip checkpoints start PK
        return load_pretrained_resnet(path)
    mf = load(path, expect="teacher")
    teacher_cost(mf.config, sum(t.numel() for t in mf.tensors.values()), path)     # before anything is built
    teacher = CifarResNet(mf.config)
    _load_strict(teacher, mf.tensors, path)
    return teacher


def save_student(path, student, meta: dict[str, Any] | None = None) -> str:
    student.tables()          # refuses a student whose tables were never built
    prior = student.context_prior.tensors() if student.context_prior is not None else {}
    return save(path, "student", student.config, {**state_tensors(student), **prior}, meta)


def load_student(path: str):
    """(Student in eval mode, its model id)."""
    from codec.features.student import Student, load_student_state

    mf = load(path, expect="student")
    student_cost(mf.config, sum(t.numel() for t in mf.tensors.values()), path)   # before anything is built
    student = Student(mf.config)
    load_student_state(student, mf.tensors)
    return student.eval(), mf.model_id


# ---- what a student file asks of a decoder, from its config (nothing built)

TEACHER_LIMITS = {"blocks": (1, 64), "in_channels": (1, 4), "image_size": (1, 4096), "num_classes": (1, 100_000)}
MAX_WIDTH = 4096


@dataclass(frozen=True)
class StudentCost:
    built: int                      # values of the network Student(config) builds (the whole teacher shell too)
    stored: int                     # at least this many of them are stored in the file (the tail, coder halves)
    latent_shape: tuple[int, int, int]
    image_size: int
    widest: int                     # the widest feature map's channels (classification activations)


def teacher_cost(config: Any, stored: int, path: str | os.PathLike = "teacher model") -> int:
    """The values of the network CifarResNet(config) builds, from the config alone, checked: its fields within
    range, and no more values than the `stored` ones the file holds (loading needs every one). A UserError
    otherwise, so that a small file cannot ask for a huge network."""
    from codec.features.teacher import STAGES

    bad = f"{path}: the teacher config is out of range"
    try:
        ints = {k: config[k] for k in TEACHER_LIMITS}
        widths, stats = list(config["widths"]), list(config["mean"]) + list(config["std"])
    except (KeyError, TypeError, ValueError):
        raise UserError(bad) from None
    if not (all(type(v) is int and lo <= v <= hi for (k, v), (lo, hi) in zip(ints.items(), TEACHER_LIMITS.values()))
            and len(widths) == len(STAGES) and all(type(v) is int and 1 <= v <= MAX_WIDTH for v in widths)
            and len(stats) == 2 * ints["in_channels"]
            and all(type(v) in (int, float) and math.isfinite(v) for v in stats)
            and all(v != 0 for v in stats[ints["in_channels"]:])):
        raise UserError(bad)
    # convolutions, and four values per channel of each batch norm (weight, bias, running mean and variance)
    blocks, p_in = ints["blocks"], widths[0]
    values = 9 * ints["in_channels"] * p_in + 4 * p_in
    for p in widths:
        for _ in range(blocks):
            values += 9 * p_in * p + 9 * p * p + 8 * p
            p_in = p
    values += (p_in + 1) * ints["num_classes"]
    if values > stored:
        raise UserError(f"{path}: its config describes {values:,} weights but the file stores {stored:,} values")
    return values


def student_cost(config: Any, stored: int, path: str | os.PathLike = "student model") -> StudentCost:
    """The student's size from its config alone, checked: the teacher's fields within range, and the network's
    weights no more than the `stored` values the file holds (it stores every one). A UserError otherwise."""
    from codec.features.student import check_config
    from codec.features.teacher import STAGES, stage_stride

    bad = f"{path}: the student config is out of range"
    try:
        t = config["teacher"]
        ints = {k: t[k] for k in TEACHER_LIMITS}
        widths = list(t["widths"])
        if not (all(type(v) is int and lo <= v <= hi for (k, v), (lo, hi) in
                    zip(ints.items(), TEACHER_LIMITS.values()))
                and len(widths) == len(STAGES) and all(type(v) is int and 1 <= v <= MAX_WIDTH for v in widths)):
            raise UserError(bad)
        check_config(config)
        n, w, stride = int(config["latent_channels"]), int(config["encoder_channels"]), int(config["encoder_stride"])
        dw, k = int(config["decoder_channels"]), int(config.get("encoder_kernel", 5))
        eb, db = int(config.get("encoder_blocks", 0)), int(config.get("decoder_blocks", 0))
        split = STAGES.index(config["split"])
    except (KeyError, TypeError, ValueError, AttributeError):
        raise UserError(bad) from None
    c_in, size, blocks, classes = ints["in_channels"], ints["image_size"], ints["blocks"], ints["num_classes"]
    # conv weights only: a lower bound of what the file must store; `built` adds the teacher stages Student drops
    down = max(1, int(math.log2(stride)))
    encoder = w * c_in * k * k + (down - 1) * w * w * k * k + eb * 18 * w * w + 9 * w * n
    up = int(math.log2(stride // stage_stride(config["split"])))
    decoder = 9 * n * dw + db * 18 * dw * dw + up * 16 * dw * dw + 9 * dw * widths[split]
    stages, p_in = [], widths[0]
    for p in widths:
        stages.append(blocks * 9 * (p_in * p + p * p) + (blocks - 1) * 9 * (p * p - p_in * p))
        p_in = p
    tail = sum(stages[split + 1:]) + widths[-1] * classes
    least = encoder + decoder + tail
    if least > stored:
        raise UserError(f"{path}: its config describes at least {least:,} weights but the file stores {stored:,} "
                        f"values")
    built = least + 9 * c_in * widths[0] + sum(stages[:split + 1])
    return StudentCost(built, stored, (n, size // stride, size // stride), size, max(widths + [w, dw]))


def peek_student(path: str | os.PathLike) -> tuple[StudentCost, int]:
    """(cost, file bytes) of a student file from its safetensors header alone (its tensors are not read)."""
    from codec.zoo import resolve_model

    path = resolve_model(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            data = head + f.read(n) if 0 <= n <= MAX_HEADER else b""
    except FileNotFoundError:
        raise UserError(f"model file {path} not found") from None
    except IsADirectoryError:
        raise UserError(f"model file {path} is a folder") from None
    description = _description(data, path)
    if description.get("kind") != "student":
        raise UserError(f"{path} is a {description.get('kind')} model, not a student")
    try:
        entries = [v for k, v in json.loads(data[8:]).items() if k != "__metadata__"]
        stored = sum(math.prod(int(d) for d in e["shape"]) for e in entries)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise UserError(f"{path} is not an ncodec model file") from None
    return student_cost(description.get("config"), stored, path), size


def _load_strict(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: str) -> None:
    result = module.load_state_dict(tensors, strict=False)
    bad = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")] + list(result.unexpected_keys)
    if bad:
        raise UserError(f"{path}: tensors do not match the model's config (e.g. {bad[0]})")


def _open_or_error(path: str):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise UserError(f"model file {path} not found") from None
    except IsADirectoryError:
        raise UserError(f"model file {path} is a folder") from None
