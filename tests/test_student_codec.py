"""`--codec student`: latents through the shared coder and container, and the CLI's bad-input contract."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import ncodec
from bitstream.container import Reader, Writer
from bitstream.errors import BitstreamError
from codec.api import encode_file
from codec.device import cpu_thread_limit
from codec.errors import UserError
from codec.features import model_file
from codec.features.codec import LatentCoder, StudentCodec
from codec.features.data import load_dataset
from codec.features.options import StudentDecodeOptions, StudentOptions

from tests.cli_helpers import assert_one_line_error, run
from tests.students import train_tiny_models


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with cpu_thread_limit(torch.device("cpu"), limit=1):
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny digits teacher and two students trained from it with different betas (a few seconds)."""
    return train_tiny_models(tmp_path_factory.mktemp("models"), {"student": 0.3, "other": 3.0})


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Twelve real digits as 8x8 PNG files in class-named folders."""
    d = tmp_path_factory.mktemp("digits")
    ds = load_dataset("digits")
    paths = []
    for i in range(12):
        folder = d / ds.classes[int(ds.labels[i])]
        folder.mkdir(exist_ok=True)
        Image.fromarray(ds.images[i, 0].numpy()).save(folder / f"{i:02d}.png")
        paths.append(folder / f"{i:02d}.png")
    return paths, ds.images[:12]


def test_latent_round_trip_is_exact_including_out_of_range_values(models):
    student, _ = model_file.load_student(str(models / "student.safetensors"))
    coder = LatentCoder(student)
    c, h, w = student.latent_shape
    rng = np.random.default_rng(0)
    symbols = rng.integers(-2, 3, size=(c, h, w)).astype(np.int32)
    symbols[0, 0, 0], symbols[-1, -1, -1], symbols[1, 1, 1] = 1000, -70000, 2**30   # far outside every table
    assert np.array_equal(coder.decode(coder.encode(symbols)), symbols)


def test_encode_decode_through_the_container(models, images, tmp_path):
    paths, pixels = images
    student, model_id = model_file.load_student(str(models / "student.safetensors"))
    codec = StudentCodec()
    out = tmp_path / "x.ncb"
    model = str(models / "student.safetensors")
    summary = encode_file(codec, [str(p) for p in paths], out, StudentOptions(model=model, device="cpu"))
    assert summary["bytes"] == out.stat().st_size                # the real file's bytes
    assert summary["bytes_per_image"] == summary["bytes"] / 12 and summary["model_id"] == model_id
    reader = Reader.from_path(out)
    assert reader.header["kind"] == "features" and reader.header["count"] == 12
    assert reader.header["model_id"] == model_id
    options = StudentDecodeOptions(model=model, device="cpu")
    decoded = codec.save(codec.open(reader, options), None, options)
    with torch.no_grad():
        whole = student(pixels.float() / 255).argmax(1).tolist()  # the whole student in one process
    assert [r["class"] for r in decoded["predictions"]] == whole
    assert [r["image"] for r in decoded["predictions"]] == [p.name for p in paths]
    assert "output" not in decoded
    # the Python API: an array in, the predicted classes out, the same as from the PNG files
    array = pixels[:, 0].numpy()                                  # uint8 [N, H, W]
    ncodec.encode(array, tmp_path / "a.ncb", codec="student", model=model, device="cpu")
    predicted = ncodec.decode(tmp_path / "a.ncb", model=model, device="cpu")
    assert predicted.dtype == np.int64 and predicted.tolist() == whole
    assert Reader.from_path(tmp_path / "a.ncb").payload("latents") == reader.payload("latents")
    assert ncodec.decode(out, model=model, device="cpu").tolist() == whole
    rgb = np.repeat(array[..., None], 3, axis=3)                  # converted to grey as an RGB PNG would be
    ncodec.encode(rgb, tmp_path / "rgb.ncb", codec="student", model=model, device="cpu")
    assert ncodec.decode(tmp_path / "rgb.ncb", model=model, device="cpu").tolist() == whole
    with pytest.raises(UserError, match="the model takes 8x8"):
        ncodec.encode(np.zeros((2, 16, 16), np.uint8), tmp_path / "b.ncb", codec="student", model=model)
    with pytest.raises(UserError, match="uint8"):
        ncodec.encode(array.astype(np.float32), tmp_path / "b.ncb", codec="student", model=model)


def test_cli_encode_decode_json(capsys, models, images, tmp_path):
    paths, _ = images
    out = tmp_path / "y.ncb"
    code, _, err = run(capsys, "encode", *paths, "--codec", "student", "--model", models / "student.safetensors",
                       "-o", out, "--device", "cpu")
    assert code == 0, err
    code, stdout, err = run(capsys, "decode", out, "--model", models / "student.safetensors", "--json",
                            "--device", "cpu")
    assert code == 0, err
    result = json.loads(stdout)
    assert len(result["predictions"]) == 12 and len(result["classes"].split()) == 12
    code, _, err = run(capsys, "decode", out, "--model", models / "student.safetensors", "-o",
                       tmp_path / "pred.json", "--device", "cpu")
    assert code == 0, err
    assert json.loads((tmp_path / "pred.json").read_text())["predictions"] == result["predictions"]
    code, stdout, err = run(capsys, "decode", out, "--model", models / "student.safetensors", "--device", "cpu")
    assert code == 0, err
    assert "predictions" in stdout and paths[0].name in stdout          # the rows as a table of their own


def test_decoding_with_another_student_is_refused(capsys, models, images, tmp_path):
    paths, _ = images
    out = tmp_path / "z.ncb"
    assert run(capsys, "encode", paths[0], "--codec", "student", "--model", models / "student.safetensors",
               "-o", out, "--device", "cpu")[0] == 0
    code, _, err = run(capsys, "decode", out, "--model", models / "other.safetensors", "--device", "cpu")
    assert_one_line_error(code, err, "encoded with student model")


def test_wrong_image_size_is_one_line(capsys, models, tmp_path):
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(big)
    code, _, err = run(capsys, "encode", big, "--codec", "student", "--model", models / "student.safetensors",
                       "-o", tmp_path / "o.ncb", "--device", "cpu")
    assert_one_line_error(code, err, "the model takes 8x8")


def test_a_model_file_that_is_not_one_is_one_line(capsys, images, tmp_path):
    paths, _ = images
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + bytes(100))
    code, _, err = run(capsys, "encode", paths[0], "--codec", "student", "--model", fake, "-o", tmp_path / "o.ncb")
    assert_one_line_error(code, err, "not an ncodec model file")
    code, _, err = run(capsys, "encode", paths[0], "--codec", "student", "-o", tmp_path / "o.ncb")
    assert_one_line_error(code, err, "--model")


def test_damaged_latents_are_a_bitstream_error(models, images, tmp_path):
    paths, _ = images
    model = str(models / "student.safetensors")
    codec, options = StudentCodec(), StudentDecodeOptions(model=model, device="cpu")
    encode_file(codec, [str(p) for p in paths[:3]], tmp_path / "a.ncb", StudentOptions(model=model, device="cpu"))
    reader = Reader.from_path(tmp_path / "a.ncb")
    # rebuild the file with a latents section whose first stream is not a whole number of 32-bit words
    w = Writer("student", 1, dict(reader.header))
    w.add_section("latents", b"\x03abc" + reader.payload("latents")[4:])
    w.write(tmp_path / "b.ncb")
    with pytest.raises(BitstreamError):
        codec.open(Reader.from_path(tmp_path / "b.ncb"), options)
    with pytest.raises(UserError, match="a .json file"):
        codec.save(codec.open(reader, options), str(tmp_path / "pred.png"), options)
    w = Writer("student", 3, dict(reader.header))
    w.add_section("latents", reader.payload("latents"))
    with pytest.raises(BitstreamError, match="version 3 is not supported"):
        codec.open(Reader.from_bytes(w.to_bytes()), options)


def test_cli_stage2_from_a_student_file(capsys, models, tmp_path):
    """`ncodec train student --from S` runs stage 2 only: encoder and prior stay bit-identical."""
    out = tmp_path / "more.safetensors"
    base = ["train", "student", "digits", "--teacher", models / "teacher.safetensors", "--limit", "200",
            "--device", "cpu", "-o", out, "-y"]
    code, _, err = run(capsys, *base, "--from", models / "student.safetensors", "--epochs2", "1", "--json")
    assert code == 0, err
    a, b = (model_file.load(p).tensors for p in (models / "student.safetensors", out))
    frozen = [k for k in a if k.startswith(("encoder.", "entropy_bottleneck."))]
    assert frozen and all(torch.equal(a[k], b[k]) for k in frozen)
    code, _, err = run(capsys, *base, "--from", models / "student.safetensors", "--epochs", "3")
    assert_one_line_error(code, err, "stage 2 only")
    code, _, err = run(capsys, *base, "--from", tmp_path / "missing.safetensors")
    assert_one_line_error(code, err, "no such student file")


def test_cli_init_continues_stage1_from_a_student_file(capsys, models, tmp_path):
    """`ncodec train student --init S --kd-weight W --hard-latent`: stage 1 from S's weights, with the KD term."""
    out = tmp_path / "kd.safetensors"
    base = ["train", "student", "digits", "--teacher", models / "teacher.safetensors", "--limit", "200",
            "--device", "cpu", "-o", out, "-y"]          # -y: the later runs check options against an existing out
    code, text, err = run(capsys, *base, "--init", models / "student.safetensors", "--epochs", "1", "--epochs2", "0",
                          "--kd-weight", "20", "--hard-latent", "--tune-tail", "--json")
    assert code == 0, err
    summary = json.loads(text)
    assert (summary["stage1_init"], summary["kd_weight"], summary["hard_latent"], summary["tune_tail"]) == (
        "student.safetensors", 20.0, True, True)
    assert model_file.load(out).config["latent_channels"] == model_file.load(models / "student.safetensors").config[
        "latent_channels"]
    code, _, err = run(capsys, *base, "--init", models / "student.safetensors", "--latent-channels", "3")
    assert_one_line_error(code, err, "--latent-channels")
    code, _, err = run(capsys, *base, "--init", tmp_path / "missing.safetensors")
    assert_one_line_error(code, err, "no such student file")
    code, _, err = run(capsys, *base, "--from", models / "student.safetensors", "--kd-weight", "3")
    assert_one_line_error(code, err, "--kd-weight")
    code, _, err = run(capsys, *base, "--kd-weight", "-1")
    assert_one_line_error(code, err, "kd-weight")


