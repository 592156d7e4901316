"""What a rerun skips, and what the tasks are sent.

A manifest (JSON, written atomically) records per output the SHA-256 of its input content, of the options that decide
its bytes, and of the file written: a rerun of the same command skips every output that is still complete and redoes
anything missing, changed or damaged. Inputs travel to the tasks as bytes (no shared filesystem needed).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from codec.errors import UserError
from codec.progress import write_json

MANIFEST = "ncodec-manifest.json"      # a many-clip run's, in its output folder
MANIFEST_VERSION = 1


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def options_hash(codec, options, **extra: Any) -> str:
    """What decides an output's bytes: the codec, its version, every option (run-only settings such as --workers are
    not options) and `extra` (e.g. the segment length)."""
    fields = {**dataclasses.asdict(options), **extra}
    text = json.dumps({"codec": codec.name, "version": codec.version, "options": fields}, sort_keys=True, default=str)
    return sha256_bytes(text.encode())


class Manifest:
    """A JSON file: output name -> hashes of its input, options and file, and its summary row."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        try:
            data = json.loads(self.path.read_text())
            if data.get("version") == MANIFEST_VERSION and isinstance(data.get("outputs"), dict):
                self.entries = data["outputs"]
        except (OSError, ValueError, AttributeError):
            pass                        # no manifest, or a damaged one: every output is redone

    def complete(self, name: str, output: str | os.PathLike, input_sha: str, opts_sha: str) -> dict | None:
        """The recorded row if `output` is there with the recorded bytes, made from this input with these options."""
        e = self.entries.get(name)
        if not e or e.get("input_sha256") != input_sha or e.get("options_sha256") != opts_sha:
            return None
        if sha256_file(output) != e.get("output_sha256"):
            return None
        return e.get("row")

    def record(self, name: str, input_sha: str, opts_sha: str, output_sha: str, row: dict) -> None:
        self.entries[name] = {"input_sha256": input_sha, "options_sha256": opts_sha, "output_sha256": output_sha,
                              "row": row}
        write_json(self.path, {"version": MANIFEST_VERSION, "outputs": self.entries})


# ---------------------------------------------------------------------------------------------------------------
# inputs shipped to the tasks


def read_input(path: str | os.PathLike) -> tuple[dict, str]:
    """(payload, sha256 of the content): {"file": bytes, "suffix": ".mp4"} or, for a PNG folder, {"png": {name:
    bytes}}."""
    p = Path(path)
    if p.is_dir():
        files = {f.name: f.read_bytes() for f in sorted(p.iterdir()) if f.is_file()}
        h = hashlib.sha256()
        for name, data in files.items():
            h.update(name.encode() + b"\0" + sha256_bytes(data).encode())
        return {"png": files}, h.hexdigest()
    if not p.is_file():
        raise UserError(f"no such file or folder: {path}")
    data = p.read_bytes()
    return {"file": data, "suffix": p.suffix}, sha256_bytes(data)


def input_sha(path: str | os.PathLike) -> str:
    """read_input's hash; a file is hashed without being held in memory."""
    if os.path.isfile(path):
        return sha256_file(path)
    return read_input(path)[1]


def write_input(payload: dict, folder: str) -> str:
    """A read_input payload back on disk inside `folder`; returns the path a codec reads."""
    if "png" in payload:
        path = os.path.join(folder, "input")
        os.mkdir(path)
        for name, data in payload["png"].items():
            with open(os.path.join(path, name), "wb") as f:
                f.write(data)
        return path
    path = os.path.join(folder, "input" + payload["suffix"])    # the suffix: some formats (.h264, .y4m) need it
    with open(path, "wb") as f:
        f.write(payload["file"])
    return path
