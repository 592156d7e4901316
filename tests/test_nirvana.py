"""nirvana codec: CLI round trip, per-group sections and range decoding, groups initialised from the previous
group, rate control by --lambda, bad input."""
import json

import numpy as np
import pytest
import torch

import codec.video.nirvana as nirvana
from bitstream.container import Reader
from cli.main import main
from codec.api import encode_file
from codec.video import metrics
from codec.video.io import read_video
from codec.video.options import NirvanaOptions
from tests.videos import write_clip_file

T, H, W, G = 10, 32, 48, 4        # 10 frames in groups of 4: the last group holds 2
FAST = ["--codec", "nirvana", "--device", "cpu", "--group", str(G), "--steps-per-group", "3", "--size", "3k",
        "--patch", "16"]


def run_cli(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def decode_frames(path, frames=None):
    codec = nirvana.NirvanaCodec()
    loaded = codec.open(Reader.from_path(path), codec.DecodeOptions(device="cpu"))
    return np.concatenate(list(codec.frames(loaded, *(frames or (0, loaded.num_frames))))), loaded


def encode(clip_path, out, **options):
    return encode_file(nirvana.NirvanaCodec(), clip_path, out, NirvanaOptions(device="cpu", size="3k", group=G,
                                                                                **options))


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    return write_clip_file(tmp_path_factory.mktemp("clip"), T, H, W)


@pytest.fixture(scope="module")
def encoded(clip_path, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("enc") / "clip.ncb")
    code = main(["encode", clip_path, "-o", out, *FAST, "--json"])
    assert code == 0
    return out


def test_cli_round_trip_and_psnr(clip_path, tmp_path, capsys):
    out = str(tmp_path / "c.ncb")
    code, stdout, err = run_cli(["encode", clip_path, "-o", out, *FAST, "--json"], capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["groups"] == 3 and len(summary["group_bits"]) == 3
    assert summary["group_steps"] == [12, 3, 3]       # steps per later group, 4x for the first
    assert summary["bytes"] == len(open(out, "rb").read())
    dec = str(tmp_path / "d.mkv")
    code, stdout, err = run_cli(["decode", out, "-o", dec, "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["frames"] == T and json.loads(stdout)["groups_read"] == [0, 1, 2]
    decoded, original = read_video(dec).frames, read_video(clip_path).frames
    assert decoded.shape == original.shape == (T, H, W, 3)          # 10 frames, not a multiple of 4
    mean, per_frame = metrics.psnr(original, decoded)
    assert mean == pytest.approx(summary["psnr"], abs=1e-9)
    assert summary["group_psnr"] == [round(float(per_frame[a:a + G].mean()), 3) for a in range(0, T, G)]
    info = Reader.from_path(out)
    assert info.names("group/") == ["group/0", "group/1", "group/2"]


def test_range_decode_reads_only_needed_groups(encoded, tmp_path, capsys):
    full, _ = decode_frames(encoded)
    part, loaded = decode_frames(encoded, (5, 7))
    assert np.array_equal(part, full[5:7])
    assert sorted(set(loaded.sections_read)) == [0, 1]             # group 1 and the chain back to its key group
    # damage group 2's section: frames of groups 0-1 still decode, exactly as before; group 2's do not
    data = bytearray(open(encoded, "rb").read())
    sec = Reader.from_bytes(bytes(data)).section("group/2")
    data[sec.offset + sec.length // 2] ^= 0xFF
    bad = tmp_path / "bad.ncb"
    bad.write_bytes(bytes(data))
    part, _ = decode_frames(str(bad), (2, 8))
    assert np.array_equal(part, full[2:8])
    code, _, err = run_cli(["decode", str(bad), "--frames", "2:8", "-o", str(tmp_path / "p.mkv")], capsys)
    assert code == 0, err
    code, _, err = run_cli(["decode", str(bad), "--frames", "7:10"], capsys)
    assert code == 2 and "group/2" in err and len(err.strip().splitlines()) == 1


def test_key_groups_bound_the_chain(clip_path, tmp_path, capsys):
    out = str(tmp_path / "k.ncb")
    assert main(["encode", clip_path, "-o", out, *FAST, "--key-every", "2"]) == 0
    capsys.readouterr()
    full, _ = decode_frames(out)
    data = bytearray(open(out, "rb").read())
    sec = Reader.from_bytes(bytes(data)).section("group/0")
    data[sec.offset + sec.length // 2] ^= 0xFF
    bad = tmp_path / "bad.ncb"
    bad.write_bytes(bytes(data))
    part, loaded = decode_frames(str(bad), (8, 10))                # group 2 is a key group: group 0 is not read
    assert np.array_equal(part, full[8:10]) and loaded.sections_read == [2]


def test_group_starts_from_previous_group(clip_path, tmp_path, monkeypatch):
    seen = []
    real_fit = nirvana.fit

    def spy(model, frames, cfg):
        before = [torch.round(t.detach()).clone() for t in model.latents]
        result = real_fit(model, frames, cfg)
        seen.append((before, [torch.round(t.detach()).clone() for t in model.latents]))
        return result

    monkeypatch.setattr(nirvana, "fit", spy)
    encode(clip_path, tmp_path / "s.ncb", steps_per_group=3)
    assert len(seen) == 3
    for k in (1, 2):
        init_k, final_prev = seen[k][0], seen[k - 1][1]
        assert all(torch.equal(a, b) for a, b in zip(init_k, final_prev))
        assert any(not torch.equal(a, b) for a, b in zip(seen[k][1], init_k))   # and it was then fitted


def test_higher_lambda_gives_smaller_file(clip_path, tmp_path):
    sizes = []
    for lam in (0.0, 1.0):
        sizes.append(encode(clip_path, tmp_path / f"{lam}.ncb", steps_per_group=4, lmbda=lam)["bytes"])
    assert sizes[1] < sizes[0]


@pytest.mark.parametrize("args, words", [
    (["--group", "0"], "--group"),
    (["--lambda", "-1"], "--lambda"),
    (["--patch", "12"], "--patch"),
    (["--lambda", "0.1", "--bpp", "0.5"], "--bpp"),
])
def test_bad_encode_options(clip_path, tmp_path, capsys, args, words):
    opts = [a for a in FAST if a not in ("--group", str(G))] if "--group" in args else FAST
    code, _, err = run_cli(["encode", clip_path, "-o", str(tmp_path / "x.ncb"), *opts, *args], capsys)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("frames", ["5:3", "0:99", "a:b"])
def test_bad_frame_range(encoded, capsys, frames):
    code, _, err = run_cli(["decode", encoded, "--frames", frames], capsys)
    assert code == 2 and "--frames" in err and len(err.strip().splitlines()) == 1


def test_bpp_rate_control_lands_near_the_target(tmp_path):
    # 16 frames of 48x64 in 4 groups, 30 steps a group: the key group holds about 60% of the bits and the first
    # residual group starts from a prior lambda, leaving two groups of 30 steps to correct a miss. 20% is what
    # this tiny case meets (1.00-1.13x the target over seeds 0-2); the 10% is measured on carphone and the
    # reduced Bunny (docs/NIRVANA.md, "Rate control")
    path = write_clip_file(tmp_path, 16, 48, 64)
    s = encode_file(nirvana.NirvanaCodec(), path, tmp_path / "r.ncb",
                    NirvanaOptions(device="cpu", size="3k", group=4, steps_per_group=30, bpp=1.0))
    assert abs(s["bpp"] - 1.0) <= 0.2
    targets = s["group_target_bits"]
    assert len(targets) == 4 and targets[0] > 2 * max(targets[1:])     # the key group's larger share
    assert len(set(s["group_lambda"])) == 4                            # lambda steered group by group


def test_coded_bits_estimate_matches_the_coder():
    """The rate controller's view of a group's bits: the coder's choice of Laplace or histogram, per tensor."""
    rng = np.random.default_rng(0)
    cases = [np.rint(rng.laplace(0, 1, 4000)), rng.integers(-127, 128, 4000),
             np.concatenate([np.zeros(3000), rng.integers(-60, 61, 1000)])]
    cfg = nirvana.NirvanaConfig(16, 16, 4, group=4, patch=16, hidden=8, channels=4)
    for sym in cases:
        sym = sym.astype(np.int32)
        model = nirvana.GroupModel(cfg, [torch.zeros(1)], torch.ones(1), torch.ones(1), None, 1.0, False)
        model.latents[0].data = torch.from_numpy(sym).float()
        coded = 8 * len(nirvana.encode_group([sym], np.array([max(np.abs(sym).mean(), 0.02)])))
        assert float(model.coded_bits()) == pytest.approx(coded, rel=0.03)


def test_rate_proxy_matches_the_coder():
    rng = np.random.default_rng(0)
    r = np.rint(rng.laplace(0, 3.0, 20000)).astype(np.int32)
    proxy = float(nirvana.laplace_bits(torch.from_numpy(r).float(), torch.tensor(3.0)))
    from bitstream import coder
    coded = coder.QuantizedLaplace(int(r.min()), int(r.max()), 0.0, 3.0).ideal_bits(r)
    assert proxy == pytest.approx(coded, rel=0.01)
    # and the group payload round-trips
    shapes = [(50, 4), (7,)]
    syms = [rng.integers(-5, 6, s).astype(np.int32) for s in shapes]
    back = nirvana.decode_group(nirvana.encode_group(syms, np.array([2.0, 0.5])), shapes, "test")
    assert all(np.array_equal(a, b) for a, b in zip(syms, back))
