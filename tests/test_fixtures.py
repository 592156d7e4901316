"""Compatibility: the files in tests/fixtures/, written by an earlier ncodec (the commit in expected.json), keep
decoding through `ncodec decode` to exactly the outputs that code decoded them to, bit for bit.

Every codec has a file: nerv, hnerv, nervpp, nirvana, a two-video pfnr library, an hnerv --segment file, pc (with
its model and a 'names' section) and student (with its model, context prior and 'names' section). How they were
made: tests/fixtures/make_fixtures.py and tests/fixtures/README.md. Never regenerate them to make this test pass.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli.main import main

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
FILES = EXPECTED["fixtures"]
DECODES = [pytest.param(name, i, id=f"{name}-{'_'.join(d['args']) or 'all'}-{d.get('output', 'png')}")
           for name, f in FILES.items() for i, d in enumerate(f["decodes"])]


def _cli(capsys, *args) -> str:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 0, f"ncodec {' '.join(map(str, args))} exited {code}: {err.strip()}"
    return out


def _args(decode: dict) -> list[str]:
    """The decode arguments, with model files named relative to the fixtures folder."""
    return [str(FIXTURES / a) if a.endswith((".pcm", ".safetensors")) else a for a in decode["args"]]


def _expected_array(decode: dict) -> np.ndarray:
    a = np.load(FIXTURES / decode["expected"], allow_pickle=False)
    if "slice" in decode:
        start, stop = decode["slice"]
        a = a[start:stop]
    return a


def _png_folder(folder: Path) -> list[tuple[str, np.ndarray]]:
    files = sorted(folder.glob("*.png"))
    out = []
    for f in files:
        with Image.open(f) as img:
            out.append((f.name, np.asarray(img)))
    return out


@pytest.mark.parametrize("name", list(FILES))
def test_fixture_files_are_the_ones_written_then(name):
    f = FILES[name]
    for file, sha in [(f["file"], f["sha256"])] + ([(f["model"], f["model_sha256"])] if "model" in f else []):
        assert hashlib.sha256((FIXTURES / file).read_bytes()).hexdigest() == sha, f"{file} was modified"


@pytest.mark.parametrize("name, i", DECODES)
def test_fixture_decodes_to_the_frozen_output(name, i, tmp_path, capsys):
    f = FILES[name]
    decode = f["decodes"][i]
    path = FIXTURES / f["file"]
    if f["kind"] == "video":
        out = tmp_path / "frames"                  # a PNG folder: lossless RGB
        _cli(capsys, "decode", path, "-o", out, "--device", "cpu", *_args(decode))
        frames = np.stack([np.asarray(Image.fromarray(a).convert("RGB")) for _, a in _png_folder(out)])
        expected = _expected_array(decode)
        assert frames.dtype == np.uint8 and frames.shape == expected.shape
        assert np.array_equal(frames, expected), (
            f"{f['file']} {' '.join(decode['args'])}: {int((frames != expected).sum())} of {expected.size} values "
            f"differ (max |diff| {int(np.abs(frames.astype(int) - expected).max())})")
    elif f["kind"] == "images":
        expected = _expected_array(decode)
        if decode["output"] == "npy":
            _cli(capsys, "decode", path, "-o", tmp_path / "out.npy", "--device", "cpu", *_args(decode))
            pixels = np.load(tmp_path / "out.npy", allow_pickle=False)
            assert pixels.dtype == np.uint8 and pixels.shape == expected.shape
            assert np.array_equal(pixels, expected)
        else:                                      # a PNG folder: the stored names come back
            _cli(capsys, "decode", path, "-o", tmp_path / "out", "--device", "cpu", *_args(decode))
            images = _png_folder(tmp_path / "out")
            assert [n for n, _ in images] == f["names"]
            for (n, a), e in zip(images, expected):
                assert np.array_equal(a.reshape(e.shape), e), n
    else:
        assert f["kind"] == "features"
        _cli(capsys, "decode", path, "-o", tmp_path / "pred.json", "--device", "cpu", *_args(decode))
        predictions = json.loads((tmp_path / "pred.json").read_text())["predictions"]
        assert predictions == decode["expected_predictions"]


@pytest.mark.parametrize("name", list(FILES))
def test_fixture_container_fields(name):
    from bitstream.container import Reader

    want = FILES[name]["info"]
    r = Reader.from_path(FIXTURES / FILES[name]["file"])
    assert "%d.%d" % tuple(r.format_version) == want["format"]
    assert (r.codec, r.codec_version) == (want["codec"], want["codec_version"])
    assert {k: {"hex": v.hex()} if isinstance(v, bytes) else v for k, v in r.header.items()} == want["header"]
    assert [{"name": s.name, "bytes": s.length, "required": s.required, "crc32": f"{s.crc32:08x}"}
            for s in r.sections] == want["sections"]


@pytest.mark.parametrize("name", list(FILES))
def test_fixture_info_json(name, capsys):
    want = FILES[name]["info"]
    got = json.loads(_cli(capsys, "info", FIXTURES / FILES[name]["file"], "--json"))
    for key in ("format", "codec", "codec_version", "sections"):
        assert got[key] == want[key], key
    assert set(got["header"]) == set(want["header"])
    for key, value in want["header"].items():
        if isinstance(value, dict):                # a bytes field: as hex, however the JSON spells it
            assert got["header"][key] in (value["hex"], value), key
        else:
            assert got["header"][key] == value, key
