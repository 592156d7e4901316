"""Atomic outputs: a file or folder appears under its final name complete, or not at all, and never in place of
something it may not replace.

The output policy lives here, once:
  - an existing output is replaced only with overwrite=True (the CLI's -y), and then only a regular file, or a folder
    that holds nothing but files `owned` names (ncodec's PNG frames); a device, FIFO, socket or a folder with anything
    else in it is never replaced;
  - outputs get the modes the umask gives (0666 / 0777 & ~umask), like any file a program creates;
  - temporaries are `.NAME.PID-XXXXXXXX.tmp*` beside the output: removed on every failure (Ctrl-C, and SIGTERM,
    which the CLI turns into Ctrl-C), and those a killed run left are removed by the next write of that output.
Library writers default to overwrite=True (a checkpoint, a manifest or a library is replaced by design); user-facing
outputs (the CLI, ncodec.encode) pass the user's choice, and call `check_output` before any work.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Iterator

FRAMES = re.compile(r"frame_\d{6}\.png")          # what codec.video.io writes into a PNG folder
PNGS = re.compile(r"[^/\\]+\.png", re.IGNORECASE)  # pc: the images' own names (or 00000.png, ...)
RUN_START = time.time()                            # temporaries older than this, of a dead run, are litter


class OutputRefused(FileExistsError):
    """The output path holds something that may not be replaced (the CLI: one line, exit 2)."""

    def __init__(self, message: str):
        super().__init__(errno.EEXIST, message)


def check_output(path: str | os.PathLike, overwrite: bool = False, *, directory: bool | None = None,
                 owned: re.Pattern = FRAMES) -> None:
    """Raise OutputRefused unless `path` may be written: absent, or (overwrite) a regular file or a folder holding
    only `owned` files. `directory`: the output is a folder (True), a file (False) or either (None)."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        if os.path.islink(p):
            raise OutputRefused(f"output {p} is a dangling symbolic link: not replaced") from None
        return
    except NotADirectoryError:
        return                                        # a parent is a file: creating the output will say so
    if stat.S_ISREG(st.st_mode):
        if not overwrite:
            raise OutputRefused(f"output {p} exists: not replaced without -y/--overwrite")
        return
    if stat.S_ISDIR(st.st_mode):
        if directory is False:
            raise OutputRefused(f"output {p} is a folder: not replaced by a file")
        with os.scandir(p) as entries:
            foreign = next((e.name for e in entries
                            if not (owned.fullmatch(e.name) and e.is_file(follow_symlinks=False))), None)
        if foreign is not None:
            raise OutputRefused(f"output folder {p} holds files ncodec did not write ({foreign}): not replaced, "
                                "even with -y")
        if not overwrite:
            raise OutputRefused(f"output folder {p} exists: not replaced without -y/--overwrite")
        return
    raise OutputRefused(f"output {p} is not a regular file or folder: never replaced")


def remove_stale(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries a killed run left for `path` (older than this run, their process gone); returns them."""
    final = Path(path)
    parent = final.parent
    mine = re.compile(rf"\.{re.escape(final.name)}\.(?:(?:(\d+)-)?[a-z0-9_]{{8}}\.tmp.*|old)", re.DOTALL)
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        m = mine.fullmatch(name)
        if not m:
            continue
        p = parent / name
        try:
            if os.lstat(p).st_mtime >= RUN_START:
                continue                              # written since this run started: maybe a live writer's
        except FileNotFoundError:
            continue
        pid = int(m.group(1)) if m.group(1) else None
        if pid is not None and pid != os.getpid() and _alive(pid):
            continue                                  # another run is writing this output now
        _remove(p)
        removed.append(p)
    return removed


def write_atomic(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> int:
    """Write bytes to a temporary file beside `path`, fsync, then rename over it. Returns the size."""
    with atomic_output(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return len(data)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, directory: bool = False, overwrite: bool = True,
                  owned: re.Pattern = FRAMES) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it to `path`, on any failure remove it.

    With directory=True the temporary path is an empty folder (PNG-folder outputs). What may be replaced is
    `check_output`'s rule, checked before the temporary is made and again at the rename.
    """
    final = Path(path)
    parent = final.parent
    check_output(final, overwrite, directory=directory, owned=owned)
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale(final)
    prefix = f".{final.name}.{os.getpid()}-"
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp" + final.suffix, dir=parent)
        os.close(fd)
        tmp = Path(name)
    old = None                                        # the replaced output, moved aside until the new one is in
    try:
        yield tmp
        os.chmod(tmp, (0o777 if directory else 0o666) & ~_umask())    # mkstemp/mkdtemp made it 0600/0700
        check_output(final, overwrite, directory=directory, owned=owned)   # the work may have taken hours
        if directory:
            if os.path.lexists(final):
                old = final.with_name(f"{prefix}replaced.tmp")
                os.replace(final, old)
            os.rename(tmp, final)
            if old is not None:
                _remove(old)
                old = None
        elif overwrite:
            os.replace(tmp, final)
        else:
            _rename_new(tmp, final)
    except BaseException:
        _remove(tmp)
        if old is not None and not os.path.lexists(final):
            with contextlib.suppress(OSError):
                os.replace(old, final)                # interrupted between the two renames: put it back
        raise


def _rename_new(tmp: Path, final: Path) -> None:
    """Rename without replacing: a file that appeared at `final` meanwhile is refused, not clobbered."""
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise OutputRefused(f"output {final} appeared while it was being written: not replaced") from None
    except OSError:                                   # a filesystem without hard links
        if os.path.lexists(final):
            raise OutputRefused(f"output {final} appeared while it was being written: not replaced") from None
        os.replace(tmp, final)
        return
    os.unlink(tmp)


def _remove(p: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask sets it to read it)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
