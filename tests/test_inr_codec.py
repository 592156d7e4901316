"""nerv / hnerv codecs end to end: encode -> .ncb -> decode in a fresh process, sizes, rate, bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from bitstream.container import Reader, Writer
from bitstream.errors import BitstreamError
from codec import registry
from codec.api import encode_file
from codec.errors import UserError
from codec.video import metrics
from codec.video.io import read_video
from tests.videos import write_clip_file

T, H, W = 6, 32, 48
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def encode(codec, source, out, **kw):
    c = registry.get(codec)
    options = c.Options(**{"device": "cpu", "epochs": 3, "size": "60k", **kw})
    return encode_file(c, source, out, options)


def frames(path, codec="hnerv", start=0, stop=None, batch_size=None):
    c = registry.get(codec)
    decoded = c.open(Reader.from_path(path), c.DecodeOptions(device="cpu"))
    return np.concatenate(list(c.frames(decoded, start, stop, batch_size))), decoded


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    return write_clip_file(tmp_path_factory.mktemp("clip"), T, H, W)


@pytest.fixture(scope="module")
def hnerv_file(clip_path, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("enc") / "clip.ncb")
    summary = encode("hnerv", clip_path, out)
    return out, summary


def test_round_trip_in_a_fresh_process(hnerv_file, clip_path, tmp_path):
    path, summary = hnerv_file
    assert summary["bytes"] == os.path.getsize(path)
    assert summary["bpp"] == pytest.approx(summary["bytes"] * 8 / (T * H * W))
    decoded_path = tmp_path / "out.mkv"
    proc = subprocess.run([sys.executable, "-m", "cli.main", "decode", path, "-o", str(decoded_path),
                           "--device", "cpu", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["frames"] == T
    decoded = read_video(decoded_path).frames
    original = read_video(clip_path).frames
    assert decoded.shape == original.shape == (T, H, W, 3)
    psnr, _ = metrics.psnr(original, decoded)
    assert psnr == pytest.approx(summary["psnr"], abs=1e-9)


def test_decoding_twice_is_identical_and_frames_are_random_access(hnerv_file):
    path, _ = hnerv_file
    a = frames(path)[0]
    b = frames(path, batch_size=4)[0]
    assert np.array_equal(a, b)
    part = frames(path, start=2, stop=5)[0]
    assert np.array_equal(part, a[2:5])


def test_info_lists_the_model(hnerv_file):
    path, summary = hnerv_file
    info = registry.get("hnerv").info(Reader.from_path(path))
    assert info["model"] == "hnerv" and info["embed_values"] > 0
    assert abs(summary["params"] - 60_000) <= 0.05 * 60_000


def test_nerv_with_pruning_and_qat_round_trips(clip_path, tmp_path):
    out = str(tmp_path / "n.ncb")
    s = encode("nerv", clip_path, out, size="80k", epochs=2, prune=0.3, qat_epochs=1)
    decoded, loaded = frames(out, "nerv")
    original = read_video(clip_path).frames
    assert metrics.psnr(original, decoded)[0] == pytest.approx(s["psnr"], abs=1e-9)
    # the pruned share of the prunable weights really is zero in the decoded network
    w = [p for n, p in loaded.model.model.named_parameters() if p.ndim >= 2 and not n.startswith("head.")]
    zeros = sum(int((p == 0).sum()) for p in w) / sum(p.numel() for p in w)
    assert zeros >= 0.29


def test_bpp_target_is_met(clip_path, tmp_path):
    out = str(tmp_path / "b.ncb")
    target = 70.0                                   # a 32x48x6 clip needs many bits per pixel
    s = encode("hnerv", clip_path, out, size=None, bpp=target, epochs=1)
    assert s["bpp"] <= target
    assert s["bpp"] > 0.5 * target                  # and the budget is used, not wasted


def test_bad_inputs(clip_path, tmp_path, hnerv_file):
    codec = registry.get("hnerv")
    out = str(tmp_path / "x.ncb")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(UserError):
        encode("hnerv", str(bad), out)
    with pytest.raises(UserError):
        encode("hnerv", clip_path, out, crop="64x64")
    with pytest.raises(UserError):
        encode("hnerv", clip_path, out, size="0")
    with pytest.raises(UserError):
        encode("hnerv", clip_path, out, size="-5k")
    cpu = codec.DecodeOptions(device="cpu")
    # a file of another codec
    w = Writer("nerv", 1, {"kind": "video", "width": W, "height": H, "frames": T, "fps_num": 25, "fps_den": 1,
                           "pix_fmt": "rgb24"})
    w.add_section("config", b"{}")
    w.add_section("weights", b"")
    with pytest.raises(BitstreamError):
        codec.open(Reader.from_bytes(w.to_bytes()), cpu)
    with pytest.raises(BitstreamError):
        registry.get("nerv").open(Reader.from_bytes(w.to_bytes()), cpu)
    # a corrupted weights section
    path, _ = hnerv_file
    data = bytearray(open(path, "rb").read())
    reader = Reader.from_bytes(bytes(data))
    sec = next(s for s in reader.sections if s.name == "weights")
    data[sec.offset + sec.length // 2] ^= 0xFF
    with pytest.raises(BitstreamError):
        codec.open(Reader.from_bytes(bytes(data)), cpu)


def test_weights_round_trip_is_the_quantiser_exactly():
    from codec.quant import quantize
    from codec.video import weights as Wt

    torch.manual_seed(0)
    state = {"a.weight": torch.randn(8, 4, 3, 3), "a.bias": torch.randn(8), "b.weight": torch.randn(3, 200)}
    payload, reports = Wt.encode_state(state, bits=6)
    back = Wt.decode_state(payload, {k: v.shape for k, v in state.items()})
    for k, v in state.items():
        assert torch.equal(back[k], quantize(v, 6, axis=Wt.quant_axis(v)).dequantize()), k
    with pytest.raises(BitstreamError):
        Wt.decode_state(payload, {"a.weight": torch.Size([8, 4, 3, 3])})
    assert Wt.huffman_bits(np.array([0, 0, 0, 1])) == 4
    assert Wt.huffman_bits(np.array([5, 6, 7, 7])) == 6
