"""Ray scale-out (codec/scale) on a local 2-CPU Ray: many clips equal a serial run byte for byte, a killed worker is
retried and a rerun does nothing, segmented files decode like their segments (also in parallel) and survive one
damaged segment."""
import os
import subprocess
import sys

import numpy as np
import pytest

import ncodec
from bitstream.container import Reader
from bitstream.errors import BitstreamError
from codec import api, registry
from codec.base import Job
from codec.errors import UserError
from codec.scale import clips as scale_clips
from codec.scale import manifest as scale_manifest
from codec.scale import ray_tasks, segments
from codec.video import metrics
from codec.video.io import iter_video, read_video, write_video
from tests.videos import moving_gradients

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def options(codec="nerv", **kw):
    return registry.options(codec)(**{"device": "cpu", "epochs": 2, "size": "60k", **kw})


@pytest.fixture(scope="module")
def fault_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def local_ray(fault_dir):
    import ray

    # workers inherit the environment of the process that starts Ray: the fault-injection folder is set first
    os.environ[ray_tasks.FAULT_ENV] = str(fault_dir)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    os.environ.pop(ray_tasks.FAULT_ENV, None)


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
    """What `ncodec encode` writes for each clip alone, with the tasks' thread count (one: 2 CPUs / 2 workers;
    tests/conftest.py sets one thread)."""
    folder = tmp_path_factory.mktemp("serial")
    codec = registry.get("nerv")
    for p in clips:
        api.encode_file(codec, p, folder / (os.path.basename(p)[:-4] + ".ncb"), options(),
                        Job(checkpoint=None, show_bar=False))
    return {f: (folder / f).read_bytes() for f in os.listdir(folder) if f.endswith(".ncb")}


def test_many_clips_equal_a_serial_run(local_ray, clips, serial, tmp_path):
    out = tmp_path / "out"
    summary = scale_clips.encode_many(registry.get("nerv"), clips, str(out), options(), 2, None)
    assert summary["encoded"] == 3 and summary["skipped"] == 0
    assert summary["manifest"] == str(out / scale_manifest.MANIFEST)
    assert [r["file"] for r in summary["clips"]] == [str(out / f"clip{i}.ncb") for i in range(3)]
    for name, data in serial.items():
        assert (out / name).read_bytes() == data, name
    for row, path in zip(summary["clips"], clips):
        assert ncodec.decode(row["file"]).shape == read_video(path).frames.shape
        assert row["bpp"] > 0 and row["psnr"] > 5 and row["worker"]


def test_killed_worker_is_retried_and_rerun_does_nothing(local_ray, clips, serial, fault_dir, tmp_path):
    out = tmp_path / "out"
    codec = registry.get("nerv")
    marker = fault_dir / "crash-clip1.ncb"
    marker.touch()                                   # the task for clip1 dies (os._exit) on its first attempt
    summary = scale_clips.encode_many(codec, clips, str(out), options(), 2, None)
    assert not marker.exists()                       # the crash happened ...
    assert summary["encoded"] == 3                   # ... and Ray's retry finished the job
    for name, data in serial.items():
        assert (out / name).read_bytes() == data
    assert sorted(os.listdir(out)) == ["clip0.ncb", "clip1.ncb", "clip2.ncb", scale_manifest.MANIFEST]

    mtimes = {f: os.stat(out / f).st_mtime_ns for f in os.listdir(out)}
    again = scale_clips.encode_many(codec, clips, str(out), options(), 2, None)
    assert again["encoded"] == 0 and again["skipped"] == 3
    assert {f: os.stat(out / f).st_mtime_ns for f in os.listdir(out)} == mtimes

    # a damaged output is not "complete": the rerun redoes that one only
    data = bytearray((out / "clip2.ncb").read_bytes())
    data[-1] ^= 0xFF
    (out / "clip2.ncb").write_bytes(bytes(data))
    fixed = scale_clips.encode_many(codec, clips, str(out), options(), 2, None)
    assert fixed["encoded"] == 1 and fixed["skipped"] == 2
    assert (out / "clip2.ncb").read_bytes() == serial["clip2.ncb"]

    # an input the codec refuses fails alone, at once (no retry), naming it; the others stay written
    bad = tmp_path / "bad.mkv"
    bad.write_bytes(b"not a video")
    with pytest.raises(ray_tasks.TasksFailed, match=r"1 of 4 clips failed \(first: bad.ncb: cannot read video") as e:
        scale_clips.encode_many(codec, clips + [str(bad)], str(out), options(), 2, None)
    assert [r["status"] for r in e.value.rows] == ["skipped (complete)"] * 3