def test_cli_encoder_blocks_and_kernel(capsys, models, tmp_path):
    """`--encoder-blocks N` puts N residual blocks into the device encoder, `--encoder-kernel K` sets its
    down-sampling kernel; the file records both and codes alike."""
    out = tmp_path / "deep.safetensors"
    base = ["train", "student", "digits", "--teacher", models / "teacher.safetensors", "--limit", "200",
            "--device", "cpu", "--epochs", "1", "--epochs2", "0", "-o", out, "-y"]
    code, _, err = run(capsys, *base, "--encoder-blocks", "1", "--encoder-kernel", "3", "--json")
    assert code == 0, err
    student, _ = model_file.load_student(str(out))
    assert student.config["encoder_blocks"] == 1 and student.config["encoder_kernel"] == 3
    assert sum(type(m).__name__ == "ResidualBlock" for m in student.encoder) == 1
    assert student.encoder[0].kernel_size == (3, 3)
    symbols = torch.randint(-3, 4, (2, *student.latent_shape), dtype=torch.int32).numpy()
    coder = LatentCoder(student)
    assert all(np.array_equal(coder.decode(coder.encode(s)), s) for s in symbols)
    code, _, err = run(capsys, *base, "--encoder-blocks", "-1")
    assert_one_line_error(code, err, "--encoder-blocks")
    code, _, err = run(capsys, *base, "--encoder-kernel", "4")
    assert_one_line_error(code, err, "--encoder-kernel")
    code, _, err = run(capsys, *base, "--init", models / "student.safetensors", "--encoder-blocks", "2")
    assert_one_line_error(code, err, "--encoder-blocks")


