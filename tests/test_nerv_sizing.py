"""benchmarks.nerv_sizing: the paper-stem rule as it was before issue 30, and a tiny run of both rules through a real
.ncb file (fast, CPU, no timing asserted)."""
from __future__ import annotations

import json
import math

from benchmarks import nerv_sizing
from tests.videos import write_clip_file


def test_paper_stem_rule_is_the_rule_before_issue_30():
    # docs/INR.md, "Sizes": the paper's stem at small frames, against today's blocks first
    for (h, w), (fc, hidden), (new_fc, new_hidden) in [((160, 320), (2, 595), (16, 38)),
                                                       ((144, 176), (4, 512), (23, 41))]:
        old = nerv_sizing.describe(nerv_sizing.paper_stem_config(h, w, 32, 1e5))
        new = nerv_sizing.describe(nerv_sizing.rule_config("blocks-first")(h, w, 32, 1e5))
        assert (old["fc-dim"], old["stem-hidden"]) == (fc, hidden)
        assert (new["fc-dim"], new["stem-hidden"]) == (new_fc, new_hidden)
        assert old["stem-share"] > 0.8 and new["stem-share"] <= 0.25
        assert abs(old["params"] - 1e5) <= 5e3 and abs(new["params"] - 1e5) <= 5e3


def test_tiny_run_writes_both_rules_from_decoded_files(tmp_path):
    clip = write_clip_file(tmp_path, 4, 48, 64)
    out = tmp_path / "out"
    assert nerv_sizing.main(["--clips", clip, "--frames", "4", "--size", "20k", "--epochs", "1", "--seeds", "0",
                             "--out", str(out)]) == 0
    result = json.loads((out / "nerv_sizing.json").read_text())
    assert {"machine", "commit", "date", "command"} <= set(result["meta"])
    assert result["rules"] == ["paper-stem", "blocks-first"] and result["baseline"] == "paper-stem"
    runs = {r["rule"]: r for r in result["runs"]}
    assert set(runs) == {"paper-stem", "blocks-first"}
    for r in runs.values():
        assert "error" not in r and r["epochs"] == 1 and r["seed"] == 0
        assert math.isfinite(r["psnr-rgb"]) and r["psnr-rgb"] > 0
        assert r["bpp"] == r["bytes"] * 8 / (4 * 48 * 64)
        assert abs(r["params"] - 20000) <= 1000 and r["s-per-epoch"] > 0
    assert runs["paper-stem"]["fc-dim"] < runs["blocks-first"]["fc-dim"]
    assert runs["paper-stem"]["group"] == runs["blocks-first"]["group"]        # started together
    rows = {r["rule"]: r for r in result["summary"]}
    assert rows["paper-stem"]["time-ratio"] == 1.0 and rows["blocks-first"]["time-ratio"] > 0
    for row in rows.values():
        assert {"psnr-rgb", "psnr-spread", "bpp", "params", "s-per-epoch", "stem-share", "widths"} <= set(row)
