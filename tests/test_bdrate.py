"""Bjontegaard metrics against worked examples, plus the benchmark helpers built on them (result files, RD plot,
classical-codec sweep)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks.bdrate import bd_psnr, bd_rate, bd_rate_json, main as bdrate_main
from codec.errors import UserError
from tests.videos import moving_gradients

# UVG 1080p, RGB PSNR: (bpp, dB) as listed in shared/research/video_inr.md sections 3.4, 7.1, 8
HINERV_PAPER = ([0.0149, 0.0297, 0.0580, 0.1154, 0.2262], [34.53, 36.01, 37.45, 38.60, 39.63])
HINERV_NEW = ([0.0150, 0.0299, 0.0583, 0.1159, 0.2271], [34.80, 36.24, 37.51, 38.72, 39.81])
HNERV_1080P = ([0.01520, 0.02954, 0.05795, 0.11529, 0.23359], [32.49, 33.68, 34.94, 36.15, 37.34])
HM_RA = ([0.0075, 0.0155, 0.0324, 0.0730, 0.1878, 0.754], [32.79, 34.63, 36.41, 38.06, 39.43, 41.52])
VTM_RA = ([0.00795, 0.01440, 0.02605, 0.04875, 0.09603, 0.12095, 0.15852, 0.20068],
          [33.38, 34.87, 36.29, 37.60, 38.74, 39.03, 39.34, 39.61])
C3 = ([0.0159, 0.0227, 0.0331, 0.0546, 0.0846, 0.1276, 0.2540, 0.4425],
      [32.93, 33.97, 35.03, 36.33, 37.45, 38.36, 39.70, 40.79])


@pytest.mark.parametrize("anchor, test, expected, tol", [
    (HNERV_1080P, HINERV_PAPER, -72.2, 0.15),  # HiNeRV paper: -72.3% vs HNeRV
    (HM_RA, HINERV_NEW, -0.1, 0.1),
    (VTM_RA, HINERV_NEW, 17.8, 0.2),
    (HM_RA, VTM_RA, -14.5, 0.1),
    (HM_RA, C3, 56.2, 0.1),
])
def test_bd_rate_on_published_uvg_curves(anchor, test, expected, tol):
    assert bd_rate(*anchor, *test) == pytest.approx(expected, abs=tol)


def test_bd_rate_of_a_constant_rate_factor_is_exact():
    rate = np.array([0.01, 0.02, 0.05, 0.1, 0.2])
    quality = np.array([30.0, 32.5, 35.0, 36.8, 38.1])
    for r in (0.5, 0.8, 1.0, 1.7):
        assert bd_rate(rate, quality, r * rate, quality) == pytest.approx((r - 1) * 100, abs=1e-9)
    for d in (-1.0, 0.25, 2.0):
        assert bd_psnr(rate, quality, rate, quality + d) == pytest.approx(d, abs=1e-9)
    # points given in any order, and a quadratic fit with 3 points reproduces the same shift
    order = [3, 0, 4, 1, 2]
    assert bd_rate(rate[order], quality[order], 0.5 * rate, quality) == pytest.approx(-50.0, abs=1e-9)
    assert bd_rate(rate[:3], quality[:3], 2 * rate[:3], quality[:3]) == pytest.approx(100.0, abs=1e-9)


def test_bd_rate_swapping_anchor_and_test_inverts_the_ratio():
    a, b = bd_rate(*HM_RA, *HINERV_NEW), bd_rate(*HINERV_NEW, *HM_RA)
    assert (1 + a / 100) * (1 + b / 100) == pytest.approx(1.0, abs=1e-12)
    assert bd_psnr(*HNERV_1080P, *HINERV_NEW) > 2.0 and bd_psnr(*HINERV_NEW, *HNERV_1080P) < -2.0


def test_bd_rate_refuses_bad_curves():
    with pytest.raises(UserError):
        bd_rate([0.1, 0.2], [30, 31], [0.1, 0.2], [30, 31])  # too few points
    with pytest.raises(UserError):
        bd_rate([0.1, 0.2, 0.3, 0.4], [30, 31, 32, 33], [0.1, 0.2, 0.3, 0.4], [40, 41, 42, 43])  # no overlap
    with pytest.raises(UserError):
        bd_rate([0.0, 0.2, 0.3, 0.4], [30, 31, 32, 33], [0.1, 0.2, 0.3, 0.4], [30, 31, 32, 33])  # zero rate
    with pytest.raises(UserError):
        bd_rate([0.1, 0.2, 0.3], [30, 31], [0.1, 0.2, 0.3], [30, 31, 32])  # lengths differ


def _result_file(path, name, curve):
    path.write_text(json.dumps({"name": name, "results": {"bpp": curve[0], "psnr-rgb": curve[1]}}))
    return path


def test_result_files_bd_rate_cli_and_plot(tmp_path, capsys):
    from benchmarks.plot import main as plot_main

    anchor = _result_file(tmp_path / "hnerv.json", "HNeRV", HNERV_1080P)
    test = _result_file(tmp_path / "hinerv.json", "HiNeRV", HINERV_PAPER)
    out = bd_rate_json(anchor, test)
    assert out["anchor"] == "HNeRV" and out["bd_rate_%"] == pytest.approx(-72.2, abs=0.15)
    assert bdrate_main([str(anchor), str(test)]) == 0
    assert "HiNeRV" in capsys.readouterr().out
    assert bdrate_main([str(anchor), str(tmp_path / "missing.json")]) == 2
    with pytest.raises(UserError):
        bd_rate_json(anchor, test, metric="ms-ssim-rgb")

    png = tmp_path / "rd.png"
    assert plot_main([str(anchor), str(test), "-o", str(png), "--title", "UVG"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert plot_main([str(tmp_path / "missing.json"), "-o", str(tmp_path / "x.png")]) == 2


def test_classical_encode_and_sweep_plan():
    from benchmarks.classical import encode_classical, parse_clip_spec, result_json, sweep_plan

    clip = moving_gradients()
    r = encode_classical(clip, 25, codec="x264", preset="ultrafast", crf=23, keep_decoded=True)
    assert r["codec"] == "libx264" and r["frames"] == 8 and r["bytes"] > 0
    assert r["bpp"] == pytest.approx(r["bytes"] * 8 / (8 * 48 * 64))
    assert r["psnr"] > 30 and 0.9 < r["ms_ssim"] <= 1.0
    assert r["decoded"].shape == clip.shape and math.isfinite(r["encode_fps"])
    coarse = encode_classical(clip, 25, codec="x264", preset="ultrafast", crf=40, ms_ssim=False)
    assert coarse["bytes"] < r["bytes"] and coarse["psnr"] < r["psnr"] and coarse["ms_ssim"] is None
    with pytest.raises(UserError):
        encode_classical(clip[:, :47], 25, codec="x264")

    record = result_json("tiny", "tiny clip", "libx264", "ultrafast", [r, coarse])
    assert record["results"]["bpp"] == [r["bpp"], coarse["bpp"]] and set(record) >= {"name", "results"}

    plan = sweep_plan(["x264", "x265", "av1"], ["medium", "veryslow"], None)
    assert ("libx265", "veryslow", [23, 28, 33]) in plan and ("libsvtav1", "6", [25, 35, 45, 55]) in plan
    assert len(plan) == 5
    assert parse_clip_spec("bunny:640x1280")[0::2] == ("bunny-640x1280", (640, 1280))
    assert parse_clip_spec("some/dir/clip.y4m", (64, 64)) == ("clip-64x64", "some/dir/clip.y4m", (64, 64))
    with pytest.raises(UserError):
        sweep_plan(["ffv1"], ["medium"], None)


def test_rd_plot_legend_names_bd_rates_labels_sizes_and_stays_off_the_data(tmp_path):
    import matplotlib.pyplot as plt

    from benchmarks.plot import draw_rd, find_anchor, format_bd, load_curve, plot_rd, size_label

    sizes = ["0.1M", "0.2M", "0.4M", "0.8M", "1.6M"]
    inr = {"name": "HNeRV (ncodec)", "results": {"size": sizes, "bpp": HNERV_1080P[0], "psnr-rgb": HNERV_1080P[1]}}
    x265 = {"name": "x265 medium", "results": {"crf": [18, 23, 28, 33, 38, 43], "bpp": HM_RA[0], "psnr-rgb": HM_RA[1]}}
    far = {"name": "far", "results": {"bpp": [0.1, 0.2, 0.3, 0.4], "psnr-rgb": [50.0, 51.0, 52.0, 53.0]}}
    curves = [load_curve(d, "psnr-rgb", d["name"]) for d in (inr, x265, far)]
    fig = draw_rd(curves, anchor=find_anchor(curves, "x265"))
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    bd = bd_rate(*HM_RA, *HNERV_1080P)
    assert labels[0] == f"HNeRV (ncodec): BD-rate {format_bd(bd)} vs x265 medium"
    assert labels[1] == "x265 medium (anchor)"
    assert labels[2] == "far: BD-rate n/a vs x265 medium (no shared quality range)"
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == sizes                 # the INR points only, each with its size
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert not fig.legends[0].get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))
    plt.close(fig)

    assert (size_label(98304), size_label(1.5e6), size_label("lambda0.01"), size_label("0.3M")) == \
        ("0.098M", "1.5M", "λ=0.01", "0.3M")
    assert format_bd(1450.4) == "+1450%" and format_bd(-12.345) == "-12.3%"
    # a result written before the CompressAI names ("psnr", "ms_ssim") still plots and still gets its BD-rate
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"name": "old", "results": {"bpp": HINERV_PAPER[0], "psnr": HINERV_PAPER[1],
                                                          "ms_ssim": [0.9, 0.92, 0.94, 0.96, 0.97]}}))
    anchor = _result_file(tmp_path / "hnerv.json", "HNeRV", HNERV_1080P)
    assert bd_rate_json(anchor, old)["bd_rate_%"] == pytest.approx(-72.2, abs=0.15)
    assert len(load_curve(json.loads(old.read_text()), "ms-ssim-rgb", old)["rate"]) == 5
    png = plot_rd([anchor, old], tmp_path / "rd.png", anchor=anchor)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
