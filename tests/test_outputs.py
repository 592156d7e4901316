"""Outputs (issue 28): an existing output is refused (exit 2, nothing touched) unless -y, and -y replaces only a
regular file or a folder of ncodec's frames; devices are never replaced; modes follow the umask; Ctrl-C and SIGTERM
leave no temporaries, and a killed run's stale temporaries are removed by the next run for that output."""
from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bitstream import atomic
from tests.cli_helpers import run

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NERV = FIXTURES / "nerv.ncb"           # a tiny frozen file: decoding it takes a fraction of a second


def decode(capsys, output, *extra):
    return run(capsys, "decode", NERV, "-o", output, "--device", "cpu", *extra)


def snapshot(path: Path) -> dict:
    """Every entry under `path` (itself included) with its mode, size and content digest."""
    paths = [path] + (sorted(path.rglob("*")) if path.is_dir() else [])
    return {str(p): (p.lstat().st_mode, p.lstat().st_size,
                     hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None) for p in paths}


def refused(code, err):
    lines = err.strip().splitlines()
    return code == 2 and len(lines) == 1 and lines[0].startswith("ncodec: error:")


def test_an_existing_file_is_refused_and_untouched_and_y_replaces_it(capsys, tmp_path):
    out = tmp_path / "dec.mkv"
    out.write_bytes(b"precious")
    before = snapshot(tmp_path)
    code, _, err = decode(capsys, out)
    assert refused(code, err) and "-y" in err
    code, _, err = decode(capsys, out, "-n")                      # -n: the explicit default
    assert refused(code, err)
    assert snapshot(tmp_path) == before                          # byte-identical, and no temporary left
    code, _, err = decode(capsys, out, "-y")
    assert code == 0, err
    assert out.read_bytes()[:4] == b"\x1a\x45\xdf\xa3"            # now a Matroska file
    assert [p.name for p in tmp_path.iterdir()] == ["dec.mkv"]


def test_an_existing_folder_is_refused_and_a_foreign_file_keeps_it_even_with_y(capsys, tmp_path):
    frames = tmp_path / "frames"
    code, _, err = decode(capsys, frames)
    assert code == 0, err
    names = sorted(p.name for p in frames.iterdir())
    assert names and all(atomic.FRAMES.fullmatch(n) for n in names)
    before = snapshot(frames)
    assert refused(*decode(capsys, frames)[::2])
    assert snapshot(frames) == before
    code, _, err = decode(capsys, frames, "-y")                  # only ncodec's frames: replaced
    assert code == 0, err
    (frames / "notes.txt").write_text("mine")
    before = snapshot(frames)
    code, _, err = decode(capsys, frames, "-y")
    assert refused(code, err) and "notes.txt" in err
    assert snapshot(frames) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]


def test_a_folder_is_not_replaced_by_a_file(capsys, tmp_path):
    (tmp_path / "x.npy").mkdir()
    code, _, err = run(capsys, "decode", FIXTURES / "pc.ncb", "-o", tmp_path / "x.npy", "--model",
                       FIXTURES / "pc_model.pcm", "-y")
    assert refused(code, err)
    assert (tmp_path / "x.npy").is_dir() and not any((tmp_path / "x.npy").iterdir())


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
@pytest.mark.parametrize("flag", [[], ["-y"]])
def test_a_device_node_is_never_replaced(capsys, flag):
    before = os.stat("/dev/null")
    code, _, err = decode(capsys, "/dev/null", *flag)
    after = os.stat("/dev/null")
    assert refused(code, err) and "never replaced" in err
    assert stat.S_ISCHR(after.st_mode)
    assert (before.st_ino, before.st_mode, before.st_rdev, before.st_mtime_ns) == \
        (after.st_ino, after.st_mode, after.st_rdev, after.st_mtime_ns)


def test_a_fifo_is_never_replaced(tmp_path):
    fifo = tmp_path / "pipe.y4m"
    os.mkfifo(fifo)
    for overwrite in (False, True):
        with pytest.raises(atomic.OutputRefused, match="never replaced"):
            atomic.check_output(fifo, overwrite)
        with pytest.raises(atomic.OutputRefused):
            atomic.write_atomic(fifo, b"x", overwrite=overwrite)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and sorted(os.listdir(tmp_path)) == ["pipe.y4m"]


