"""Hostile files and impossible options (issue 28): bounds before allocation, exit codes, lossless integrity.

- A file whose config asks for a huge network is refused from its config alone (Codec.bounds), before any network,
  weight or table is built, with exit 2 and one line; --max-memory raises the memory cap.
- An impossible --size exits 2 naming the largest size that fits, before anything is fitted.
- `ncodec info --json` works on every codec's file.
- A pc file's pixels, and a video file's coded sections, edited with their CRC recomputed, are refused.
"""
from __future__ import annotations

import hashlib
import json
import resource
from pathlib import Path

import numpy as np
import pytest

from bitstream.container import DIGEST_SECTION, Reader, Writer
from bitstream.errors import BitstreamError
from codec import registry
from codec.errors import UserError
from codec.options import DEFAULT_MAX_MEMORY, MAX_PARAMETERS, Options, parse_memory
from tests.cli_helpers import run

FIXTURES = Path(__file__).resolve().parent / "fixtures"
VIDEO = ["nerv", "hnerv", "nervpp", "nirvana", "pfnr"]
MB = 1 << 20


def rewrite(src: Path | bytes, dst: Path, config: dict | None = None, edit: dict[str, bytes] | None = None,
            digests: bool | None = None) -> Path:
    """`src` rewritten with its config's model fields changed, section payloads replaced and every CRC
    recomputed; digests: add a sha256 section of the original payloads (True), drop it (False), keep (None)."""
    r = Reader.from_bytes(src) if isinstance(src, bytes) else Reader.from_path(src)
    w = Writer(r.codec, r.codec_version, dict(r.header))
    payloads = {s.name: r.payload(s.name) for s in r.sections if s.name != DIGEST_SECTION}
    if config:
        conf = json.loads(payloads["config"])
        conf["model"].update(config)
        payloads["config"] = json.dumps(conf).encode()
    # the digests are of the payloads before `edit`: a damage whose CRC was recomputed
    sealed = bytes([8]) + b"".join(hashlib.sha256(p).digest()[:8] for p in payloads.values())
    payloads.update(edit or {})
    for s in r.sections:
        if s.name in payloads:
            w.add_section(s.name, payloads[s.name], required=s.required)
    if digests or (digests is None and r.has(DIGEST_SECTION)):
        w.add_section(DIGEST_SECTION, sealed, required=False)
    w.write(dst)
    return dst


