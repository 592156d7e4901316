"""Model files: safetensors (plain tensors, never pickle) with a JSON description in the metadata.

A student file carries its CompressAI CDF tables as ordinary tensors, so loading never depends on the table sizes
a freshly built EntropyBottleneck happens to have. Every model has an id (a hash of its config and tensors) that
bitstreams and the split protocol carry, so a latent is never decoded by the wrong student.
"""
from __future__ import annotations

import hashlib
import json
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
    """Read a model file; anything that is not one of ours is a one-line UserError."""
    path = os.fspath(path)
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
    except (ValueError, KeyError, TypeError):
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

    path = os.fspath(path)
    with _open_or_error(path) as f:
        head = f.read(8)
    if path.endswith((".th", ".pth", ".pt", ".tar")) or head[:2] == b"PK":   # torch's zip checkpoints start PK
        return load_pretrained_resnet(path)
    mf = load(path, expect="teacher")
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
    student = Student(mf.config)
    load_student_state(student, mf.tensors)
    return student.eval(), mf.model_id


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