def test_encode_and_train_refuse_an_existing_output_before_any_work(capsys, tmp_path):
    import ncodec

    out = tmp_path / "x.ncb"
    out.write_bytes(b"precious")
    # the input does not even exist: the output is checked first, so this fails on the output
    code, _, err = run(capsys, "encode", tmp_path / "missing.mp4", "-o", out, "--codec", "nerv", "--epochs", "1")
    assert refused(code, err) and "exists" in err
    with pytest.raises(FileExistsError):
        ncodec.encode(str(tmp_path / "missing.mp4"), str(out), codec="nerv", epochs=1)
    # --segment: its one output file; many clips: the folder may exist, a clip file its manifest does not know may not
    code, _, err = run(capsys, "encode", tmp_path / "missing.mp4", "-o", out, "--codec", "hnerv", "--segment", "2")
    assert refused(code, err)
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "b.ncb").write_bytes(b"precious")
    code, _, err = run(capsys, "encode", tmp_path / "a.mp4", tmp_path / "b.mp4", "-o", tmp_path / "clips",
                       "--codec", "nerv")
    assert refused(code, err) and "b.ncb" in err
    model = tmp_path / "m.pcm"
    model.write_bytes(b"precious")
    code, _, err = run(capsys, "train", "pc", tmp_path / "missing.npy", "-o", model)
    assert refused(code, err)
    code, _, err = run(capsys, "train", "teacher", "digits", "-o", model, "--epochs", "1")
    assert refused(code, err)
    assert out.read_bytes() == model.read_bytes() == (tmp_path / "clips" / "b.ncb").read_bytes() == b"precious"


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_outputs_follow_the_umask(capsys, tmp_path, mask):
    old = os.umask(mask)
    try:
        assert decode(capsys, tmp_path / "d.mkv")[0] == 0
        assert decode(capsys, tmp_path / "frames")[0] == 0
        atomic.write_atomic(tmp_path / "raw.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "d.mkv").st_mode) == 0o666 & ~mask
    assert stat.S_IMODE(os.stat(tmp_path / "raw.bin").st_mode) == 0o666 & ~mask
    assert stat.S_IMODE(os.stat(tmp_path / "frames").st_mode) == 0o777 & ~mask
    for f in (tmp_path / "frames").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _old(path: Path) -> Path:
    t = atomic.RUN_START - 3600
    os.utime(path, (t, t))
    return path


def test_a_killed_runs_stale_temporaries_are_removed_by_the_next_run(capsys, tmp_path):
    out = tmp_path / "dec.mkv"
    dead = _dead_pid()
    stale_file = tmp_path / f".dec.mkv.{dead}-ab12cd34.tmp.mkv"
    stale_file.write_bytes(b"\0" * 1000)
    _old(stale_file)
    legacy = tmp_path / ".dec.mkv.x7k2m9q1.tmp.mkv"              # named as before the pid was in the name
    legacy.write_bytes(b"\0")
    _old(legacy)
    stale_dir = tmp_path / f".dec.mkv.{dead}-zz99yy88.tmp"
    stale_dir.mkdir()
    (stale_dir / "frame_000001.png").write_bytes(b"\0")
    _old(stale_dir)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = tmp_path / f".dec.mkv.{live.pid}-qq11ww22.tmp.mkv"     # another run still writing this output
        busy.write_bytes(b"\0")
        _old(busy)
        fresh = tmp_path / f".dec.mkv.{dead}-rr33tt44.tmp.mkv"        # newer than this run: not provably stale
        fresh.write_bytes(b"\0")
        other = tmp_path / f".other.mkv.{dead}-ab12cd34.tmp.mkv"      # another output's
        other.write_bytes(b"\0")
        _old(other)
        code, _, err = decode(capsys, out)
        assert code == 0, err
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["dec.mkv", busy.name, fresh.name, other.name])
    finally:
        live.kill()
        live.wait()


def test_ctrl_c_and_sigterm_while_writing_leave_no_temporary(capsys, tmp_path, monkeypatch):
    from codec.video import io

    write = io.VideoWriter.write
    for how in ("sigint", "sigterm"):
        def interrupted(self, frames, how=how):
            write(self, frames)
            if how == "sigint":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)              # main()'s handler makes it a KeyboardInterrupt
            time.sleep(30)                                    # which ends this sleep at once

        monkeypatch.setattr(io.VideoWriter, "write", interrupted)
        for output in (tmp_path / f"{how}.mkv", tmp_path / f"{how}_frames"):
            code, _, err = decode(capsys, output)
            assert code == 130 and "interrupted" in err, err
    assert list(tmp_path.iterdir()) == []


def test_main_restores_the_sigterm_handler(capsys):
    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        assert run(capsys, "codecs")[0] == 0
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_check_output_rules(tmp_path):
    f = tmp_path / "f.ncb"
    atomic.check_output(f)                                     # absent: fine
    f.write_bytes(b"x")
    with pytest.raises(atomic.OutputRefused, match="-y"):
        atomic.check_output(f)
    atomic.check_output(f, True)
    d = tmp_path / "d"
    d.mkdir()
    with pytest.raises(atomic.OutputRefused):
        atomic.check_output(d)                                 # even empty: it exists
    atomic.check_output(d, True)
    with pytest.raises(atomic.OutputRefused, match="folder"):
        atomic.check_output(d, True, directory=False)
    (d / "img.png").write_bytes(b"x")
    with pytest.raises(atomic.OutputRefused, match="img.png"):
        atomic.check_output(d, True)                           # not a frame_NNNNNN.png
    atomic.check_output(d, True, owned=atomic.PNGS)            # pc's folders: its images' own names
    (d / "sub").mkdir()
    with pytest.raises(atomic.OutputRefused, match="sub"):
        atomic.check_output(d, True, owned=atomic.PNGS)
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(atomic.OutputRefused, match="dangling"):
        atomic.check_output(link, True)
    # without overwrite, a file that appears during the work is not clobbered at the rename
    g = tmp_path / "g.bin"
    with pytest.raises(atomic.OutputRefused, match="exists|appeared"):
        with atomic.atomic_output(g, overwrite=False) as tmp:
            tmp.write_bytes(b"new")
            g.write_bytes(b"theirs")
    assert g.read_bytes() == b"theirs" and sorted(p.name for p in tmp_path.iterdir()) == [
        "d", "dangling", "f.ncb", "g.bin"]
