"""The model zoo: trained models shipped in the package (package data), each named, hashed and measured.

`models.json` is the registry (name, file, kind, bytes, sha256, data, recipe, headline number and the command and
machine that measured it; docs/ZOO.md is its table). `resolve_model` is the one place a `--model` value (or a
`model=` keyword) becomes a file: a path that exists is used as it is, otherwise a zoo name gives the packaged file
once its sha256 matches the registry's. Torch-free: the CLI lists the models without importing torch.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from codec.errors import UserError

FOLDER = Path(__file__).resolve().parent
REGISTRY = "models.json"


def models() -> list[dict[str, Any]]:
    """The registry's entries, in the order `ncodec models` lists them."""
    with open(FOLDER / REGISTRY, encoding="utf-8") as f:
        return json.load(f)["models"]


def names() -> list[str]:
    return [m["name"] for m in models()]


def entry(name: str) -> dict[str, Any] | None:
    return next((m for m in models() if m["name"] == name), None)


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """A model file's path: `name_or_path` itself if something exists there, else the zoo model of that name
    (its sha256 checked). Anything else is a one-line error that lists the zoo's names."""
    value = os.fspath(name_or_path)
    if os.path.exists(value):
        return value
    m = entry(value)
    if m is None:
        raise UserError(f"model file {value} not found, and no zoo model has that name "
                        f"(known: {', '.join(names())}; `ncodec models` lists them)")
    path = FOLDER / m["file"]
    if not path.is_file():
        raise UserError(f"zoo model {value}: its file {path} is missing from this installation (reinstall ncodec)")
    actual = sha256_of(path)
    if actual != m["sha256"]:
        raise UserError(f"zoo model {value}: {path} has sha256 {actual[:16]}..., the zoo's registry says "
                        f"{m['sha256'][:16]}... (a damaged or replaced file: reinstall ncodec)")
    return str(path)


def size_text(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"
