"""Ray scale-out on a local 2-CPU Ray: many clips equal a serial run byte for byte, a killed worker is retried and a
rerun does nothing, segmented files decode like their segments and survive one damaged segment."""
import os
import subprocess
import sys

import numpy as np
import pytest
import ray
import torch

from bitstream.container import Reader
from bitstream.errors import BitstreamError
from codec import distributed, registry
from codec.errors import UserError
from codec.video import metrics
from codec.video.io import read_video, write_video
from tests.videos import moving_gradients

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def opts(**kw):
    base = dict(codec="nerv", device="cpu", seed=0, json=False, frames=None, crop=None, epochs=2, max_time=None,
                size="60k", bpp=None, resume=False, workers=2, ray_address=None, segment=None)
    base.update(kw)
    return base


@pytest.fixture(scope="module")
def fault_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module", autouse=True)
def local_ray(fault_dir):
    # workers inherit the environment of the process that starts Ray: the fault-injection folder is set first
    os.environ[distributed.FAULT_ENV] = str(fault_dir)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    os.environ.pop(distributed.FAULT_ENV, None)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    paths = []
    for i, (t, h, w) in enumerate([(6, 32, 48), (5, 32, 48), (6, 32, 40)]):
        p = folder / f"clip{i}.mkv"
        frames = np.roll(moving_gradients(t, h, w), 7 * i, axis=2)       # three different clips
        write_video(p, frames, fps=25)
        paths.append(str(p))
    return paths


@pytest.fixture(scope="module")
def serial(clips, tmp_path_factory):
    """What `ncodec encode` writes for each clip alone, with the tasks' thread count (one: 2 CPUs / 2 workers)."""
    folder = tmp_path_factory.mktemp("serial")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        codec = registry.get("nerv")
        for p in clips:
            codec.encode([p], str(folder / (os.path.basename(p)[:-4] + ".ncb")), opts())
    finally:
        torch.set_num_threads(threads)
    return {f: (folder / f).read_bytes() for f in os.listdir(folder) if f.endswith(".ncb")}


def decode_frames(path, tmp_path, **kw):
    reader = Reader.from_path(path)
    out = str(tmp_path / f"dec_{os.path.basename(path)}_{kw.get('frames', 'all').replace(':', '-')}.mkv")
    summary = registry.decode_file(reader, out, {"device": "cpu", "frames": None, **kw})
    return read_video(out).frames, summary


def test_many_clips_equal_a_serial_run(clips, serial, tmp_path):
    out = tmp_path / "out"
    summary = distributed.encode_many(clips, str(out), opts())
    assert summary["encoded"] == 3 and summary["skipped"] == 0
    assert [r["file"] for r in summary["clips"]] == [str(out / f"clip{i}.ncb") for i in range(3)]
    for name, data in serial.items():
        assert (out / name).read_bytes() == data, name
    for row, path in zip(summary["clips"], clips):
        frames, _ = decode_frames(row["file"], tmp_path)
        assert frames.shape == read_video(path).frames.shape
        assert row["bpp"] > 0 and row["psnr"] > 5 and row["worker"]


def test_killed_worker_is_retried_and_rerun_does_nothing(clips, serial, fault_dir, tmp_path):
    out = tmp_path / "out"
    marker = fault_dir / "crash-clip1.ncb"
    marker.touch()                                   # the task for clip1 dies (os._exit) on its first attempt
    summary = distributed.encode_many(clips, str(out), opts())
    assert not marker.exists()                       # the crash happened ...
    assert summary["encoded"] == 3                   # ... and Ray's retry finished the job
    for name, data in serial.items():
        assert (out / name).read_bytes() == data
    assert sorted(os.listdir(out)) == ["clip0.ncb", "clip1.ncb", "clip2.ncb", distributed.MANIFEST]

    mtimes = {f: os.stat(out / f).st_mtime_ns for f in os.listdir(out)}
    again = distributed.encode_many(clips, str(out), opts())
    assert again["encoded"] == 0 and again["skipped"] == 3
    assert {f: os.stat(out / f).st_mtime_ns for f in os.listdir(out)} == mtimes

    # a damaged output is not "complete": the rerun redoes that one only
    data = bytearray((out / "clip2.ncb").read_bytes())
    data[-1] ^= 0xFF
    (out / "clip2.ncb").write_bytes(bytes(data))
    fixed = distributed.encode_many(clips, str(out), opts())
    assert fixed["encoded"] == 1 and fixed["skipped"] == 2
    assert (out / "clip2.ncb").read_bytes() == serial["clip2.ncb"]


