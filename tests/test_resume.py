"""Interruption and resume (issue 28): SIGTERM during a fit saves a checkpoint like Ctrl-C, prints the --resume
command that continues, and that command finishes the file; after success the checkpoint is gone unless
--keep-checkpoint."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli.main import main
from tests.videos import write_clip_file

REPO = Path(__file__).resolve().parent.parent
TINY = ["--codec", "nerv", "--size", "20k", "--device", "cpu"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip_file(tmp_path_factory.mktemp("resume_clip"), 4, 32, 48)


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "NCODEC_COMPILE": "0"}


def _checkpoint_step(path: Path) -> int:
    from safetensors import safe_open

    from codec.checkpoint import KEY

    with safe_open(str(path), framework="pt") as f:
        return int(json.loads(f.metadata()[KEY])["meta"]["step"])


def test_checkpoints_come_every_minute_by_default():
    from codec.base import Job
    from codec.fit import FitConfig

    assert Job().checkpoint_every == FitConfig().checkpoint_every == 60.0
    assert not Job().keep_checkpoint


def test_sigterm_during_a_fit_leaves_a_checkpoint_that_resume_continues(clip, tmp_path):
    out = tmp_path / "x.ncb"
    ckpt = tmp_path / "x.ncb.ckpt.safetensors"
    # bounded by fitting time, so that the resumed run has a known amount left whatever the machine's speed
    args = ["encode", clip, "-o", str(out), *TINY, "--max-time", "8", "--checkpoint-every", "0.5", "--json"]
    proc = subprocess.Popen([sys.executable, "-m", "ncodec", *args], cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        while not ckpt.exists() and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("ncodec: interrupted; continue with: "), err
    assert sum("--resume" in line for line in lines) == 1
    command = shlex.split(lines[-1].split("continue with: ", 1)[1])
    assert command == ["ncodec", *map(str, args), "--resume"]
    # the checkpoint is there, the output is not, and no temporary is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.ncb.ckpt.safetensors"]
    saved = _checkpoint_step(ckpt)
    assert saved > 0

    done = subprocess.run([sys.executable, "-m", "ncodec", *command[1:]], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["steps"] >= saved and summary["file"] == str(out)
    assert "checkpoint" not in summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.ncb"]        # the checkpoint went with success
    assert main(["info", str(out)]) == 0


def test_keep_checkpoint_keeps_it_and_a_plain_encode_removes_it(clip, tmp_path, capsys):
    import ncodec

    out = tmp_path / "k.ncb"
    capsys.readouterr()
    code = main(["encode", clip, "-o", str(out), *TINY, "--epochs", "1", "--keep-checkpoint", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and out.exists()
    assert summary["checkpoint"] == str(tmp_path / "k.ncb.ckpt.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.ncb", "k.ncb.ckpt.safetensors"]

    # the Python API: the same rule, and an existing output is refused unless overwrite=True
    with pytest.raises(FileExistsError):
        ncodec.encode(clip, str(out), codec="nerv", size="20k", epochs=1, device="cpu")
    ncodec.encode(clip, str(out), codec="nerv", size="20k", epochs=1, device="cpu", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.ncb"]


def test_interrupt_before_any_checkpoint_prints_no_resume(capsys, clip, tmp_path, monkeypatch):
    from codec.video import inr_codec

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(inr_codec, "fit", interrupted)
    capsys.readouterr()
    code = main(["encode", clip, "-o", str(tmp_path / "x.ncb"), *TINY, "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 130 and "interrupted" in err and "--resume" not in err
    assert list(tmp_path.iterdir()) == []
