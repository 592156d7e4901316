"""nervpp codec: the model matches the paper's sizes, encode -> decode through the CLI (one decode in a fresh
process), PSNR printed by encode equals the decoded file's, bad input."""
import json
import os
import subprocess
import sys

import pytest
import torch

from cli.main import main
from codec.video import metrics
from codec.video.io import read_video, write_video
from codec.video.layers import meta_count
from codec.video.nervpp import NeRVPP, NeRVPPConfig, nervpp_config, parse_alias
from tests.videos import moving_gradients

T, H, W = 6, 32, 48
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("fc_dim, params", [(8, 1.90e6), (26, 3.38e6), (58, 6.38e6), (112, 12.55e6)])
def test_paper_configs_have_the_papers_sizes(fc_dim, params):
    cfg = NeRVPPConfig(720, 1280, 132, (5, 2, 2, 2, 2), 9, 16, fc_dim)
    assert meta_count(lambda: NeRVPP(cfg)) == pytest.approx(params, rel=0.005)


def test_size_rule_and_aliases():
    for hw, size in (((720, 1280), "XS"), ((144, 176), 300e3), ((144, 176), 50e3), ((32, 48), 60e3)):
        target = parse_alias(size)
        cfg = nervpp_config(*hw, 10, target)
        assert meta_count(lambda: NeRVPP(cfg)) == pytest.approx(target, rel=0.05)
    assert nervpp_config(720, 1280, 10, parse_alias("xs")).lower_width == 80     # the paper's family


def test_forward_shape_and_skip_path():
    cfg = nervpp_config(H, W, T, 60e3)
    model = NeRVPP(cfg)
    with torch.no_grad():
        out = model(torch.arange(3))
    assert out.shape == (3, 3, H, W) and 0 <= float(out.min()) and float(out.max()) <= 1
    # the bilinear skip carries the projection around each stage: zeroing the stage body leaves it
    with torch.no_grad():
        for st in model.stages:
            st.post.pw2.weight.zero_()
            st.post.pw2.bias.zero_()
            st.up.conv.weight.zero_()
            st.up.conv.bias.zero_()
        assert float(model(torch.arange(2)).std()) > 0


def test_cli_round_trip(tmp_path, capsys):
    clip = tmp_path / "clip.mkv"
    write_video(clip, moving_gradients(T, H, W), fps=25)
    out = str(tmp_path / "c.ncb")
    code = main(["encode", str(clip), "-o", out, "--codec", "nervpp", "--size", "60k", "--epochs", "2",
                 "--device", "cpu", "--json"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(stdout)
    assert abs(summary["params"] - 60_000) <= 3_000
    dec = tmp_path / "d.mkv"
    proc = subprocess.run([sys.executable, "-m", "cli.main", "decode", out, "-o", str(dec), "--device", "cpu",
                           "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["frames"] == T
    decoded, original = read_video(dec).frames, read_video(clip).frames
    assert decoded.shape == original.shape
    assert metrics.psnr(original, decoded)[0] == pytest.approx(summary["psnr"], abs=1e-9)
    assert main(["info", out]) == 0
    assert "nervpp" in capsys.readouterr().out


@pytest.mark.parametrize("args", [["--size", "0"], ["--size", "XXL"], ["--size", "500"]])
def test_bad_input_is_one_line(tmp_path, capsys, args):
    clip = tmp_path / "clip.mkv"
    write_video(clip, moving_gradients(T, H, W), fps=25)
    code = main(["encode", str(clip), "-o", str(tmp_path / "x.ncb"), "--codec", "nervpp", "--epochs", "1",
                 "--device", "cpu", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("ncodec: error:") and len(err.strip().splitlines()) == 1