def test_segments_decode_like_the_whole_and_survive_damage(tmp_path):
    src = tmp_path / "long.mkv"
    write_video(src, moving_gradients(10, 32, 48), fps=25)
    path = tmp_path / "long.ncb"
    summary = distributed.encode_segmented(str(src), str(path), opts(codec="hnerv", size="45k", segment=4))
    assert summary["segments"] == 3 and summary["frames"] == 10
    assert summary["bytes"] == os.path.getsize(path)
    assert not os.path.exists(str(path) + ".parts")
    reader = Reader.from_path(path)
    assert reader.codec == "hnerv" and reader.header["frames"] == 10
    assert reader.names(distributed.SEGMENT_PREFIX) == ["segment/0", "segment/1", "segment/2"]

    whole, dsum = decode_frames(path, tmp_path)
    assert whole.shape == (10, 32, 48, 3) and dsum["frames"] == 10
    for a, b in ((0, 4), (4, 8), (8, 10), (3, 9)):
        part, _ = decode_frames(path, tmp_path, frames=f"{a}:{b}")
        assert np.array_equal(part, whole[a:b])
    # each segment section is a complete file of its own that decodes to the same frames
    seg1 = tmp_path / "seg1.ncb"
    seg1.write_bytes(reader.payload("segment/1"))
    alone, _ = decode_frames(seg1, tmp_path)
    assert np.array_equal(alone, whole[4:8])
    # `ncodec decode` in a fresh process, and `ncodec info`
    cli_out = tmp_path / "cli.mkv"
    proc = subprocess.run([sys.executable, "-m", "cli.main", "decode", str(path), "-o", str(cli_out), "--device", "cpu",
                           "--frames", "2:9"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(read_video(cli_out).frames, whole[2:9])
    info = registry.file_info(reader)
    assert info["segments"] == 3 and info["segment_frames"] == 4
    # in parallel on Ray: the same frames
    par, psum = decode_frames(path, tmp_path, frames="0:10", workers=2)
    assert np.array_equal(par, whole) and psum["segments"] == 3

    # the reported PSNR is the file's, decoded
    psnr, _ = metrics.psnr(read_video(src).frames, whole)
    assert summary["psnr"] == pytest.approx(psnr, abs=1e-9)

    # a rerun does nothing
    mtime = os.stat(path).st_mtime_ns
    again = distributed.encode_segmented(str(src), str(path), opts(codec="hnerv", size="45k", segment=4))
    assert again["status"].startswith("skipped") and os.stat(path).st_mtime_ns == mtime

    # one damaged segment: the others still decode, the whole file fails naming it
    sec = reader.section("segment/1")
    data = bytearray(path.read_bytes())
    data[sec.offset + sec.length // 2] ^= 0x55
    bad = tmp_path / "bad.ncb"
    bad.write_bytes(bytes(data))
    for a, b in ((0, 4), (8, 10)):
        part, _ = decode_frames(bad, tmp_path, frames=f"{a}:{b}")
        assert np.array_equal(part, whole[a:b])
    with pytest.raises(BitstreamError, match=r"segment 1 \(frames 4:8\)"):
        decode_frames(bad, tmp_path)
    assert not (tmp_path / "dec_bad.ncb_all.mkv").exists()       # no partial output under its final name


def test_without_ray_workers_say_how_to_get_it(clips, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UserError, match=r"pip install ncodec\[distributed\]"):
        distributed.encode_many(clips, str(tmp_path / "o"), opts())
    with pytest.raises(UserError, match=r"pip install ncodec\[distributed\]"):
        distributed.encode_segmented(clips[0], str(tmp_path / "x.ncb"), opts(segment=2))


def test_bad_requests_are_user_errors(clips, tmp_path):
    with pytest.raises(UserError, match="cannot be split"):
        distributed.encode_segmented(clips[0], str(tmp_path / "x.ncb"), opts(codec="pfnr", segment=2))
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(UserError, match="folder"):
        distributed.encode_many(clips, str(tmp_path / "file"), opts())
    with pytest.raises(UserError, match="no such file"):
        distributed.encode_many([str(tmp_path / "missing.mkv")], str(tmp_path / "o"), opts())
