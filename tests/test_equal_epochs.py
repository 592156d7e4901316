"""benchmarks.equal_epochs: a tiny run end to end (fits, decodes, JSON) and its re-analysis; no timing asserted."""
import json

import numpy as np
import pytest

from benchmarks import equal_epochs as E
from codec.errors import UserError


@pytest.fixture
def png_clip(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "clip"
    folder.mkdir()
    base = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    for i in range(4):
        Image.fromarray(np.roll(base, 2 * i, axis=1)).save(folder / f"{i:03d}.png")
    return str(folder)


def test_a_tiny_run_writes_every_recipe_and_reanalyses(png_clip, tmp_path):
    out = tmp_path / "out"
    assert E.main(["--clips", png_clip, "--epochs", "1", "--sizes", "60k", "--seeds", "0", "--frames", "4",
                   "--no-x265", "--out", str(out)]) == 0
    res = json.loads((out / "equal_epochs.json").read_text())
    assert {"machine", "commit", "date", "command"} <= set(res["meta"])
    runs = {r["recipe"]: r for r in res["runs"]}
    assert set(runs) == {"hnerv-paper", "ncodec"} and not any("error" in r for r in runs.values())
    for r in runs.values():
        # PSNR of the file decoded again, the same as encode printed; whole-file bpp
        assert r["psnr-rgb"] == pytest.approx(r["psnr-encode"], abs=0.02)
        assert r["bpp"] == pytest.approx(r["bytes"] * 8 / (4 * 64 * 64), rel=1e-6)
        assert r["gflop-per-epoch"] > 0 and r["frames"] == 4
    rows = {r["recipe"]: r for r in res["summary"]}
    assert rows["hnerv-paper"]["time-ratio"] == pytest.approx(1.0)
    again = tmp_path / "again"
    assert E.main(["--from", str(out / "equal_epochs.json"), "--no-x265", "--out", str(again)]) == 0
    res2 = json.loads((again / "equal_epochs.json").read_text())
    assert res2["summary"] == res["summary"] and res2["meta"]["commit"] == res["meta"]["commit"]


def test_from_refuses_other_json(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"a": 1}')
    with pytest.raises(UserError, match="not an equal_epochs.json"):
        E.main(["--from", str(bad), "--no-x265", "--out", str(tmp_path / "o")])


def test_bd_both_gives_bd_psnr_where_only_the_rates_overlap():
    anchor = {"name": "a", "results": {"bpp": [0.3, 0.5, 0.9], "psnr-rgb": [24.5, 25.1, 25.8]}}
    test = {"name": "t", "results": {"bpp": [0.3, 0.45, 0.9], "psnr-rgb": [29.0, 30.0, 32.0]}}
    b = E.bd_both(anchor, test)
    assert "bd_rate_%" not in b and "no_rate_%" in b          # no common PSNR range
    assert 4.0 < b["bd_psnr_db"] < 6.5
    same = E.bd_both(anchor, anchor)
    assert same["bd_rate_%"] == pytest.approx(0.0, abs=1e-6) and same["bd_psnr_db"] == pytest.approx(0.0, abs=1e-6)
