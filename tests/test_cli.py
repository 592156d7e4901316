"""The `ncodec` command's contract: exit 0 on success, exit 2 with one line on stderr for bad input."""
import json
import subprocess
import sys

import pytest

from bitstream.container import Writer
from cli.main import main
from tests.cli_helpers import assert_one_line_error, run


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


# ----- the video codecs through the CLI: bad input is exit 2 and one line -----------------------------------------


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from codec.video.io import write_video
    from tests.videos import moving_gradients

    p = tmp_path_factory.mktemp("cli_clip") / "clip.mkv"
    write_video(p, moving_gradients(4, 32, 48), fps=25)
    return p


@pytest.fixture(scope="module")
def tiny_hnerv(tiny_clip, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_enc") / "clip.ncb"
    code = main(["encode", str(tiny_clip), "-o", str(out), "--codec", "hnerv", "--size", "40k", "--epochs", "2",
                 "--device", "cpu", "--json"])
    assert code == 0
    return out


def test_encode_decode_through_the_cli(capsys, tiny_hnerv, tmp_path):
    capsys.readouterr()
    code, out, err = run(capsys, "decode", str(tiny_hnerv), "-o", str(tmp_path / "dec.mkv"), "--device", "cpu",
                         "--json")
    assert code == 0, err
    assert json.loads(out)["frames"] == 4
    code, out, err = run(capsys, "info", str(tiny_hnerv))
    assert code == 0 and "hnerv" in out


@pytest.mark.parametrize("extra", [
    ["--crop", "64x64"],            # larger than the 32x48 frame
    ["--crop", "banana"],
    ["--size", "0"],
    ["--size", "-3M"],
    ["--max-frames", "0"],
    ["--frames", "4"],              # decode's A:B; encode takes --max-frames
    ["--max-time", "-1"],
    ["--device", "cuda:7"] if not __import__("torch").cuda.is_available() else ["--device", "tpu"],
])
def test_encode_bad_options(capsys, tiny_clip, tmp_path, extra):
    args = ["encode", str(tiny_clip), "-o", str(tmp_path / "x.ncb"), "--codec", "hnerv", "--epochs", "1", *extra]
    assert_one_line_error(*run(capsys, *args)[::2])
    assert not (tmp_path / "x.ncb").exists()


def test_encode_unreadable_video(capsys, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x01 definitely not a video" * 50)
    assert_one_line_error(*run(capsys, "encode", str(bad), "-o", str(tmp_path / "x.ncb"), "--codec", "nerv")[::2])
    assert_one_line_error(*run(capsys, "encode", str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "x.ncb"),
                               "--codec", "nerv")[::2])


def test_decode_corrupted_and_foreign_files(capsys, tiny_hnerv, tmp_path):
    data = bytearray(tiny_hnerv.read_bytes())
    data[-20] ^= 0xFF                       # inside the last section's payload: its CRC fails
    bad = tmp_path / "bad.ncb"
    bad.write_bytes(bytes(data))
    assert_one_line_error(*run(capsys, "decode", str(bad), "-o", str(tmp_path / "o.mkv"), "--device", "cpu")[::2])
    assert not (tmp_path / "o.mkv").exists()
    foreign = tmp_path / "foreign.ncb"      # a file of another codec named like a video
    Writer("pc", 1, {"kind": "images", "count": 1, "height": 8, "width": 8, "channels": 1}).write(foreign)
    assert_one_line_error(*run(capsys, "decode", str(foreign), "-o", str(tmp_path / "o.mkv"))[::2])
    assert_one_line_error(*run(capsys, "decode", str(tiny_hnerv), "-o", str(tmp_path / "o.mkv"),
                               "--frames", "3:99")[::2])
