"""pfnr: a library of videos in one network; appending leaves earlier videos bit-identical; damage stays local."""
import json

import numpy as np
import pytest
import torch

import ncodec
from codec.base import frames_digest
from bitstream.container import Reader, Writer
from bitstream.errors import BitstreamError
from cli.main import main
from codec import registry
from codec.errors import UserError
from codec.video import pfnr
from codec.video.io import read_video, write_video
from codec.video.options import PFNROptions
from tests.videos import moving_gradients

T, H, W = 6, 32, 48


def opts(**kw):
    return PFNROptions(**{"device": "cpu", "epochs": 3, "size": "20k", "density": 0.5, "lr": 5e-3, **kw})


def digest(path: str, k: int) -> str:
    return frames_digest(ncodec.decode(path, video=k, device="cpu"))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    base = moving_gradients(T, H, W)
    paths = []
    for i, clip in enumerate((base, np.ascontiguousarray(base[:, :, ::-1]), 255 - base)):
        p = folder / f"v{i + 1}.mkv"
        write_video(p, clip, fps=25)
        paths.append(str(p))
    return paths


@pytest.fixture(scope="module")
def library(clips, tmp_path_factory):
    """Two videos encoded through the CLI, digests taken, then a third appended: (path, digests before)."""
    path = str(tmp_path_factory.mktemp("lib") / "lib.ncb")
    rc = main(["encode", clips[0], clips[1], "-o", path, "--codec", "pfnr", "--density", "0.5", "--size", "20k",
               "--epochs", "3", "--lr", "5e-3", "--device", "cpu", "--json"])
    assert rc == 0
    before = [digest(path, 1), digest(path, 2)]
    summary = registry.get("pfnr").append(path, [clips[2]], opts())
    return path, before, summary


def test_append_leaves_earlier_videos_bit_identical(library):
    path, before, summary = library
    assert [digest(path, 1), digest(path, 2)] == before
    assert summary["videos_in_library"] == 3
    (new,) = summary["videos"]
    assert new["video"] == 3 and new["sha256"] == digest(path, 3)
    # the third video reuses frozen weights of the first two and adds only free ones
    assert new["reused_weights"] > 0 and new["new_weights"] > 0


