"""The pc codec end to end: `ncodec train pc`, encode, decode, model files, image inputs, and bad input."""
import gzip
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from bitstream.container import Reader
from bitstream.errors import BitstreamError
import ncodec
from cli.pc import train_pc
from codec.api import encode_file
from codec.errors import UserError
from codec.lossless.pc import model_file
from codec.lossless.pc.codec import PCCodec
from codec.lossless.pc.images import read_images, write_images
from codec.lossless.pc.options import PCDecodeOptions, PCOptions


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from sklearn.datasets import load_digits

    d = tmp_path_factory.mktemp("pc")
    x = load_digits().images.astype(np.uint8)
    np.save(d / "train.npy", x[:800])
    test = np.concatenate([x[800:860], np.zeros((1, 8, 8), np.uint8), np.full((1, 8, 8), 255, np.uint8)])
    np.save(d / "test.npy", test)
    res = CliRunner().invoke(train_pc, [str(d / "train.npy"), "-o", str(d / "m.pcm"), "--latents", "4",
                                        "--epochs", "2", "--full-epochs", "1", "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["latents"] == 4 and len(summary["sha256"]) == 64
    return d, test


def encode(source, output, model, **kw):
    """The encoder's summary of `source` coded into `output` with `model`."""
    return encode_file(PCCodec(), source, str(output), PCOptions(model=str(model), device="cpu", pc_batch=25, **kw))


def decode(reader, output, model):
    """Decode a file (path or Reader) into `output` with `model`, as `ncodec decode` does; the save summary."""
    codec = PCCodec()
    options = PCDecodeOptions(model=str(model), device="cpu")
    reader = reader if isinstance(reader, Reader) else Reader.from_path(reader)
    return codec.save(codec.open(reader, options), str(output), options)


def test_train_encode_decode_npy_round_trip(work):
    d, test = work
    s = encode([str(d / "test.npy")], d / "t.ncb", d / "m.pcm")
    assert s["images"] == len(test) and 0 < s["bits_per_dim"] < 8
    assert s["bytes"] == (d / "t.ncb").stat().st_size and s["bits_per_dim"] == s["bytes"] * 8 / test.size
    assert s["ideal_bits_per_dim"] <= s["payload_bits_per_dim"] <= s["bits_per_dim"]
    reader = Reader.from_path(d / "t.ncb")
    assert reader.codec == "pc" and reader.header["kind"] == "images"
    assert reader.header["model_sha256"].hex() == model_file.load_model(d / "m.pcm").sha256
    s = decode(reader, d / "out.npy", d / "m.pcm")
    assert s["format"] == "npy" and s["images"] == len(test)
    out = np.load(d / "out.npy")
    assert out.shape == test.shape and out.dtype == np.uint8 and np.array_equal(out, test)


def test_png_folder_and_idx_inputs(work):
    d, test = work
    folder = d / "pngs"
    folder.mkdir()
    for i, a in enumerate(test[:5]):
        Image.fromarray(a).save(folder / f"img_{i}.png")
    encode([str(folder)], d / "p.ncb", d / "m.pcm")
    decode(d / "p.ncb", d / "back", d / "m.pcm")
    assert sorted(os.listdir(d / "back")) == [f"img_{i}.png" for i in range(5)]
    for i in range(5):
        assert np.array_equal(np.asarray(Image.open(d / "back" / f"img_{i}.png")), test[i])
    idx = b"\x00\x00\x08\x03" + b"".join(int(v).to_bytes(4, "big") for v in test.shape) + test.tobytes()
    (d / "t-idx3-ubyte.gz").write_bytes(gzip.compress(idx))
    (d / "t-idx3-ubyte").write_bytes(idx)
    assert np.array_equal(read_images([str(d / "t-idx3-ubyte.gz")]).pixels[..., 0], test)
    assert np.array_equal(read_images([str(d / "t-idx3-ubyte")]).pixels[..., 0], test)


def test_python_api_arrays_in_and_out(work, tmp_path):
    """ncodec.encode takes a uint8 array [N, H, W] or [N, H, W, 1]; ncodec.decode gives it back in that shape."""
    d, test = work
    s = ncodec.encode(test, tmp_path / "a.ncb", codec="pc", model=str(d / "m.pcm"), device="cpu", pc_batch=25)
    assert s["file"] == str(tmp_path / "a.ncb") and s["bytes"] == (tmp_path / "a.ncb").stat().st_size
    back = ncodec.decode(tmp_path / "a.ncb", model=str(d / "m.pcm"), device="cpu")
    assert back.dtype == np.uint8 and np.array_equal(back, test)
    encode(str(d / "test.npy"), tmp_path / "n.ncb", d / "m.pcm")        # the same images from a file: same bytes
    assert (tmp_path / "a.ncb").read_bytes() == (tmp_path / "n.ncb").read_bytes()
    ncodec.encode(test[..., None], tmp_path / "b.ncb", codec="pc", model=str(d / "m.pcm"), device="cpu")
    assert np.array_equal(ncodec.decode(tmp_path / "b.ncb", model=str(d / "m.pcm"), device="cpu"), test[..., None])
    with pytest.raises(UserError, match="uint8"):
        ncodec.encode(test.astype(np.float32), tmp_path / "c.ncb", codec="pc", model=str(d / "m.pcm"))
    with pytest.raises(UserError, match="decode needs -o"):
        decode(tmp_path / "a.ncb", "", d / "m.pcm")
    with pytest.raises(UserError, match="needs --model"):
        ncodec.decode(tmp_path / "a.ncb", device="cpu")


def test_write_images_rgb_folder(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (3, 5, 4, 3), dtype=np.uint8)
    write_images(str(tmp_path / "o"), rgb)
    assert np.array_equal(read_images([str(tmp_path / "o")]).pixels, rgb)


def test_wrong_image_shape_is_refused(work, tmp_path):
    d, _ = work
    np.save(tmp_path / "big.npy", np.zeros((2, 9, 8), np.uint8))
    with pytest.raises(UserError, match="model codes 8x8x1"):
        encode([str(tmp_path / "big.npy")], tmp_path / "o.ncb", d / "m.pcm")
    np.save(tmp_path / "rgb.npy", np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(UserError, match="8x8x3"):
        encode([str(tmp_path / "rgb.npy")], tmp_path / "o.ncb", d / "m.pcm")
    np.save(tmp_path / "f.npy", np.zeros((2, 8, 8), np.float32))
    with pytest.raises(UserError, match="uint8"):
        read_images([str(tmp_path / "f.npy")])


def test_bad_model_files_are_refused(work, tmp_path):
    d, _ = work
    (tmp_path / "junk.pcm").write_bytes(b"this is not a model at all")
    with pytest.raises(UserError, match="not an ncodec pc model"):
        model_file.load_model(tmp_path / "junk.pcm")
    from safetensors.numpy import save
    (tmp_path / "other.pcm").write_bytes(save({"w": np.zeros(3, np.float32)}, metadata={"format": "x"}))
    with pytest.raises(UserError, match="not an ncodec pc model"):
        model_file.load_model(tmp_path / "other.pcm")
    with pytest.raises(UserError, match="needs --model"):
        ncodec.encode(str(d / "test.npy"), tmp_path / "o.ncb", codec="pc", device="cpu")
    good = model_file.load_model(d / "m.pcm")
    good.parent = good.parent.copy()
    good.parent[good.parent == -1] = 0 if good.parent[0] != -1 else 1  # a cycle, no root
    (tmp_path / "cyc.pcm").write_bytes(model_file.to_bytes(good))
    with pytest.raises(UserError):
        model_file.load_model(tmp_path / "cyc.pcm")


def test_decoding_with_another_model_is_refused(work, tmp_path):
    d, _ = work
    encode([str(d / "test.npy")], tmp_path / "t.ncb", d / "m.pcm")
    other = model_file.load_model(d / "m.pcm")
    other.meta = {"note": "same numbers, other file"}
    model_file.save_model(other, tmp_path / "other.pcm")
    with pytest.raises(UserError, match="not the model this file was coded with"):
        decode(tmp_path / "t.ncb", tmp_path / "o.npy", tmp_path / "other.pcm")


def test_damaged_payload_is_a_bitstream_error(work, tmp_path):
    d, _ = work
    encode([str(d / "test.npy")], tmp_path / "t.ncb", d / "m.pcm")
    raw = bytearray((tmp_path / "t.ncb").read_bytes())
    raw[-3] ^= 0xFF
    (tmp_path / "bad.ncb").write_bytes(bytes(raw))
    with pytest.raises(BitstreamError):
        decode(tmp_path / "bad.ncb", tmp_path / "o.npy", d / "m.pcm")
    assert not (tmp_path / "o.npy").exists()


def test_cli_errors_are_one_line_exit_2(work, tmp_path, capsys):
    from cli.main import main

    d, _ = work
    np.save(tmp_path / "big.npy", np.zeros((2, 9, 8), np.uint8))
    rc = main(["encode", str(tmp_path / "big.npy"), "-o", str(tmp_path / "o.ncb"), "--codec", "pc",
               "--model", str(d / "m.pcm"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "model codes" in err
    rc = main(["train", "pc", str(d / "test.npy"), "-o", str(tmp_path / "m.pcm"), "--latents", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--latents" in err


def test_header_claiming_more_images_than_the_payload_holds(work, tmp_path):
    from bitstream.container import Writer

    d, _ = work
    sha = bytes.fromhex(model_file.load_model(d / "m.pcm").sha256)
    w = Writer("pc", 1, {"kind": "images", "count": 10**7, "height": 8, "width": 8, "channels": 1,
                         "model_sha256": sha, "batch": 2000, "squeeze": 1})
    w.add_section("pixels", b"\x00" * 8)
    w.write(tmp_path / "huge.ncb")
    with pytest.raises(BitstreamError, match="cannot hold"):
        decode(tmp_path / "huge.ncb", tmp_path / "o.npy", d / "m.pcm")


def test_a_mixture_model_codes_bit_exactly_and_below_its_parts(work, tmp_path):
    from cli.pc import mix_pc

    d, test = work
    res = CliRunner().invoke(train_pc, [str(d / "train.npy"), "-o", str(tmp_path / "b.pcm"), "--init",
                                        str(d / "m.pcm"), "--shift", "1", "--epochs", "2", "--seed", "4",
                                        "--device", "cpu"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(mix_pc, [str(d / "m.pcm"), str(tmp_path / "b.pcm"), "-o", str(tmp_path / "mix.pcm"),
                                      "--json"])
    assert res.exit_code == 0, res.output
    mix = model_file.load_model(tmp_path / "mix.pcm")
    assert mix.latents == 8 and len(mix.meta["mixture_of"]) == 2
    sizes = {}
    for name in ("m", "b", "mix"):
        model = d / "m.pcm" if name == "m" else tmp_path / f"{name}.pcm"
        s = encode([str(d / "test.npy")], tmp_path / f"{name}.ncb", model)
        sizes[name] = s["ideal_bits_per_dim"]
    decode(tmp_path / "mix.ncb", tmp_path / "out.npy", tmp_path / "mix.pcm")
    assert np.array_equal(np.load(tmp_path / "out.npy"), test)
    # log(p_a/2 + p_b/2) >= (log p_a + log p_b) / 2: never worse than the parts' average
    assert sizes["mix"] <= (sizes["m"] + sizes["b"]) / 2 + 1e-6


def test_pc_mix_refuses_single_models_and_bad_weights(work, tmp_path, capsys):
    from cli.main import main

    d, _ = work
    m = str(d / "m.pcm")
    for args, fragment in (([m, m, "--weights", "1,x"], "expected numbers"), ([m, m, "--weights", "1,-1"], "positive"),
                           ([m], "at least two"), ([m, str(d / "test.npy")], "")):
        rc = main(["train", "pc-mix", *args, "-o", str(tmp_path / "x.pcm")])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and fragment in err, err
    assert not (tmp_path / "x.pcm").exists()


@pytest.mark.parametrize("version", [1, 4])
def test_stream_versions(work, tmp_path, version):
    """pc streams record their version: 1 (older files) decodes with its own arithmetic, 4 is refused."""
    from bitstream.container import Writer
    from codec.lossless.pc.codec import encode_array

    d, test = work
    model = model_file.load_model(d / "m.pcm")
    encode([str(d / "test.npy")], tmp_path / "t.ncb", d / "m.pcm")
    reader = Reader.from_path(tmp_path / "t.ncb")
    assert reader.codec_version == 3
    if version == 1:
        from bitstream.coder import RangeEncoder, TableModel
        from codec.lossless.pc import coding

        enc = RangeEncoder()
        coding.encode_images(coding.IntegerHCLT(model.parent, model.root, model.edge, model.leaf, version=1),
                             test.reshape(len(test), -1), enc, TableModel, chunk=25)
        payload = enc.to_bytes()
    else:
        payload, _ = encode_array(model, test[..., None], batch=25)
    w = Writer("pc", version, reader.header)
    w.add_section("pixels", payload)
    w.write(str(tmp_path / f"v{version}.ncb"))
    old = Reader.from_path(tmp_path / f"v{version}.ncb")
    if version == 1:
        decode(old, tmp_path / "o.npy", d / "m.pcm")
        assert np.array_equal(np.load(tmp_path / "o.npy"), test)
    else:
        with pytest.raises(BitstreamError, match="version 4 is not supported"):
            decode(old, tmp_path / "o.npy", d / "m.pcm")


def test_a_current_file_without_its_digest_is_refused(work, tmp_path):
    """Version 3 requires pixels_sha256: dropping it does not downgrade the file to the unchecked legacy path."""
    from bitstream.container import Writer

    d, _ = work
    encode([str(d / "test.npy")], tmp_path / "t.ncb", d / "m.pcm")
    reader = Reader.from_path(tmp_path / "t.ncb")
    header = {k: v for k, v in reader.header.items() if k != "pixels_sha256"}
    w = Writer("pc", 3, header)
    w.add_section("pixels", reader.payload("pixels"))
    w.write(str(tmp_path / "nodigest.ncb"))
    with pytest.raises(BitstreamError, match="pixels_sha256 is missing"):
        decode(Reader.from_path(tmp_path / "nodigest.ncb"), tmp_path / "o.npy", d / "m.pcm")


def test_a_header_claiming_more_images_than_the_model_allows_is_refused_at_once(tmp_path):
    """least_bits_per_image bounds honest files from below, so a count the payload cannot pay for is refused
    before decoding (it used to decode on for seconds per 65k claimed images)."""
    from pathlib import Path

    from bitstream.container import Writer
    from codec.lossless.pc.codec import least_bits_per_image

    fixtures = Path(__file__).resolve().parent / "fixtures"
    model = model_file.load_model(fixtures / "pc_model.pcm")
    reader = Reader.from_path(fixtures / "pc.ncb")
    bound = least_bits_per_image(model)
    assert 0 < reader.header["count"] * bound <= reader.section("pixels").length * 8
    w = Writer("pc", reader.codec_version, {**reader.header, "count": 65537})
    w.add_section("pixels", reader.payload("pixels"))
    w.write(str(tmp_path / "many.ncb"))
    with pytest.raises(BitstreamError, match="cannot hold 65537 images"):
        decode(Reader.from_path(tmp_path / "many.ncb"), tmp_path / "o.npy", fixtures / "pc_model.pcm")
