"""The `ncodec` command's contract: exit 0 on success, exit 2 with one line on stderr for bad input."""
import json
import subprocess
import sys

import pytest

from bitstream.container import Writer
from cli.main import main


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ncodec: ")
    assert "Traceback" not in err


@pytest.fixture
def sample_ncb(tmp_path):
    w = Writer("nerv", 1, {"kind": "video", "width": 64, "height": 48, "frames": 8, "fps_num": 25, "fps_den": 1,
                           "pix_fmt": "rgb24"})
    w.add_section("config", b"\x01\x02\x03")
    w.add_section("weights", bytes(range(200)))
    w.add_section("notes", b"optional", required=False)
    path = tmp_path / "sample.ncb"
    w.write(path)
    return path


def test_info_on_a_written_file(capsys, sample_ncb):
    code, out, err = run(capsys, "info", str(sample_ncb))
    assert code == 0, err
    assert "weights" in out and "200" in out and "nerv" in out


def test_info_json(capsys, sample_ncb):
    code, out, _ = run(capsys, "info", str(sample_ncb), "--json")
    assert code == 0
    info = json.loads(out)
    assert info["codec"] == "nerv"
    assert info["header"]["width"] == 64
    assert [s["name"] for s in info["sections"]] == ["config", "weights", "notes"]
    assert info["bytes"] == sample_ncb.stat().st_size


def test_info_on_garbage(capsys, tmp_path):
    p = tmp_path / "garbage.ncb"
    p.write_bytes(b"this is not an ncodec file at all" * 3)
    assert_one_line_error(*run(capsys, "info", str(p))[::2])


def test_info_on_truncated_file(capsys, sample_ncb, tmp_path):
    data = sample_ncb.read_bytes()
    for cut in (3, 10, len(data) // 2, len(data) - 1):
        p = tmp_path / f"cut{cut}.ncb"
        p.write_bytes(data[:cut])
        assert_one_line_error(*run(capsys, "info", str(p))[::2])


def test_info_on_missing_file_and_folder(capsys, tmp_path):
    assert_one_line_error(*run(capsys, "info", str(tmp_path / "missing.ncb"))[::2])
    assert_one_line_error(*run(capsys, "info", str(tmp_path))[::2])


def test_usage_errors_are_one_line(capsys):
    assert_one_line_error(*run(capsys, "no-such-command")[::2])
    assert_one_line_error(*run(capsys, "info")[::2])
    assert_one_line_error(*run(capsys, "encode", "x.mp4", "-o", "x.ncb", "--codec", "no-such-codec")[::2])


def test_decode_of_unknown_codec_is_refused(capsys, tmp_path):
    w = Writer("from-the-future", 1, {})
    p = tmp_path / "future.ncb"
    w.write(p)
    assert_one_line_error(*run(capsys, "decode", str(p), "-o", str(tmp_path / "out.y4m"))[::2])


def test_fresh_process_garbage_gives_exit_2_and_no_traceback(tmp_path):
    p = tmp_path / "garbage.ncb"
    p.write_bytes(b"NCB\x00" + b"\xff" * 40)
    r = subprocess.run([sys.executable, "-m", "cli.main", "info", str(p)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