def one_line(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("ncodec: ") and "Traceback" not in err, err
    return lines[0]


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------------------------------------------------------
# bounds before allocation

HUGE = [  # (codec, config fields): each asks for far more than the caps allow
    ("hnerv", {"lower_width": 4096}),               # the reported attack: 24 s and 3.1 GB before
    ("hnerv", {"lower_width": 65536}),              # 618 GB asked for
    ("hnerv", {"fc_dim": 4096}),
    ("nerv", {"fc_dim": 4096, "lower_width": 4096}),
    ("nervpp", {"lower_width": 4096}),
    ("pfnr", {"fc_dim": 4096, "lower_width": 4096}),
    ("nirvana", {"hidden": 4096, "layers": 16}),
]


@pytest.mark.parametrize("codec, fields", HUGE, ids=[f"{c}-{'-'.join(f)}" for c, f in HUGE])
def test_a_huge_config_is_refused_before_anything_is_built(codec, fields, tmp_path, capsys, monkeypatch):
    path = rewrite(FIXTURES / f"{codec}.ncb", tmp_path / "huge.ncb", config=fields)
    cls = type(registry.get(codec))

    def never(*args, **kwargs):
        raise AssertionError("the network was built: the bounds came too late")

    monkeypatch.setattr(cls, "load", never)           # what builds networks and decodes weights
    if codec == "pfnr":
        from codec.video import pfnr
        monkeypatch.setattr(pfnr.Library, "_from_config", classmethod(never))   # info folds sessions in
    before = peak_rss()
    video = ["--video", "1"] if codec == "pfnr" else []
    line = one_line(*run(capsys, "decode", path, "--device", "cpu", *video)[::2])
    assert "refused before allocating" in line
    code, out, err = run(capsys, "info", path, "--json")
    assert code == 0, err
    assert "refused before allocating" in json.loads(out)["model"]
    with pytest.raises(BitstreamError, match="refused before allocating"):
        registry.get(codec).open(Reader.from_path(path), registry.get(codec).DecodeOptions(device="cpu"))
    assert peak_rss() - before < 500 * MB


def test_the_weights_section_must_declare_the_config_s_network(tmp_path):
    """A config edited within the caps: the weights section's tensor headers no longer match it, and that is
    seen before the network is built or a value decoded."""
    path = rewrite(FIXTURES / "hnerv.ncb", tmp_path / "wide.ncb", config={"lower_width": 300})
    codec = registry.get("hnerv")
    with pytest.raises(BitstreamError, match="declares shape"):
        codec.bounds(Reader.from_path(path), codec.DecodeOptions(device="cpu"))


def test_max_memory_is_the_decode_cap(tmp_path, capsys):
    path = FIXTURES / "hnerv.ncb"
    b = registry.get("hnerv").bounds(Reader.from_path(path), registry.get("hnerv").DecodeOptions(device="cpu"))
    assert 0 < b.parameters < MAX_PARAMETERS and b.decode_bytes + b.batch_bytes < DEFAULT_MAX_MEMORY
    line = one_line(*run(capsys, "decode", path, "--device", "cpu", "--max-memory", "100K")[::2])
    assert "over the 100 KiB cap" in line and "--max-memory" in line
    code, _, err = run(capsys, "decode", path, "--device", "cpu", "--max-memory", "1G", "-o", tmp_path / "f")
    assert code == 0, err
    code, out, _ = run(capsys, "info", path, "--max-memory", "100K", "--json")
    assert code == 0 and "cap" in json.loads(out)["model"]
    one_line(*run(capsys, "decode", path, "--max-memory", "lots")[::2])


def test_on_a_gpu_a_decode_batch_must_fit_the_device(monkeypatch):
    """The activations of a decode batch live on the GPU: checked against its memory, not the host cap (no GPU
    needed: the device and its properties are stood in)."""
    import types

    import torch

    from codec import base
    from codec.base import Bounds, enforce_bounds

    monkeypatch.setattr(base, "_device", lambda options: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(total_memory=16 << 30))
    options = Options(device="cuda")
    enforce_bounds("hnerv", Bounds(1000, 1 << 20, 1 << 20, 6 << 30), options)    # over the host cap, on the GPU
    enforce_bounds("hnerv", Bounds(1000, 1 << 20, 1 << 20, 20 << 30), options, decode=False)     # info renders none
    with pytest.raises(BitstreamError, match="--batch-size 1"):
        enforce_bounds("hnerv", Bounds(1000, 1 << 20, 1 << 20, 20 << 30), options)
    with pytest.raises(BitstreamError, match="cap"):                                # the host part still counts
        enforce_bounds("hnerv", Bounds(1000, 5 << 30, 5 << 30, 1 << 20), options)


def test_parse_memory():
    assert parse_memory("8G") == 8 << 30 and parse_memory("512M") == 512 << 20 and parse_memory("1.5GiB") == 3 << 29
    assert parse_memory("2e9") == 2_000_000_000 and Options().memory_cap() == DEFAULT_MAX_MEMORY
    for bad in ("lots", "-1G", "0", "nan"):
        with pytest.raises(UserError):
            parse_memory(bad)


def test_a_student_file_asking_for_a_huge_network_is_refused_unbuilt(tmp_path, monkeypatch):
    from codec.features import model_file, student

    mf = model_file.load(FIXTURES / "student_model.safetensors", expect="student")
    config = json.loads(json.dumps(mf.config))
    config["teacher"]["widths"] = [4096, 4096, 4096]
    config["teacher"]["blocks"] = 64
    path = tmp_path / "huge.safetensors"
    model_file.save(path, "student", config, mf.tensors)
    monkeypatch.setattr(student.Student, "__init__", lambda *a, **k: (_ for _ in ()).throw(AssertionError("built")))
    with pytest.raises(UserError, match="the file stores"):
        model_file.load_student(str(path))
    with pytest.raises(UserError, match="the file stores"):
        model_file.peek_student(path)
    config["teacher"]["blocks"] = 10**6                # out of range: refused before any arithmetic
    model_file.save(path, "student", config, mf.tensors)
    with pytest.raises(UserError, match="out of range"):
        model_file.load_student(str(path))


def test_a_pc_model_file_is_sized_from_its_header(tmp_path):
    from codec.lossless.pc import model_file

    shape = model_file.peek(FIXTURES / "pc_model.pcm")
    assert (shape.variables, shape.latents) == (64, 2) and 0 < shape.depth < 64
    (tmp_path / "junk.pcm").write_bytes(b"\x10" + b"\x00" * 7 + b"{}" + b"x" * 30)
    with pytest.raises(UserError):
        model_file.peek(tmp_path / "junk.pcm")


# ---------------------------------------------------------------------------------------------------------------
# exit codes


@pytest.mark.parametrize("name", VIDEO)
def test_an_impossible_size_exits_2_naming_the_largest_that_fits(name, tmp_path, capsys, monkeypatch):
    from codec.video import inr_codec, nirvana, pfnr
    from tests.videos import write_clip_file

    for module in (inr_codec, nirvana, pfnr):        # nothing is fitted before the size is refused
        monkeypatch.setattr(module, "fit", lambda *a, **k: (_ for _ in ()).throw(AssertionError("fitted")))
    clip = write_clip_file(tmp_path, 4, 32, 48)
    before = peak_rss()
    line = one_line(*run(capsys, "encode", clip, "-o", tmp_path / "o.ncb", "--codec", name, "--size", "1e12",
                         "--device", "cpu")[::2])
    assert "too large" in line and "the largest" in line and "size that fits is about" in line, line
    assert not (tmp_path / "o.ncb").exists() and peak_rss() - before < 500 * MB


def test_a_size_over_the_memory_cap_names_the_largest_that_fits(tmp_path, capsys):
    from tests.videos import write_clip_file

    clip = write_clip_file(tmp_path, 4, 32, 48)
    line = one_line(*run(capsys, "encode", clip, "-o", tmp_path / "o.ncb", "--codec", "hnerv", "--size", "20M",
                         "--max-memory", "700M", "--device", "cpu")[::2])
    assert "700 MiB decode-memory cap" in line and "the largest hnerv size that fits is about" in line, line
    # the cap is the decoding process's: under what torch and ncodec hold themselves, no size fits
    line = one_line(*run(capsys, "encode", clip, "-o", tmp_path / "o.ncb", "--codec", "hnerv", "--size", "5M",
                         "--max-memory", "64M", "--device", "cpu")[::2])
    assert "64 MiB decode-memory cap" in line and "no hnerv size fits" in line, line


@pytest.mark.parametrize("name", sorted(p.stem for p in FIXTURES.glob("*.ncb")))
def test_info_json_works_for_every_codec(name, capsys):
    code, out, err = run(capsys, "info", FIXTURES / f"{name}.ncb", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["codec"] in registry.names()
    assert "unreadable" not in json.dumps(summary)
    for key, value in Reader.from_path(FIXTURES / f"{name}.ncb").header.items():
        if isinstance(value, bytes):
            assert summary["header"][key] in (value.hex(), {"hex": value.hex()})


# ---------------------------------------------------------------------------------------------------------------
# lossless integrity


@pytest.fixture(scope="module")
def pc_file(tmp_path_factory):
    from codec.api import encode_file
    from codec.lossless.pc.codec import PCCodec
    from codec.lossless.pc.options import PCOptions

    d = tmp_path_factory.mktemp("pc")
    images = np.load(FIXTURES / "pc.npy")
    images = np.concatenate([images, images[:, ::-1], images[:, :, ::-1], 255 - images])    # 20 images
    encode_file(PCCodec(), images, str(d / "p.ncb"), PCOptions(model=str(FIXTURES / "pc_model.pcm"), device="cpu",
                                                               pc_batch=8))
    return d / "p.ncb", images


def _pc_decode(path):
    from codec.api import decode

    return decode(path, model=str(FIXTURES / "pc_model.pcm"), device="cpu")


def test_pc_files_store_the_pixels_digest(pc_file):
    path, images = pc_file
    assert len(Reader.from_path(path).header["pixels_sha256"]) == 32
    assert np.array_equal(_pc_decode(path), images)


def test_a_pc_payload_edited_with_its_crc_fixed_is_refused(pc_file, tmp_path):
    path, images = pc_file
    pixels = Reader.from_path(path).payload("pixels")
    rng = np.random.default_rng(0)
    caught_by_digest = 0
    for i in range(40):
        data = bytearray(pixels)
        pos = int(rng.integers(0, len(data)))
        data[pos] ^= 1 << int(rng.integers(0, 8))
        edited = rewrite(path, tmp_path / f"e{i}.ncb", edit={"pixels": bytes(data)})
        try:
            out = _pc_decode(edited)
        except BitstreamError as e:
            caught_by_digest += "pixels_sha256" in str(e)
            continue
        assert np.array_equal(out, images), f"edit {i} decoded to other pixels without an error"
    assert caught_by_digest > 0


def test_a_pc_header_digest_of_other_pixels_is_refused(pc_file, tmp_path):
    path, _ = pc_file
    r = Reader.from_path(path)
    w = Writer("pc", r.codec_version, {**r.header, "pixels_sha256": bytes(32)})
    for s in r.sections:
        w.add_section(s.name, r.payload(s.name), required=s.required)
    w.write(tmp_path / "h.ncb")
    with pytest.raises(BitstreamError, match="pixels_sha256"):
        _pc_decode(tmp_path / "h.ncb")


@pytest.mark.parametrize("codec", VIDEO)
def test_a_video_payload_edited_with_its_crc_fixed_is_refused(codec, tmp_path, capsys):
    src = FIXTURES / f"{codec}.ncb"
    sealed = rewrite(src, tmp_path / "sealed.ncb", digests=True)        # the fixture as new files are written
    video = ["--video", "1"] if codec == "pfnr" else []
    code, _, err = run(capsys, "decode", sealed, "--device", "cpu", *video)
    assert code == 0, err
    reader = Reader.from_path(sealed)
    name = max((s for s in reader.sections if s.name not in ("config", DIGEST_SECTION)), key=lambda s: s.length).name
    if codec == "pfnr":
        name = "s1/weights"
    data = bytearray(reader.payload(name))
    data[len(data) // 2] ^= 0x10
    edited = rewrite(sealed, tmp_path / "edited.ncb", edit={name: bytes(data)})
    line = one_line(*run(capsys, "decode", edited, "--device", "cpu", *video)[::2])
    assert name in line and "SHA-256" in line


def test_new_video_files_carry_section_digests_and_old_ones_still_decode(tmp_path, capsys):
    import ncodec
    from tests.videos import moving_gradients

    out = tmp_path / "h.ncb"
    ncodec.encode(moving_gradients(4, 32, 48), out, codec="hnerv", size="40k", epochs=1, device="cpu")
    r = Reader.from_path(out)
    assert r.sections[-1].name == DIGEST_SECTION and not r.sections[-1].required
    assert len(r.payload(DIGEST_SECTION)) == 1 + 8 * (len(r.sections) - 1)
    assert not Reader.from_path(FIXTURES / "hnerv.ncb").has(DIGEST_SECTION)     # before digests: decodes as ever
    code, _, err = run(capsys, "decode", FIXTURES / "hnerv.ncb", "--device", "cpu")
    assert code == 0, err


def test_every_codec_bounds_its_files():
    from codec.base import Codec

    for name in registry.names():
        assert type(registry.get(name)).bounds is not Codec.bounds, name
