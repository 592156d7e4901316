"""`ncodec train pc`'s regularisation and phase options: --shift, --holdout, --step-start/--step-end, --init."""
import json

import numpy as np
import pytest

from cli.main import main
from codec.lossless.pc import model_file


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from sklearn.datasets import load_digits

    d = tmp_path_factory.mktemp("pcopts")
    np.save(d / "train.npy", load_digits().images.astype(np.uint8)[:400])
    return d


def train(capsys, d, *extra):
    code = main(["train", "pc", str(d / "train.npy"), "--latents", "4", "--epochs", "2", "--device", "cpu",
                 "--json", *map(str, extra)])
    out, err = capsys.readouterr()
    return code, out, err


def test_shift_holdout_and_a_second_phase_from_init(capsys, digits):
    code, out, err = train(capsys, digits, "-o", digits / "a.pcm", "--shift", "1", "--holdout", "50")
    assert code == 0, err
    first = model_file.load_model(digits / "a.pcm")
    assert first.meta["shift"] == 1 and first.meta["holdout"] == 50
    code, out, err = train(capsys, digits, "-o", digits / "b.pcm", "--init", digits / "a.pcm",
                           "--latents", "8", "--step-start", "0.1", "--step-end", "0.02")
    assert code == 0, err
    second = model_file.load_model(digits / "b.pcm")
    # the second phase keeps the first one's tree and latent count (--latents does not apply) and moves on from it
    assert np.array_equal(second.parent, first.parent) and second.latents == first.latents == 4
    assert second.meta["init_sha256"] == first.sha256 and not np.array_equal(second.leaf, first.leaf)
    assert json.loads(out)["latents"] == 4
    code, out, err = train(capsys, digits, "-o", digits / "t.pcm", "--tree-from", digits / "a.pcm", "--latents", "3")
    assert code == 0, err
    fresh = model_file.load_model(digits / "t.pcm")
    assert np.array_equal(fresh.parent, first.parent) and fresh.latents == 3
    assert fresh.meta["tree_sha256"] == first.sha256


@pytest.mark.parametrize("extra, fragment", [
    (["--step-start", "0"], "--step-start must be in (0, 1]"),
    (["--step-end", "1.5"], "--step-end must be in (0, 1]"),
    (["--shift", "-1"], "--shift must be >= 0"),
    (["--holdout", "400"], "leaves no training images"),
])
def test_impossible_options_are_one_line_errors(capsys, digits, extra, fragment):
    code, _, err = train(capsys, digits, "-o", digits / "x.pcm", *extra)
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err


def test_init_of_another_image_size_is_refused(capsys, digits, tmp_path):
    code, _, err = train(capsys, digits, "-o", digits / "c.pcm")
    assert code == 0, err
    np.save(tmp_path / "big.npy", np.zeros((20, 9, 9), np.uint8))
    code = main(["train", "pc", str(tmp_path / "big.npy"), "-o", str(tmp_path / "d.pcm"), "--init",
                 str(digits / "c.pcm"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "models 8x8x1 images, these are 9x9x1" in err, err
    code = main(["train", "pc", str(tmp_path / "big.npy"), "-o", str(tmp_path / "d.pcm"), "--tree-from",
                 str(digits / "c.pcm"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "--tree-from" in err and "8x8x1" in err and err.count("\n") == 1, err
