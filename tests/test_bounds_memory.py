"""What a decode really holds, against what its bounds say (issue 28), and the model files and older pc files that
the bounds and digests cannot cover alone.

- A file honestly describing huge frames (its network small, so every count matches) is refused under the cap from
  its config alone: --max-memory caps the decoding process, torch and ncodec included, and counts each frame's
  activations with the operators' own buffers.
- A decode in a fresh process peaks below what its bounds say it needs (measured loosely: peak RSS).
- A teacher model file is sized from its config before any network is built.
- A pc file older than the pixel digest decodes as before, with one warning line that its output is unverified.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bitstream.container import DIGEST_SECTION, Reader, Writer
from bitstream.errors import BitstreamError
from codec import registry
from codec.errors import UnverifiedOutputWarning, UserError
from tests.test_bounds import MB, one_line, peak_rss, run

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ROOT = FIXTURES.parents[1]


def reshaped(src: Path, dst: Path, **fields) -> Path:
    """`src` with header and config fields changed alike (a NIRVANA network does not depend on the frame size,
    so the file stays honest; a header stores a bool as its int); every CRC and digest recomputed."""
    r = Reader.from_path(src)
    header = {k: int(v) if isinstance(v, bool) else v for k, v in {**r.header, **fields}.items() if k in r.header}
    w = Writer(r.codec, r.codec_version, header)
    for s in r.sections:
        if s.name == DIGEST_SECTION:
            continue
        payload = r.payload(s.name)
        if s.name == "config":
            conf = json.loads(payload)
            conf["model"].update(fields)
            payload = json.dumps(conf).encode()
        w.add_section(s.name, payload, required=s.required)
    w.add_digests()
    w.write(dst)
    return dst


def crafted_inr(codec: str, dst: Path, taller: int) -> Path:
    """An honest `codec` file (nerv, hnerv, nervpp) with frames `taller` times the fixture's height: its config's
    grid scaled, and a freshly initialised network of that config in its weights (and embed) section."""
    from codec.video import weights as W
    from codec.video.inr_codec import FAMILIES

    registry.get(codec)                     # registers NeRV++'s family
    r = Reader.from_path(FIXTURES / f"{codec}.ncb")
    conf = json.loads(r.payload("config"))
    conf["model"]["grid_h"] *= taller
    conf["model"]["height"] *= taller
    family = FAMILIES[codec]
    cfg = family.config_from_dict(conf["model"])
    torch.manual_seed(0)
    w = Writer(codec, r.codec_version, {**r.header, "height": cfg.height})
    w.add_section("config", json.dumps(conf).encode())
    w.add_section("weights", W.encode_state(family.decoder(cfg).state_dict(), conf["weight_bits"])[0])
    if family.has_embeddings:
        embed = torch.randn(cfg.frames, cfg.embed_dim, cfg.grid_h, cfg.grid_w)
        w.add_section("embed", W.encode_embeddings(embed, conf["embed_bits"])[0])
    w.add_digests()
    w.write(dst)
    return dst


# ---------------------------------------------------------------------------------------------------------------
# huge frames


HUGE_FRAMES = ["nirvana", "nerv", "hnerv", "nervpp"]


@pytest.mark.parametrize("codec", HUGE_FRAMES)
def test_a_file_of_huge_frames_is_refused_under_the_cap_before_anything_is_built(codec, tmp_path, capsys,
                                                                                 monkeypatch):
    if codec == "nirvana":        # the fuzz's case: a 32,032-line video, decoded before at about 1.1 GB
        path = reshaped(FIXTURES / "nirvana.ncb", tmp_path / "tall.ncb", height=32032)
    else:
        path = crafted_inr(codec, tmp_path / "tall.ncb", 256)          # 8192 x 48 frames
    cls = type(registry.get(codec))
    opts = cls.DecodeOptions(device="cpu", max_memory="64G")
    bounds = registry.get(codec).check_bounds(Reader.from_path(path), opts)    # in every range: the cap refuses it
    assert bounds.batch_bytes > 100 * MB

    def never(*args, **kwargs):
        raise AssertionError("the network was built: the bounds came too late")

    monkeypatch.setattr(cls, "load", never)
    before = peak_rss()
    line = one_line(*run(capsys, "decode", path, "--device", "cpu", "--max-memory", "1G")[::2])
    assert "refused before allocating" in line and "over the 1 GiB cap" in line, line
    with pytest.raises(BitstreamError, match="refused before allocating"):
        import ncodec
        ncodec.decode(path, device="cpu", max_memory="1G")
    assert peak_rss() - before < 500 * MB


def test_an_array_of_many_frames_counts_its_output(tmp_path):
    """`ncodec.decode` keeps every frame it returns: those count against the cap, and fewer --frames fit."""
    import ncodec

    from codec.base import decode_need

    path = reshaped(FIXTURES / "nirvana.ncb", tmp_path / "tall.ncb", height=4096)        # 10 frames of 4096 x 48
    codec = registry.get("nirvana")
    need = decode_need(codec.bounds(Reader.from_path(path), codec.DecodeOptions(device="cpu")), True)
    cap = str(need + 5 * 4096 * 48 * 3)                 # room for 5 frames beside the decode itself
    with pytest.raises(BitstreamError, match="fewer --frames"):
        ncodec.decode(path, device="cpu", max_memory=cap)
    assert ncodec.decode(path, device="cpu", max_memory=cap, frames="0:5").shape == (5, 4096, 48, 3)


_MEASURE = r"""
import json, sys
import numpy as np
import ncodec
from bitstream.container import Reader
from codec import api, registry
from codec.base import decode_need

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