def test_cli_decoder_blocks(capsys, models, tmp_path):
    """`--decoder-blocks N` deepens the server-side decoder; the file records it and loads with it."""
    out = tmp_path / "deepdec.safetensors"
    base = ["train", "student", "digits", "--teacher", models / "teacher.safetensors", "--limit", "200",
            "--device", "cpu", "--epochs", "1", "--epochs2", "0", "-o", out, "-y"]
    code, _, err = run(capsys, *base, "--decoder-blocks", "1", "--json")
    assert code == 0, err
    student, _ = model_file.load_student(str(out))
    assert student.config["decoder_blocks"] == 1
    assert sum(type(m).__name__ == "ResidualBlock" for m in student.decoder) == 1
    code, _, err = run(capsys, *base, "--decoder-blocks", "-1")
    assert_one_line_error(code, err, "--decoder-blocks")
    code, _, err = run(capsys, *base, "--decoder-blocks", "9")
    assert_one_line_error(code, err, "decoder_blocks")


def test_cli_stage2_mix_and_kd_alpha(capsys, models, tmp_path):
    """`--from S --mix cutmix --kd-alpha 1 --kd-temperature 4` runs stage 2 on mixed images against the teacher
    alone, at temperature 4; impossible
    values and a stage 2 that does not run are one-line errors."""
    out = tmp_path / "mixed.safetensors"
    base = ["train", "student", "digits", "--teacher", models / "teacher.safetensors", "--limit", "200",
            "--device", "cpu", "--epochs2", "1", "-o", out]
    code, stdout, err = run(capsys, *base, "--from", models / "student.safetensors", "--mix", "cutmix",
                            "--kd-alpha", "1", "--kd-temperature", "4", "--json")
    assert code == 0, err
    assert model_file.load(str(out)).meta["training"]["stage2_loss"] == {"kd_alpha": 1.0, "mix": "cutmix",
                                                                         "kd_temperature": 4.0}
    code, _, err = run(capsys, *base, "--from", models / "student.safetensors", "--kd-temperature", "0")
    assert_one_line_error(code, err, "--kd-temperature")
    code, _, err = run(capsys, *base, "--from", models / "student.safetensors", "--kd-alpha", "2")
    assert_one_line_error(code, err, "--kd-alpha")
    code, _, err = run(capsys, *base, "--from", models / "student.safetensors", "--mix", "blend")
    assert code == 2 and "blend" in err
    code, _, err = run(capsys, *[a if a != "1" else "0" for a in base], "--mix", "mixup")
    assert_one_line_error(code, err, "--epochs2 0")
