"""HNeRV recipes (issue 30): selectable by name, today's kept as "hnerv-paper"; the config records what a recipe adds
to the network (learned grids) and today's configs are stored as before; a new recipe's file decodes in a fresh
process to the PSNR encode reported."""
import os
import subprocess
import sys

import numpy as np
import pytest

from bitstream.container import Reader
from bitstream.errors import BitstreamError
from codec import registry
from codec.api import encode_file
from codec.errors import UserError
from codec.video.hnerv import HNeRVConfig, HNeRVDecoder, hnerv_config
from codec.video.inr_codec import FAMILIES, read_config
from codec.video.options import HNERV_RECIPES, HNeRVOptions
from tests.videos import moving_gradients

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_recipe_names_and_todays_recipe():
    fam = FAMILIES["hnerv"]
    assert tuple(fam.recipes) == HNERV_RECIPES
    assert HNeRVOptions().recipe == fam.default_recipe == "ncodec"
    paper = fam.recipe("hnerv-paper")       # today's exact behaviour, the paper's Bunny recipe
    assert (paper.lr, paper.betas, paper.warmup, paper.loss, paper.batch_size, paper.channels_last) == \
        (1e-3, (0.9, 0.999), 0.1, "mse", 2, False)
    with pytest.raises(UserError, match="--recipe"):
        HNeRVOptions(recipe="nope").check()


def test_the_new_recipe_decodes_in_a_fresh_process_to_the_psnr_encode_reported(tmp_path):
    recipe = "ncodec"
    clip = moving_gradients(4, 32, 48)
    source = tmp_path / "clip.npy"
    np.save(source, clip)
    out = str(tmp_path / "clip.ncb")
    codec = registry.get("hnerv")
    summary = encode_file(codec, clip, out, codec.Options(device="cpu", epochs=2, size="60k", recipe=recipe))
    assert summary["recipe"] == recipe
    # the config records the network the recipe built (its learned grids), so the one decoder rebuilds it
    fam = FAMILIES["hnerv"]
    cfg, _, _ = read_config(Reader.from_path(out), fam)
    assert cfg == fam.config_rule(fam.recipe(recipe))(32, 48, 4, 60_000) and cfg.stage_grids == (2, 3, 4)
    script = ("import sys, numpy as np, ncodec; from codec.video.metrics import psnr; "
              "print(repr(psnr(np.load(sys.argv[1]), ncodec.decode(sys.argv[2], device='cpu'))[0]))")
    proc = subprocess.run([sys.executable, "-c", script, str(source), out], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout.strip()) == pytest.approx(summary["psnr"], abs=1e-9)


def test_todays_config_is_stored_as_before_and_grids_round_trip():
    plain = hnerv_config(160, 320, 32, 1e5)
    assert "stage_grids" not in plain.to_dict()             # a file without grids: the config JSON of before
    fam = FAMILIES["hnerv"]
    grids = fam.config_rule(fam.recipe("ncodec"))(160, 320, 32, 1e5)
    assert HNeRVConfig.from_dict(grids.to_dict()) == grids
    assert HNeRVConfig.from_dict(plain.to_dict()) == plain
    names = set(HNeRVDecoder(grids).state_dict())
    assert names - set(HNeRVDecoder(plain).state_dict()) == {"grids.2", "grids.3", "grids.4"}
    with pytest.raises(BitstreamError):
        HNeRVConfig.from_dict({**grids.to_dict(), "stage_grids": [7]})       # no block 7: refused
    small = fam.config_rule(fam.recipe("ncodec"))(160, 320, 32, 6e4)         # too small for grids: the plain net
    assert small == hnerv_config(160, 320, 32, 6e4)
