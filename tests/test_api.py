"""The Python API (ncodec.py -> codec/api.py), the per-codec CLI options, and the import rules that keep the CLI
fast and the layers apart."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ncodec
from cli.main import main
from codec.errors import UserError
from tests.videos import moving_gradients

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"

TINY = {
    "nerv": {"epochs": 2, "size": "20k"},
    "hnerv": {"epochs": 2, "size": "40k"},
    "nervpp": {"epochs": 2, "size": "20k"},
    "nirvana": {"steps_per_group": 2, "group": 4},
}


@pytest.fixture(scope="module")
def clip():
    return moving_gradients(frames=6, height=32, width=48)


@pytest.mark.parametrize("codec", sorted(TINY))
def test_api_round_trips_an_array(codec, clip, tmp_path):
    out = tmp_path / f"{codec}.ncb"
    summary = ncodec.encode(clip, out, codec=codec, device="cpu", **TINY[codec])
    assert summary["bytes"] == out.stat().st_size
    frames = ncodec.decode(out, device="cpu")
    assert frames.dtype == np.uint8 and frames.shape == clip.shape
    # the encoder's PSNR is the decoded file's
    err = np.mean((frames.astype(np.float64) - clip) ** 2, axis=(1, 2, 3))
    assert abs(np.mean(10 * np.log10(255.0 ** 2 / err)) - summary["psnr"]) < 1e-3
    assert ncodec.info(out)["codec"] == codec
    part = ncodec.decode(out, frames="2:5", device="cpu")
    assert np.array_equal(part, frames[2:5])
    assert np.array_equal(ncodec.decode(out, frames=slice(1, 3), device="cpu"), frames[1:3])


def test_api_pfnr_library(clip, tmp_path):
    out = tmp_path / "lib.ncb"
    summary = ncodec.encode(clip, out, codec="pfnr", device="cpu", epochs=2, size="20k")
    assert summary["videos_in_library"] == 1
    frames = ncodec.decode(out, video=1, device="cpu")
    assert frames.shape == clip.shape
    assert np.array_equal(ncodec.decode(out, frames="2:5", device="cpu"), frames[2:5])


def test_api_refuses_unknown_options_and_codecs(clip, tmp_path):
    with pytest.raises(UserError, match="has no option 'lmbda'"):
        ncodec.encode(clip, tmp_path / "x.ncb", codec="hnerv", lmbda=0.1)
    with pytest.raises(UserError, match="unknown codec"):
        ncodec.encode(clip, tmp_path / "x.ncb", codec="nope")
    with pytest.raises(UserError, match="--weight-bits"):
        ncodec.encode(clip, tmp_path / "x.ncb", codec="hnerv", weight_bits=40)
    with pytest.raises(UserError, match="uint8"):
        ncodec.encode(clip.astype(np.float32), tmp_path / "x.ncb", codec="hnerv")


def test_codecs_lists_every_codec():
    assert ncodec.codecs() == sorted(["nerv", "hnerv", "nervpp", "nirvana", "pfnr", "pc", "student"])


# ---------------------------------------------------------------------------------------------------------------
# the CLI's options come from the codec's Options


def _help(args, capsys) -> str:
    assert main(args + ["--help"]) == 0
    return capsys.readouterr().out


def test_per_codec_help_lists_only_that_codecs_options(capsys):
    pc = _help(["encode", "--codec", "pc"], capsys)
    assert "--pc-batch" in pc and "--model" in pc and "--device" in pc
    for other in ("--lambda", "--group", "--steps-per-group", "--embed-bits", "--density", "--max-frames"):
        assert other not in pc
    nirvana = _help(["encode", "--codec", "nirvana"], capsys)
    assert "--lambda" in nirvana and "--steps-per-group" in nirvana and "--latent-lr" in nirvana
    assert "--pc-batch" not in nirvana and "--embed-bits" not in nirvana and "--epochs" not in nirvana
    hnerv = _help(["encode", "--codec", "hnerv"], capsys)
    assert "--embed-bits" in hnerv and "--segment" in hnerv and "--lambda" not in hnerv
    bare = _help(["encode"], capsys)
    assert "--codec NAME --help" in bare


def test_a_flag_of_another_codec_is_refused(capsys, tmp_path):
    assert main(["encode", "x.mp4", "-o", str(tmp_path / "x.ncb"), "--codec", "pc", "--lambda", "1"]) == 2
    assert "--lambda" in capsys.readouterr().err


def test_help_does_not_import_torch():
    for args in (["--help"], ["encode", "--codec", "hnerv", "--help"], ["decode", "--help"]):
        r = subprocess.run([sys.executable, "-X", "importtime", "-m", "ncodec", *args], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if "|" in line}
        assert "torch" not in imported and "compressai" not in imported, args


# ---------------------------------------------------------------------------------------------------------------
# layering


def _imports(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module)
    return mods


def test_no_library_module_imports_the_cli():
    for folder in ("codec", "bitstream"):
        for path in (ROOT / folder).rglob("*.py"):
            assert not any(m == "cli" or m.startswith("cli.") for m in _imports(path)), path


def test_the_registry_imports_no_codec():
    mods = _imports(ROOT / "codec" / "registry.py")
    assert all(m.split(".")[0] != "codec" or m in ("codec.errors", "codec.base") for m in mods), mods


def test_api_pc_round_trips_images_bit_exactly(tmp_path):
    rng = np.random.default_rng(0)
    images = (rng.integers(0, 4, size=(6, 8, 8)) * 60).astype(np.uint8)
    out = tmp_path / "pc.ncb"
    model = str(FIXTURES / "pc_model.pcm")
    summary = ncodec.encode(images, out, codec="pc", model=model, device="cpu")
    assert summary["images"] == 6
    assert np.array_equal(ncodec.decode(out, model=model, device="cpu"), images)


def test_api_student_classifies_what_the_files_classify(tmp_path):
    from PIL import Image

    model = str(FIXTURES / "student_model.safetensors")
    expected = ncodec.decode(FIXTURES / "student.ncb", model=model, device="cpu")
    assert expected.dtype == np.int64 and expected.ndim == 1
    # an array source gives the same latents as the PNG files of the same pixels
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(4, 8, 8), dtype=np.uint8)
    for i, im in enumerate(images):
        Image.fromarray(im).save(tmp_path / f"{i}.png")
    a = ncodec.encode(images, tmp_path / "a.ncb", codec="student", model=model, device="cpu")
    b = ncodec.encode([str(tmp_path / f"{i}.png") for i in range(4)], tmp_path / "b.ncb", codec="student",
                      model=model, device="cpu")
    assert a["images"] == b["images"] == 4
    assert np.array_equal(ncodec.decode(tmp_path / "a.ncb", model=model, device="cpu"),
                          ncodec.decode(tmp_path / "b.ncb", model=model, device="cpu"))


def test_the_clis_segmentable_list_is_the_codecs():
    from cli.main import SEGMENTABLE
    from codec import registry

    assert SEGMENTABLE == {n for n in registry.names() if registry.get(n).segmentable}