def test_segments_decode_like_the_whole_and_survive_damage(local_ray, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "long.mkv"
    write_video(src, moving_gradients(10, 32, 48), fps=30)
    path = tmp_path / "long.ncb"
    hnerv = registry.get("hnerv")
    opts = options("hnerv", size="45k")
    summary = segments.encode_segmented(hnerv, str(src), str(path), opts, 4, 2, None)
    assert summary["segments"] == 3 and summary["frames"] == 10
    assert summary["bytes"] == os.path.getsize(path)
    assert not os.path.exists(str(path) + ".parts")
    # the manifest lies beside the file, not in the current folder
    assert summary["manifest"] == str(path) + ".manifest.json" and os.path.exists(summary["manifest"])
    assert sorted(os.listdir(tmp_path)) == ["long.mkv", "long.ncb", "long.ncb.manifest.json"]
    reader = Reader.from_path(path)
    assert reader.codec == "hnerv" and reader.header["frames"] == 10
    assert reader.names("segment/") == ["segment/0", "segment/1", "segment/2"]
    assert Reader.from_bytes(reader.payload("segment/2")).header["fps_num"] == reader.header["fps_num"] == 30

    whole = ncodec.decode(path, device="cpu")
    assert whole.shape == (10, 32, 48, 3)
    for a, b in ((0, 4), (4, 8), (8, 10), (3, 9)):
        assert np.array_equal(ncodec.decode(path, frames=f"{a}:{b}", device="cpu"), whole[a:b])
    # each segment section is a complete file of its own that decodes to the same frames
    seg1 = tmp_path / "seg1.ncb"
    seg1.write_bytes(reader.payload("segment/1"))
    assert np.array_equal(ncodec.decode(seg1, device="cpu"), whole[4:8])
    seg1.unlink()
    # `ncodec decode` in a fresh process, and `ncodec info`
    cli_out = tmp_path / "cli.mkv"
    proc = subprocess.run([sys.executable, "-m", "cli.main", "decode", str(path), "-o", str(cli_out), "--device", "cpu",
                           "--frames", "2:9"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(read_video(cli_out).frames, whole[2:9])
    info = ncodec.info(path)
    assert info["segments"] == 3 and info["segment_frames"] == 4
    # in parallel on Ray: the same frames
    codec, decoded, dopts = api.open_file(path, device="cpu", frames="1:10")
    par_out = tmp_path / "par.mkv"
    psum = segments.decode_parallel(codec, decoded, str(par_out), dopts, 2, None)
    assert np.array_equal(read_video(par_out).frames, whole[1:10]) and psum["segments"] == 3 and psum["frames"] == 9

    # the reported PSNR is the file's, decoded
    psnr, _ = metrics.psnr(read_video(src).frames, whole)
    assert summary["psnr"] == pytest.approx(psnr, abs=1e-9)

    # a rerun does nothing
    mtime = os.stat(path).st_mtime_ns
    again = segments.encode_segmented(hnerv, str(src), str(path), opts, 4, 2, None)
    assert again["status"].startswith("skipped") and os.stat(path).st_mtime_ns == mtime
    assert again["manifest"] == summary["manifest"]

    # one damaged segment: the others still decode, the whole file fails naming it
    sec = reader.section("segment/1")
    data = bytearray(path.read_bytes())
    data[sec.offset + sec.length // 2] ^= 0x55
    bad = tmp_path / "bad.ncb"
    bad.write_bytes(bytes(data))
    for a, b in ((0, 4), (8, 10)):
        assert np.array_equal(ncodec.decode(bad, frames=f"{a}:{b}", device="cpu"), whole[a:b])
    codec, decoded, dopts = api.open_file(bad, device="cpu")
    with pytest.raises(BitstreamError, match=r"segment 1 \(frames 4:8\)"):
        codec.save(decoded, str(tmp_path / "bad.mkv"), dopts)
    assert not (tmp_path / "bad.mkv").exists()                    # no partial output under its final name
    with pytest.raises(BitstreamError, match=r"segment 1 \(frames 4:8\)"):
        segments.decode_parallel(codec, decoded, str(tmp_path / "bad.mkv"), dopts, 2, None)
    assert not (tmp_path / "bad.mkv").exists()


def test_without_ray_workers_say_how_to_get_it(clips, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UserError, match=r"pip install ncodec\[distributed\]"):
        scale_clips.encode_many(registry.get("nerv"), clips, str(tmp_path / "o"), options(), 2, None)
    with pytest.raises(UserError, match=r"pip install ncodec\[distributed\]"):
        segments.encode_segmented(registry.get("nerv"), clips[0], str(tmp_path / "x.ncb"), options(), 2, 2, None)


def test_bad_requests_are_user_errors(clips, tmp_path):
    nerv = registry.get("nerv")
    with pytest.raises(UserError, match="cannot be split"):
        segments.encode_segmented(registry.get("pfnr"), clips[0], str(tmp_path / "x.ncb"),
                                  registry.options("pfnr")(), 2, 2, None)
    with pytest.raises(UserError, match="--resume"):
        segments.encode_segmented(nerv, clips[0], str(tmp_path / "x.ncb"), options(resume=True), 2, 2, None)
    with pytest.raises(UserError, match="--resume"):
        scale_clips.encode_many(nerv, clips, str(tmp_path / "o"), options(resume=True), 2, None)
    with pytest.raises(UserError, match="all inputs in one file"):
        scale_clips.encode_many(registry.get("pfnr"), clips, str(tmp_path / "o"), registry.options("pfnr")(), 2, None)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(UserError, match="folder"):
        scale_clips.encode_many(nerv, clips, str(tmp_path / "file"), options(), 2, None)
    with pytest.raises(UserError, match="no such file"):
        scale_clips.encode_many(nerv, [str(tmp_path / "missing.mkv")], str(tmp_path / "o"), options(), 2, None)
    assert not (tmp_path / "x.ncb.parts").exists() and not (tmp_path / "o").exists()
    # --workers on decode is for segmented files only
    one = tmp_path / "one.ncb"
    ncodec.encode(moving_gradients(2, 32, 48), one, codec="nerv", epochs=1, size="60k", device="cpu")
    codec, decoded, dopts = api.open_file(one, device="cpu")
    with pytest.raises(UserError, match="decode it without --workers"):
        segments.decode_parallel(codec, decoded, None, dopts, 2, None)


def test_video_pieces_are_read_video(clips, tmp_path):
    """iter_video (which --segment reads through) gives read_video's frames, piece by piece, files and PNG folders."""
    whole = read_video(clips[0], crop="30x40").frames
    pieces = list(iter_video(clips[0], 4, crop="30x40"))
    assert [p.num_frames for p in pieces] == [4, 2] and pieces[0].fps == 25
    assert np.array_equal(np.concatenate([p.frames for p in pieces]), whole)
    assert [p.num_frames for p in iter_video(clips[0], 2, frames=5)] == [2, 2, 1]
    write_video(tmp_path / "png", whole)
    pngs = list(iter_video(tmp_path / "png", 4, frames=5, start=1))
    assert [p.num_frames for p in pngs] == [4, 1]
    assert np.array_equal(np.concatenate([p.frames for p in pngs]), whole[1:6])
    with pytest.raises(UserError, match="no frames"):
        next(iter_video(clips[0], 2, start=50))


def test_progress_reaches_the_status_board():
    """A task's Job.on_progress turns the fit's readings into the worker's status line, at most once a second."""
    sent = []

    class Board:
        class set:
            @staticmethod
            def remote(worker, line):
                sent.append((worker, line))

    report = ray_tasks._Reporter(Board, "host:1", "clip0.ncb")
    reading = {"desc": "nerv fit", "step": 25, "total_steps": 100, "epoch": 4.2, "epochs": 16, "psnr": 23.456,
               "elapsed": 12.3, "steps_per_s": 2.04, "done": False}
    report(reading)
    report({**reading, "epochs": None})               # within the second: dropped
    assert sent == [("host:1", "clip0.ncb: nerv fit: epoch 4.2/16, 23.46 dB, 2.0 steps/s, 12 s")]
    assert ray_tasks.status_line({**reading, "epochs": None}).startswith("nerv fit: epoch 4.2, ")


def test_options_hash_changes_with_every_option():
    nerv = registry.get("nerv")
    base = options()
    variants = [base] + [base.replace(**{k: v}) for k, v in dict(
        device="auto", seed=3, max_frames=4, crop="16x16", max_time=9.0, size="70k", epochs=3, batch_size=3,
        lr=0.01, weight_bits=6, prune=0.1, qat_epochs=1).items()]
    assert len({scale_manifest.options_hash(nerv, o) for o in variants}) == len(variants)
    assert scale_manifest.options_hash(nerv, options()) == scale_manifest.options_hash(nerv, base)
    assert (scale_manifest.options_hash(nerv, base, segment=4) != scale_manifest.options_hash(nerv, base, segment=5)
            != scale_manifest.options_hash(registry.get("hnerv"), options("hnerv"), segment=5))