path, kwargs = sys.argv[1], json.loads(sys.argv[2])
reader = Reader.from_path(path)
codec = registry.get(reader.codec)
options = api.decode_options(reader.codec, device="cpu", **kwargs)
codec.check(reader)
b = codec.bounds(reader, options)
h = reader.header
need = decode_need(b, True, output_bytes=h["frames"] * h["height"] * h["width"] * 3)
try:
    with open("/proc/self/clear_refs", "w") as f:      # the peak from here on (importing torch peaks higher)
        f.write("5")
except OSError:
    print(json.dumps({"skip": "no clear_refs"}))
    sys.exit()
rss = status("VmRSS")
frames = ncodec.decode(path, device="cpu", **kwargs)
print(json.dumps({"need": need, "peak": status("VmHWM"), "rss": rss, "shape": list(frames.shape)}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
@pytest.mark.parametrize("case", ["nirvana", "nirvana-4096x48", "nervpp-2048x48", "pfnr"])
def test_a_decode_peaks_below_its_estimate(case, tmp_path):
    """Loosely: a fresh process decoding a small honest file holds less at its peak (RSS) than the estimate that
    --max-memory is compared with: the runtime, the file's network and state, the activations with the
    operators' buffers, and the frames returned."""
    kwargs = {}
    if case == "nirvana-4096x48":
        path = reshaped(FIXTURES / "nirvana.ncb", tmp_path / "f.ncb", height=4096)
    elif case == "nervpp-2048x48":           # the codec whose operators hold the most beside its activations
        path = crafted_inr("nervpp", tmp_path / "f.ncb", 64)
    else:
        path = FIXTURES / f"{case}.ncb"
        kwargs = {"video": 2} if case == "pfnr" else {}
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(path), json.dumps(kwargs)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr[-2000:]
    m = json.loads(out.stdout.strip().splitlines()[-1])
    if "skip" in m:
        pytest.skip(m["skip"])
    assert m["peak"] <= m["need"], (f"{case}: the decode peaked at {m['peak'] / MB:.0f} MB (from "
                                    f"{m['rss'] / MB:.0f} MB), over its estimate of {m['need'] / MB:.0f} MB")


# ---------------------------------------------------------------------------------------------------------------
# teacher model files


def _huge_teacher(tmp_path) -> Path:
    from codec.features import model_file

    mf = model_file.load("digits-teacher", expect="teacher")
    config = {**mf.config, "widths": [4096, 4096, 4096], "blocks": 64}     # about 58 billion weights
    path = tmp_path / "huge-teacher.safetensors"
    model_file.save(path, "teacher", config, mf.tensors)
    return path


def _never_built(monkeypatch):
    from codec.features import teacher

    def never(*args, **kwargs):
        raise AssertionError("the teacher network was built: the bounds came too late")

    monkeypatch.setattr(teacher.CifarResNet, "__init__", never)


def test_a_teacher_file_asking_for_a_huge_network_is_refused_unbuilt(tmp_path, capsys, monkeypatch):
    path = _huge_teacher(tmp_path)
    _never_built(monkeypatch)
    before = peak_rss()
    line = one_line(*run(capsys, "train", "student", "digits", "--teacher", path, "-o", tmp_path / "s.safetensors",
                         "--device", "cpu")[::2])
    assert "describes" in line and "the file stores" in line, line
    assert not (tmp_path / "s.safetensors").exists() and peak_rss() - before < 500 * MB


def test_a_teacher_config_out_of_range_is_refused(tmp_path, monkeypatch):
    from codec.features import model_file

    mf = model_file.load("digits-teacher", expect="teacher")
    _never_built(monkeypatch)
    for change in ({"blocks": 10**6}, {"widths": [16, 32]}, {"mean": [0.3, 0.3]}, {"std": [0.0]},
                   {"num_classes": "10"}, {"in_channels": None}):
        path = tmp_path / "bad.safetensors"
        model_file.save(path, "teacher", {**mf.config, **change}, mf.tensors)
        with pytest.raises(UserError, match="out of range"):
            model_file.load_teacher(str(path))


def test_a_pretrained_checkpoint_naming_a_huge_block_is_refused_unbuilt(tmp_path, monkeypatch):
    """A pretrained checkpoint's depth comes from its keys' names: `layer1.99999.*` must not build 100k blocks."""
    from codec.features import model_file
    from codec.features.teacher import CifarResNet, make_config

    state = CifarResNet(make_config("resnet20", 10)).state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    state["layer1.99999.conv1.weight"] = torch.zeros(16, 16, 3, 3)
    torch.save({"state_dict": state}, tmp_path / "deep.th")
    _never_built(monkeypatch)
    with pytest.raises(UserError, match="out of range"):
        model_file.load_teacher(str(tmp_path / "deep.th"))


# ---------------------------------------------------------------------------------------------------------------
# pc files without a pixel digest


def test_a_pc_file_without_a_digest_decodes_with_one_warning_line(tmp_path, capsys):
    model = FIXTURES / "pc_model.pcm"
    assert Reader.from_path(FIXTURES / "pc.ncb").codec_version == 2     # written before pixels_sha256
    code, _, err = run(capsys, "decode", FIXTURES / "pc.ncb", "--model", model, "-o", tmp_path / "d.npy")
    assert code == 0, err
    lines = err.strip().splitlines()
    assert lines == ["ncodec: warning: this pc file (version 2) carries no pixel digest; its output cannot be "
                     "verified"], err
    assert np.array_equal(np.load(tmp_path / "d.npy"), np.load(FIXTURES / "pc.npy"))     # decodes as before
    with pytest.warns(UnverifiedOutputWarning, match="cannot be verified"):
        from codec import api
        _, decoded, _ = api.open_file(FIXTURES / "pc.ncb", model=str(model), device="cpu")
    assert decoded.verified is False
    # a current file checks its pixels: no warning
    images = np.load(FIXTURES / "pc.npy")
    run(capsys, "encode", FIXTURES / "pc.npy", "-o", tmp_path / "v3.ncb", "--codec", "pc", "--model", model)
    code, _, err = run(capsys, "decode", tmp_path / "v3.ncb", "--model", model, "-o", tmp_path / "v3.npy")
    assert code == 0 and "warning" not in err, err
    assert np.array_equal(np.load(tmp_path / "v3.npy"), images)


def test_an_array_takes_a_json_true_frame_size_as_the_header_does(tmp_path):
    """JSON `true` in a config equals the header's 1: the frames render one column wide, and so does the array."""
    import ncodec

    path = reshaped(FIXTURES / "nerv.ncb", tmp_path / "w.ncb", width=True)
    assert Reader.from_path(path).header["width"] == 1
    assert ncodec.decode(path, device="cpu").shape == (6, 32, 1, 3)
