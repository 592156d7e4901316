"""Where, when and how a benchmark ran: the "meta" object every benchmark JSON carries.

    {"meta": {"machine": {"cpu": "Intel(R) Xeon(R) ...", "cores": 2, "gpu": "none", "platform": "Linux-...",
                          "python": "3.11.2"},
              "commit": "5b97af7...+dirty", "date": "2025-01-01T12:00:00Z",
              "command": "python -m benchmarks.rd --clip carphone --quick"}}

commit is `git rev-parse HEAD` of the checkout the benchmarks run from, with "+dirty" when tracked files differ from it
(untracked files do not count, as with `git describe --dirty`), and "unknown" outside a checkout or without git.
"""
from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what the platform module knows."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for key in ("model name", "Hardware", "Processor", "cpu model"):     # x86, then some ARM and MIPS kernels
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m and m.group(1).strip():
            return re.sub(r"\s+", " ", m.group(1).strip())
    return platform.processor() or platform.machine() or "unknown"


def gpu_name() -> str:
    """The first CUDA device's name, or "none" (also when torch is not installed)."""
    try:
        import torch
    except ImportError:
        return "none"
    try:
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except Exception:                       # a driver that reports devices but cannot name them
        return "none"


def machine() -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count() or 0, "gpu": gpu_name(), "platform": platform.platform(),
            "python": platform.python_version()}


def git_commit(root: str | os.PathLike = ROOT) -> str:
    """HEAD of the checkout at root, "+dirty" when tracked files changed, "unknown" outside a checkout."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0 or not re.fullmatch(r"[0-9a-f]{40,64}", head.stdout.strip()):
            return "unknown"
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    dirty = status.returncode != 0 or bool(status.stdout.strip())
    return head.stdout.strip() + ("+dirty" if dirty else "")


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def command_line(prog: str | None = None, argv: Sequence[str] | None = None) -> str:
    """The command as typed: "python -m PROG ARGS". prog is the benchmark's module (e.g. "benchmarks.rd") and argv
    the arguments its main() got (None: sys.argv[1:]); without prog, the module `python -m` ran, else sys.argv."""
    args = list(sys.argv[1:] if argv is None else argv)
    if prog is None:
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if spec is None or not spec.name:
            return shlex.join([Path(sys.executable).name, *sys.argv])
        prog = spec.name.removesuffix(".__main__")
    return shlex.join(["python", "-m", prog, *args])


def run_meta(prog: str | None = None, argv: Sequence[str] | None = None) -> dict:
    """{"machine", "commit", "date", "command"} of this run (see the module docstring)."""
    return {"machine": machine(), "commit": git_commit(), "date": utc_now(), "command": command_line(prog, argv)}


def machine_line(meta_or_machine: dict | None = None) -> str:
    """One line naming the machine for table titles: "Intel(R) Xeon(R) ..., 16 cores, GPU NVIDIA H200"."""
    m = meta_or_machine if meta_or_machine is not None else machine()
    m = m.get("machine", m) if isinstance(m.get("machine"), dict) else m
    gpu = m.get("gpu") or "none"
    return f"{m.get('cpu', 'unknown CPU')}, {m.get('cores', '?')} cores, " + ("no GPU" if gpu == "none" else
                                                                              f"GPU {gpu}")


def bad_keys(obj, path: str = "") -> list[str]:
    """Paths of keys with a space or a capital letter anywhere in a JSON object (the results' naming rule)."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            here = f"{path}.{k}" if path else str(k)
            if re.search(r"[\sA-Z]", str(k)):
                out.append(here)
            out += bad_keys(v, here)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += bad_keys(v, f"{path}[{i}]")
    return out