def test_decode_cli_writes_the_chosen_video(library, tmp_path, capsys):
    path, before, _ = library
    out = tmp_path / "v2.mkv"
    capsys.readouterr()
    assert main(["decode", path, "--video", "2", "-o", str(out), "--device", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["video"] == 2 and report["name"] == "v2.mkv" and report["frames"] == T
    frames = read_video(out).frames
    assert frames.shape == (T, H, W, 3)
    assert frames_digest(frames) == before[1]        # FFV1 RGB is lossless


def test_info_lists_every_video_with_its_bytes(library, capsys):
    path, _, _ = library
    capsys.readouterr()
    assert main(["info", path]) == 0
    shown = capsys.readouterr().out
    assert all(f"v{k}.mkv" in shown for k in (1, 2, 3))
    reader = Reader.from_path(path)
    info = registry.get("pfnr").info(reader)
    assert info["videos"] == 3
    rows = info["video_list"]
    assert [r["video"] for r in rows] == [1, 2, 3] and all(r["frames"] == T for r in rows)
    assert [r["name"] for r in rows] == ["v1.mkv", "v2.mkv", "v3.mkv"]
    per_session = sum(s.length for s in reader.sections if s.name not in ("config", "sha256"))  # sha256: digests
    assert sum(r["bytes_added"] for r in rows) == per_session


def test_damaged_later_session_leaves_earlier_videos_decodable(library, tmp_path, capsys):
    path, before, _ = library
    data = bytearray(open(path, "rb").read())
    sec = Reader.from_bytes(bytes(data)).section("s3/weights")
    data[sec.offset + sec.length // 2] ^= 0xFF
    bad = tmp_path / "bad.ncb"
    bad.write_bytes(bytes(data))
    assert [digest(str(bad), 1), digest(str(bad), 2)] == before
    with pytest.raises(BitstreamError, match="s3/weights"):
        digest(str(bad), 3)
    capsys.readouterr()
    assert main(["decode", str(bad), "--video", "3", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ncodec: invalid bitstream:") and "\n" not in err
    info = registry.get("pfnr").info(Reader.from_bytes(bytes(data)))
    rows = info["video_list"]
    assert rows[2]["status"].startswith("damaged") and "s3/weights" in rows[2]["status"]
    assert rows[2]["name"] == "v3.mkv" and [r["status"] for r in rows[:2]] == ["ok", "ok"]


@pytest.mark.parametrize("density", ["0", "1.5", "-0.2"])
def test_density_outside_0_1_is_one_line_exit_2(clips, tmp_path, capsys, density):
    rc = main(["encode", clips[0], "-o", str(tmp_path / "x.ncb"), "--codec", "pfnr", "--density", density,
               "--epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--density" in err and "\n" not in err
    assert not (tmp_path / "x.ncb").exists()


@pytest.mark.parametrize("video", ["0", "4", "-1"])
def test_video_out_of_range_is_one_line_exit_2(library, capsys, video):
    path, _, _ = library
    capsys.readouterr()
    assert main(["decode", path, "--video", video, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--video" in err and "1..3" in err and "\n" not in err


def test_several_videos_need_video_option(library, capsys):
    path, _, _ = library
    capsys.readouterr()
    assert main(["decode", path, "--device", "cpu"]) == 2
    assert "--video" in capsys.readouterr().err


def test_appending_to_another_codecs_file_is_refused(clips, tmp_path, capsys):
    other = tmp_path / "nerv.ncb"
    header = {"kind": "video", "width": W, "height": H, "frames": T, "fps_num": 25, "fps_den": 1,
              "pix_fmt": "rgb24"}
    w = Writer("nerv", 1, header)
    w.add_section("config", b"{}")
    w.write(other)
    with pytest.raises(UserError, match="only pfnr libraries"):
        registry.get("pfnr").append(str(other), [clips[0]], opts())
    capsys.readouterr()
    assert main(["append", str(other), clips[0], "--epochs", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ncodec: error:") and "\n" not in err


def test_a_library_of_another_pfnr_version_is_refused_in_one_line(library, tmp_path, capsys):
    path, _, _ = library
    reader = Reader.from_path(path)
    newer = tmp_path / "v2.ncb"
    w = Writer("pfnr", pfnr.VERSION + 1, reader.header)
    for section in reader.sections:
        w.add_section(section.name, reader.payload(section.name))
    w.write(newer)
    capsys.readouterr()
    assert main(["decode", str(newer), "--video", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"pfnr version {pfnr.VERSION + 1} is not supported" in err and "\n" not in err


def test_a_video_of_another_size_is_refused_before_fitting(library, tmp_path):
    path, _, _ = library
    odd = tmp_path / "odd.mkv"
    write_video(odd, moving_gradients(T, 48, 64), fps=25)
    size = len(open(path, "rb").read())
    with pytest.raises(UserError, match="64x48 but the library holds 48x32"):
        registry.get("pfnr").append(path, [str(odd)], opts())
    assert len(open(path, "rb").read()) == size


def test_mask_and_weight_sections_round_trip():
    torch.manual_seed(0)
    used = {"a": torch.rand(5, 7) < 0.4, "b": torch.zeros(9, dtype=torch.bool)}
    masks = {n: torch.zeros_like(u) for n, u in used.items()}
    for n, m in masks.items():
        flat = m.view(-1)
        flat[torch.randperm(flat.numel())[: pfnr.keep_count(flat.numel(), 0.3)]] = True
    got = pfnr.decode_masks(pfnr.encode_masks(masks, used), used, 0.3, "mask")
    assert all(torch.equal(got[n], masks[n]) for n in masks)
    with pytest.raises(BitstreamError, match="keeps"):
        pfnr.decode_masks(pfnr.encode_masks(masks, used), used, 0.5, "mask")
    latent = {n: torch.randn(u.shape) for n, u in used.items()}
    new = {n: masks[n] & ~used[n] for n in masks}
    vals = pfnr.decode_new_weights(pfnr.encode_new_weights(latent, new, 8), new, "weights")
    for n in new:
        assert torch.allclose(vals[n], latent[n][new[n]], atol=(latent[n].max() - latent[n].min()) / 255)


def test_fourier_block_upsamples_and_keeps_a_constant_constant():
    block = pfnr.FourierUpBlock(4, 3, stride=2, modes_h=2, modes_w=3, act="relu")
    x = torch.full((1, 4, 4, 6), 0.5)
    y = block(x)
    assert y.shape == (1, 3, 8, 12)
    assert torch.allclose(y, y[..., :1, :1].expand_as(y), atol=1e-6)


def test_cli_append_adds_a_session(clips, tmp_path, capsys):
    path = str(tmp_path / "one.ncb")
    assert main(["encode", clips[0], "-o", path, "--codec", "pfnr", "--size", "20k", "--epochs", "1",
                 "--device", "cpu"]) == 0
    first = digest(path, 1)
    capsys.readouterr()
    assert main(["append", path, clips[1], "--epochs", "1", "--device", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["videos_in_library"] == 2 and Reader.from_path(path).header["videos"] == 2
    assert digest(path, 1) == first
