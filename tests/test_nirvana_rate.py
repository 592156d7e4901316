"""benchmarks.nirvana_rate on a tiny clip: the JSON fields of a --bpp run, measured on the decoded file (fast, CPU,
no timing asserted; the tolerance itself is tests/test_nirvana.py's)."""
from __future__ import annotations

import json
import math

import pytest

from benchmarks import nirvana_rate
from tests.videos import write_clip_file


def test_tiny_run_reports_landed_bpp_and_groups(tmp_path):
    clip = write_clip_file(tmp_path, 16, 48, 64)
    out = tmp_path / "out"
    assert nirvana_rate.main(["--clips", clip, "--frames", "16", "--bpps", "1.0", "--group", "4", "--size", "3k",
                              "--steps-per-group", "10", "--out", str(out)]) == 0
    result = json.loads((out / "nirvana_rate.json").read_text())
    assert {"machine", "commit", "date", "command"} <= set(result["meta"])
    assert result["settings"]["steps-per-group"] == 10 and result["settings"]["tolerance"] == 0.1
    (r,) = result["runs"]
    assert r["bpp-target"] == 1.0 and r["groups"] == 4 and r["frames"] == 16
    assert r["bpp"] == r["bytes"] * 8 / (16 * 48 * 64)
    assert r["error-pct"] == pytest.approx(100 * (r["bpp"] - 1.0))
    assert r["within"] == (abs(r["error-pct"]) <= 10) and result["within-all"] == r["within"]
    assert len(r["group-bits"]) == len(r["group-target-bits"]) == len(r["group-lambda"]) == 4
    assert sum(r["group-bits"]) + r["other-bits"] == 8 * r["bytes"]
    assert sum(r["group-share"]) == pytest.approx(1.0)
    assert math.isfinite(r["psnr-rgb"]) and r["psnr-rgb"] > 0
