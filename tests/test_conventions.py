"""The tool's conventions (issue 29): eval takes frames, crop and video from the file; Y and YUV PSNR; --crop is
height x width and says so; "-" is standard input and output; y4m keeps the source's chroma; the fit bar ends full;
the history table only with --verbose."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bitstream.container import Reader, Writer
from cli.main import _report
from codec.errors import UserError
from codec.video import metrics
from codec.video.io import center_crop, read_video, write_video
from tests.cli_helpers import run
from tests.videos import moving_gradients

ROOT = Path(__file__).resolve().parent.parent
T, H, W = 6, 40, 56          # the source; encodes take 4 frames of a 32x48 centre crop
ENCODE = ["--codec", "hnerv", "--size", "40k", "--epochs", "2", "--device", "cpu"]


def one_line_error(code, err) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ncodec: error: "), err
    return lines[0]


def ncodec(*args, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """The command in a fresh process, with real standard input and output (bytes)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cli.main", *map(str, args)], input=stdin, capture_output=True,
                          env=env, cwd=ROOT, timeout=600)


def y4m_header(data: bytes) -> str:
    return data.split(b"\n", 1)[0].decode()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 4:2:0 y4m source, as FFmpeg writes yuv420p."""
    path = tmp_path_factory.mktemp("src") / "src.y4m"
    write_video(path, moving_gradients(T, H, W), fps=25, pix_fmt="yuv420p")
    return path


@pytest.fixture(scope="module")
def piped(source, tmp_path_factory):
    """`cat src.y4m | ncodec encode - -o - --max-frames 4 --crop 32x48`: (the .ncb path, the process)."""
    r = ncodec("encode", "-", "-o", "-", *ENCODE, "--max-frames", "4", "--crop", "32x48",
               stdin=source.read_bytes())
    assert r.returncode == 0, r.stderr.decode()
    path = tmp_path_factory.mktemp("enc") / "clip.ncb"
    path.write_bytes(r.stdout)
    return path, r


# ----- Y and YUV PSNR -------------------------------------------------------------------------------------------


def test_psnr_yuv_matches_a_hand_computation():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    dist = np.clip(ref.astype(int) + rng.integers(-9, 10, ref.shape), 0, 255).astype(np.uint8)
    expected = {"y": [], "u": [], "v": []}
    for t in range(2):
        d = ref[t].astype(float) - dist[t].astype(float)
        r, g, b = d[..., 0], d[..., 1], d[..., 2]
        planes = {"y": 0.299 * r + 0.587 * g + 0.114 * b,                       # BT.601, full range (JFIF)
                  "u": (b - (0.299 * r + 0.587 * g + 0.114 * b)) / 1.772,
                  "v": (r - (0.299 * r + 0.587 * g + 0.114 * b)) / 1.402}
        for k, p in planes.items():
            expected[k].append(10 * np.log10(255.0 ** 2 / np.mean(p ** 2)))
    y, u, v = (float(np.mean(expected[k])) for k in "yuv")
    got = metrics.psnr_yuv(ref, dist)
    assert got["psnr_y"] == pytest.approx(y, abs=1e-9)
    assert got["psnr_u"] == pytest.approx(u, abs=1e-9)
    assert got["psnr_v"] == pytest.approx(v, abs=1e-9)
    assert got["psnr_yuv"] == pytest.approx((6 * y + u + v) / 8, abs=1e-9)
    # float frames in [0, 1] give the same numbers; identical frames are +inf, as RGB PSNR
    assert metrics.psnr_yuv(ref / 255.0, dist / 255.0)["psnr_yuv"] == pytest.approx(got["psnr_yuv"], abs=1e-9)
    assert metrics.psnr_yuv(ref, ref)["psnr_y"] == float("inf")
    # a grey error (the same in R, G and B) is all luma: chroma is exact
    grey = np.clip(ref.astype(int) + 3, 0, 255).astype(np.uint8)
    flat = np.full((1, 4, 4, 3), 100, np.uint8)
    assert metrics.psnr_yuv(flat, flat + 3)["psnr_u"] == float("inf")
    assert metrics.psnr_yuv(flat, flat + 3)["psnr_y"] == pytest.approx(10 * np.log10(255 ** 2 / 9))
    assert np.isfinite(metrics.psnr_yuv(ref, grey)["psnr_y"])
    with pytest.raises(UserError):
        metrics.psnr_yuv(ref, dist, matrix="bt2020")


# ----- --crop is height x width -----------------------------------------------------------------------------------


def test_a_crop_that_fits_only_as_width_x_height_says_so(capsys, tmp_path):
    frames = np.zeros((1, 720, 1280, 3), np.uint8)
    with pytest.raises(UserError) as e:
        center_crop(frames, (1280, 720))
    assert str(e.value) == ("--crop 1280x720 is height x width: 1280 lines do not fit a 720-line frame; "
                            "did you mean 720x1280?")
    with pytest.raises(UserError) as e:
        center_crop(np.zeros((1, 1280, 720, 3), np.uint8), (720, 1280))
    assert "1280 columns do not fit a 720-column frame; did you mean 1280x720?" in str(e.value)
    with pytest.raises(UserError) as e:
        center_crop(frames, (800, 1400))
    assert "height x width" in str(e.value) and "did you mean" not in str(e.value)
    assert center_crop(frames, (720, 1280)).shape == frames.shape
    # through the CLI, before any fitting: a 40x56 clip and --crop 56x40
    clip = tmp_path / "clip.mkv"
    write_video(clip, moving_gradients(2, H, W), fps=25)
    line = one_line_error(*run(capsys, "encode", clip, "-o", tmp_path / "x.ncb", *ENCODE, "--crop", "56x40")[::2])
    assert line.endswith("--crop 56x40 is height x width: 56 lines do not fit a 40-line frame; "
                         "did you mean 40x56?")
    assert not (tmp_path / "x.ncb").exists()


# ----- "-": standard input and output; y4m chroma ---------------------------------------------------------------


def test_encode_reads_stdin_and_writes_only_the_ncb_to_stdout(piped):
    path, r = piped
    reader = Reader.from_path(path)                       # stdout held the .ncb and nothing else
    assert reader.codec == "hnerv" and reader.file_size == len(r.stdout)
    h = reader.header
    assert (h["frames"], h["height"], h["width"]) == (4, 32, 48)
    assert h["chroma"] == "420"                           # the y4m source's yuv420p
    assert (h["source_height"], h["source_width"]) == (H, W)
    err = r.stderr.decode()
    assert "ncodec encode (hnerv)" in err and "psnr_yuv" in err and "psnr_y " in err   # the summary, on stderr


def test_decode_to_stdout_writes_y4m_in_the_source_chroma(piped, tmp_path, capsys):
    path, _ = piped
    r = ncodec("decode", path, "-o", "-", "--device", "cpu")
    assert r.returncode == 0, r.stderr.decode()
    head = y4m_header(r.stdout)
    assert head.startswith("YUV4MPEG2 W48 H32 ") and " C420jpeg" in head
    assert "ncodec decode" in r.stderr.decode()
    out = tmp_path / "piped.y4m"
    out.write_bytes(r.stdout)
    assert read_video(out).frames.shape == (4, 32, 48, 3)
    # a file output keeps it too, and the summary says what y4m got
    code, text, err = run(capsys, "decode", path, "-o", tmp_path / "dec.y4m", "--device", "cpu", "--json")
    assert code == 0, err
    assert json.loads(text)["pix_fmt"] == "yuv420p"
    assert " C420jpeg" in y4m_header((tmp_path / "dec.y4m").read_bytes())
    assert (tmp_path / "dec.y4m").read_bytes() == r.stdout


def test_a_file_without_chroma_decodes_to_444_as_before(capsys, tmp_path):
    fixture = ROOT / "tests" / "fixtures" / "hnerv.ncb"
    assert "chroma" not in Reader.from_path(fixture).header
    code, _, err = run(capsys, "decode", fixture, "-o", tmp_path / "old.y4m", "--device", "cpu")
    assert code == 0, err
    assert " C444" in y4m_header((tmp_path / "old.y4m").read_bytes())


def test_stdio_misuse_is_one_line(capsys, tmp_path, source):
    out = tmp_path / "x.ncb"
    assert "once" in one_line_error(*run(capsys, "encode", "-", "-", "-o", out, "--codec", "pfnr")[::2])
    assert "--workers" in one_line_error(*run(capsys, "encode", source, "-o", "-", *ENCODE, "--workers", "2")[::2])
    assert "--segment" in one_line_error(*run(capsys, "encode", "-", "-o", out, *ENCODE, "--segment", "2")[::2])
    fixture = ROOT / "tests" / "fixtures" / "pc.ncb"
    assert "file output" in one_line_error(*run(capsys, "decode", fixture, "-o", "-")[::2])
    assert not out.exists() and not (ROOT / "-").exists()


# ----- eval ---------------------------------------------------------------------------------------------------------


def test_eval_takes_frames_and_crop_from_the_file(piped, source, tmp_path, capsys):
    path, _ = piped
    dec = tmp_path / "dec.mkv"
    assert run(capsys, "decode", path, "-o", dec, "--device", "cpu")[0] == 0
    # the reference is the whole 6-frame 40x56 source: the file says 4 frames of its 32x48 centre
    code, out, err = run(capsys, "eval", source, dec, "--bitstream", path, "--json")
    assert code == 0, err
    s = json.loads(out)
    assert (s["frames"], s["height"], s["width"]) == (4, 32, 48)
    assert "recorded" in s["crop"]
    assert s["bytes"] == path.stat().st_size
    assert s["bpp"] == pytest.approx(s["bytes"] * 8 / (4 * 32 * 48))
    ref = center_crop(read_video(source, frames=4).frames, (32, 48))
    frames = read_video(dec).frames
    assert s["psnr_rgb"] == pytest.approx(metrics.psnr(ref, frames)[0])
    assert s["psnr_yuv"] == pytest.approx(metrics.psnr_yuv(ref, frames)["psnr_yuv"])
    assert s["psnr_y"] == pytest.approx(metrics.psnr_yuv(ref, frames)["psnr_y"])
    # a file from before the crop was recorded: the file's size from the centre of the larger reference
    old = Reader.from_path(path)
    w = Writer(old.codec, old.codec_version, {k: v for k, v in old.header.items()
                                              if k not in ("chroma", "source_height", "source_width")})
    for sec in old.sections:
        w.add_section(sec.name, old.payload(sec.name), required=sec.required)
    w.write(tmp_path / "old.ncb")
    code, out, err = run(capsys, "eval", source, dec, "--bitstream", tmp_path / "old.ncb", "--json")
    assert code == 0, err
    s_old = json.loads(out)
    assert "file's size" in s_old["crop"] and s_old["psnr_rgb"] == s["psnr_rgb"]
    # a reference that is neither the source nor the file's size is refused, in one line
    small = tmp_path / "small.mkv"
    write_video(small, moving_gradients(4, 36, 50), fps=25)
    assert "right reference" in one_line_error(*run(capsys, "eval", small, dec, "--bitstream", path)[::2])


def test_eval_of_a_pfnr_video_counts_the_bytes_it_added(capsys, tmp_path):
    clips = []
    for i, clip in enumerate((moving_gradients(4, 32, 48), 255 - moving_gradients(5, 32, 48))):
        clips.append(tmp_path / f"v{i + 1}.mkv")
        write_video(clips[-1], clip, fps=25)
    lib = tmp_path / "lib.ncb"
    code, _, err = run(capsys, "encode", *clips, "-o", lib, "--codec", "pfnr", "--density", "0.5", "--size", "20k",
                       "--epochs", "1", "--device", "cpu")
    assert code == 0, err
    dec = tmp_path / "v2.mkv.dec.mkv"
    assert run(capsys, "decode", lib, "--video", "2", "-o", dec, "--device", "cpu")[0] == 0
    code, out, err = run(capsys, "eval", clips[1], dec, "--bitstream", lib, "--video", "2", "--json")
    assert code == 0, err
    s = json.loads(out)
    code, info, _ = run(capsys, "info", lib, "--json")
    listing = json.loads(info)["video_list"]
    assert s["video"] == 2 and s["frames"] == 5
    assert s["bytes"] == listing[1]["bytes_added"] < lib.stat().st_size
    assert s["bpp"] == pytest.approx(s["bytes"] * 8 / (5 * 32 * 48))
    assert s["library_bytes"] == lib.stat().st_size
    assert s["library_bpp"] == pytest.approx(s["library_bytes"] * 8 / (9 * 32 * 48))
    assert "--video" in one_line_error(*run(capsys, "eval", clips[1], dec, "--bitstream", lib)[::2])
    assert "1..2" in one_line_error(*run(capsys, "eval", clips[1], dec, "--bitstream", lib, "--video", "3")[::2])


# ----- progress and the summary -------------------------------------------------------------------------------------


def test_the_fit_bar_ends_full_and_counts_steps(capsys, monkeypatch):
    from codec.fit import FitConfig, fit
    from codec.video.hnerv import HNeRV, hnerv_config

    monkeypatch.setenv("NCODEC_PROGRESS", "1")
    clip = moving_gradients(4, 32, 48)
    for cfg in (FitConfig(max_time=0.5, device="cpu", log_every=2, desc="timed"),
                FitConfig(epochs=3, device="cpu", log_every=2, desc="epochs"),
                FitConfig(epochs=100_000, max_time=0.5, device="cpu", log_every=2, desc="both")):
        capsys.readouterr()
        fit(HNeRV(hnerv_config(32, 48, 4, 40_000)), clip, cfg)
        last = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.strip()][-1]
        assert last.startswith(cfg.desc) and "100%" in last and "step/s" in last, last
        assert "s/s" not in last.replace("step/s", "")


def test_history_table_only_with_verbose(capsys):
    summary = {"bytes": 10, "psnr": 30.0, "history": [{"step": 25, "psnr": 20.0}, {"step": 50, "psnr": 25.0}],
               "videos": [{"video": 1, "psnr": 30.0}]}
    _report(summary, False, "t")
    out = capsys.readouterr().out
    assert "history" not in out and "videos" in out
    _report(summary, False, "t", verbose=True)
    assert "history" in capsys.readouterr().out
    _report(summary, True, "t")
    assert len(json.loads(capsys.readouterr().out)["history"]) == 2
    _report(summary, False, "t", err=True)
    got = capsys.readouterr()
    assert got.out == "" and "psnr" in got.err


def test_encode_verbose_flag(capsys, tmp_path):
    clip = tmp_path / "clip.mkv"
    write_video(clip, moving_gradients(2, 32, 48), fps=25)
    code, out, err = run(capsys, "encode", clip, "-o", tmp_path / "a.ncb", *ENCODE)
    assert code == 0, err
    assert "psnr_yuv" in out and "\nhistory\n" not in out
    code, out, err = run(capsys, "encode", clip, "-o", tmp_path / "b.ncb", *ENCODE, "--verbose")
    assert code == 0, err
    assert "\nhistory\n" in out
