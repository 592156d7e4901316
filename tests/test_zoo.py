"""The model zoo (codec/zoo): every shipped model loads and matches its sha256, a zoo name works wherever a model
path does, the digits split demo runs from the zoo without training, and a wrong name lists the known ones."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import ncodec
from cli.main import main
from codec import zoo
from codec.device import cpu_thread_limit
from codec.errors import UserError
from codec.features import model_file as features_file
from codec.features import train as T
from codec.features.codec import classify_symbols, encode_images, open_student
from codec.features.data import load_dataset, split_holdout
from codec.lossless.pc import model_file as pc_file
from codec.lossless.pc import packed
from codec.zoo import convert

CPU = torch.device("cpu")
MODELS = zoo.models()
NAMES = [m["name"] for m in MODELS]
PC = [m["name"] for m in MODELS if m["kind"] == "pc"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with cpu_thread_limit(CPU, limit=1):
        yield


@pytest.fixture(scope="module")
def digits_pngs(tmp_path_factory):
    """Eight of the digits the zoo's models were not trained on, as PNGs in class folders."""
    _, held = split_holdout(load_dataset("digits"), T.HOLDOUT, seed=0)
    d = tmp_path_factory.mktemp("pngs")
    paths = []
    for i in range(8):
        folder = d / held.classes[int(held.labels[i])]
        folder.mkdir(exist_ok=True)
        Image.fromarray(held.images[i, 0].numpy()).save(folder / f"{i}.png")
        paths.append(str(folder / f"{i}.png"))
    return paths


def test_the_registry_is_complete_and_the_zoo_small():
    assert NAMES[:2] == ["digits-teacher", "digits-student"] and len(set(NAMES)) == len(NAMES)
    shipped = {m["file"] for m in MODELS}
    on_disk = {f for f in os.listdir(zoo.FOLDER) if f.endswith((".pcm", ".safetensors"))}
    assert shipped == on_disk                     # nothing shipped without a registry entry, and the reverse
    for m in MODELS:
        for key in ("kind", "data", "data_detail", "recipe", "headline", "measure", "machine"):
            assert m[key], (m["name"], key)
        assert os.path.getsize(zoo.FOLDER / m["file"]) == m["bytes"]
    assert sum(m["bytes"] for m in MODELS) < 40e6


@pytest.mark.parametrize("name", NAMES)
def test_every_zoo_model_loads_and_its_sha256_checks(name):
    m = zoo.entry(name)
    path = zoo.resolve_model(name)
    assert zoo.sha256_of(path) == m["sha256"]
    if m["kind"] == "pc":
        pcm = pc_file.load_model(name)
        assert pcm.sha256 == m["sha256"] and pcm.leaf.dtype == np.float32
    elif m["kind"] == "teacher":
        assert features_file.load_teacher(name).config["image_size"] > 0
    else:
        student, model_id = features_file.load_student(name)
        assert model_id == features_file.load(path).model_id and student.context_prior is not None
    # the zoo stores weights and probabilities in half precision; the student's integer tables stay integers
    tensors = features_file.load(path).tensors if m["kind"] != "pc" else None
    if tensors is not None:
        assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.float16}
        assert tensors["entropy_bottleneck._quantized_cdf"].dtype == torch.int32 if m["kind"] == "student" else True


def _tampered_zoo(tmp_path, monkeypatch, name="digits-teacher"):
    folder = tmp_path / "zoo"
    folder.mkdir()
    shutil.copy(zoo.FOLDER / zoo.REGISTRY, folder / zoo.REGISTRY)
    data = bytearray((zoo.FOLDER / zoo.entry(name)["file"]).read_bytes())
    data[-1] ^= 1                                  # one bit of one weight
    (folder / zoo.entry(name)["file"]).write_bytes(bytes(data))
    monkeypatch.setattr(zoo, "FOLDER", folder)


def test_a_tampered_zoo_file_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    _tampered_zoo(tmp_path, monkeypatch)
    with pytest.raises(UserError, match="sha256") as e:
        features_file.load_teacher("digits-teacher")
    assert "\n" not in str(e.value) and "digits-teacher" in str(e.value)
    code = main(["train", "student", "digits", "--teacher", "digits-teacher", "-o", str(tmp_path / "s.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "sha256" in err
    assert not (tmp_path / "s.safetensors").exists()


def test_a_missing_name_lists_the_known_names(tmp_path, capsys, digits_pngs):
    with pytest.raises(UserError) as e:
        zoo.resolve_model("digits-stduent")
    assert "\n" not in str(e.value) and "not found" in str(e.value)
    assert all(n in str(e.value) for n in NAMES)
    for argv in (["encode", *digits_pngs, "-o", str(tmp_path / "a.ncb"), "--codec", "student", "--model", "nope"],
                 ["encode", digits_pngs[0], "-o", str(tmp_path / "b.ncb"), "--codec", "pc", "--model", "nope.pcm"],
                 ["split", "serve", "--model", "nope", "--port", "0", "--device", "cpu"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and all(n in err for n in NAMES), err


def test_ncodec_models_prints_every_model(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == NAMES
    for line, m in zip(lines, MODELS):
        assert zoo.size_text(m["bytes"]) in line and m["data"] in line and m["headline"] in line
    assert main(["models", "--json"]) == 0
    assert [m["name"] for m in json.loads(capsys.readouterr().out)] == NAMES


def test_student_by_zoo_name_through_the_api_and_the_cli(tmp_path, digits_pngs, capsys):
    path = zoo.resolve_model("digits-student")
    by_name = ncodec.encode(digits_pngs, tmp_path / "name.ncb", codec="student", model="digits-student", device="cpu")
    by_path = ncodec.encode(digits_pngs, tmp_path / "path.ncb", codec="student", model=path, device="cpu")
    assert (tmp_path / "name.ncb").read_bytes() == (tmp_path / "path.ncb").read_bytes()
    assert by_name["bytes"] == by_path["bytes"]
    classes = ncodec.decode(tmp_path / "name.ncb", model="digits-student", device="cpu")
    assert np.array_equal(classes, ncodec.decode(tmp_path / "path.ncb", model=path, device="cpu"))
    labels = [int(os.path.basename(os.path.dirname(p))) for p in digits_pngs]
    assert np.mean(np.asarray(classes) == labels) >= 0.75

    assert main(["encode", *digits_pngs, "-o", str(tmp_path / "cli.ncb"), "--codec", "student", "--model",
                 "digits-student", "--device", "cpu"]) == 0
    assert (tmp_path / "cli.ncb").read_bytes() == (tmp_path / "name.ncb").read_bytes()
    assert main(["decode", str(tmp_path / "cli.ncb"), "--model", "digits-student", "--device", "cpu",
                 "-o", str(tmp_path / "classes.json")]) == 0
    capsys.readouterr()


def test_train_student_takes_the_zoo_teacher(tmp_path):
    out = tmp_path / "s.safetensors"
    assert main(["train", "student", "digits", "--teacher", "digits-teacher", "--limit", "100", "--epochs", "1",
                 "--epochs2", "1", "--device", "cpu", "-o", str(out), "--json"]) == 0
    assert features_file.load(out).meta["training"]["teacher"] == "digits-teacher"


@pytest.mark.parametrize("name", PC)
def test_a_shipped_pc_model_codes_by_name_bit_exactly(name, tmp_path):
    pcm = pc_file.load_model(name)
    rng = np.random.default_rng(0)
    images = (rng.random((3, pcm.height, pcm.width)) < 0.2).astype(np.uint8) * 255   # sparse strokes, any images
    ncodec.encode(images, tmp_path / "x.ncb", codec="pc", model=name, device="cpu")
    assert np.array_equal(ncodec.decode(tmp_path / "x.ncb", model=name, device="cpu"), images)
    assert np.array_equal(ncodec.decode(tmp_path / "x.ncb", model=zoo.resolve_model(name), device="cpu"), images)


@pytest.mark.parametrize("name", [m["name"] for m in MODELS if m["kind"] == "student"])
def test_a_shipped_student_codes_by_name_exactly(name, tmp_path):
    """Any images of the student's size (smooth random ones here): the file decodes to exactly the classes its
    server half gives the encoder's symbols."""
    student, _, dev = open_student(zoo.resolve_model(name), "cpu")
    c, h, w = student.image_shape
    rng = np.random.default_rng(2)
    coarse = torch.from_numpy(rng.random((6, c, h // 4, w // 4), dtype=np.float32))
    images = (F.interpolate(coarse, size=(h, w), mode="bilinear") * 255).round().to(torch.uint8)
    array = images.permute(0, 2, 3, 1).numpy()                     # [N, H, W, C]; grey images as [N, H, W]
    summary = ncodec.encode(array[..., 0] if c == 1 else array, tmp_path / "s.ncb", codec="student", model=name,
                            device="cpu")
    expected = classify_symbols(student, encode_images(student, images, dev), dev)
    assert np.array_equal(ncodec.decode(tmp_path / "s.ncb", model=name, device="cpu"), expected)
    assert 0 < summary["bytes"] < 6 * c * h * w


def test_pc_by_zoo_name_with_a_packed_model(tmp_path, monkeypatch):
    """A tiny pc model converted as the zoo converts them, registered in a temporary zoo: a name works for encode
    and decode, and the packed (8-bit) file still codes bit-exactly."""
    rng = np.random.default_rng(1)
    d, m = 16, 3
    probs = lambda *shape: (lambda p: p / p.sum(-1, keepdims=True))(rng.random(shape) + 0.05).astype(np.float32)
    tiny = pc_file.PCModel(np.arange(-1, d - 1), probs(m), probs(d, m, m), probs(d, m, 256), 4, 4, 1)
    pc_file.save_model(tiny, tmp_path / "tiny32.pcm")
    folder = tmp_path / "zoo"
    folder.mkdir()
    convert.main([str(tmp_path / "tiny32.pcm"), str(folder / "tiny.pcm")])
    registry = {"models": [{"name": "tiny-pc", "file": "tiny.pcm", "kind": "pc",
                            "bytes": os.path.getsize(folder / "tiny.pcm"), "sha256": zoo.sha256_of(folder / "tiny.pcm")}]}
    (folder / zoo.REGISTRY).write_text(json.dumps(registry))
    monkeypatch.setattr(zoo, "FOLDER", folder)
    loaded = pc_file.load_model("tiny-pc")
    assert loaded.meta["packed_from"] == pc_file.load_model(tmp_path / "tiny32.pcm").sha256
    assert np.array_equal(loaded.leaf, packed.codebook()[packed.codes(tiny.leaf)])
    assert np.allclose(loaded.leaf, tiny.leaf, rtol=0.03, atol=0)
    images = rng.integers(0, 256, (5, 4, 4), dtype=np.uint8)
    s = ncodec.encode(images, tmp_path / "t.ncb", codec="pc", model="tiny-pc", device="cpu")
    assert s["model_sha256"] == registry["models"][0]["sha256"]
    assert np.array_equal(ncodec.decode(tmp_path / "t.ncb", model="tiny-pc", device="cpu"), images)
    assert np.array_equal(ncodec.decode(tmp_path / "t.ncb", model=str(folder / "tiny.pcm"), device="cpu"), images)


def test_the_digits_split_demo_runs_from_the_zoo_without_training(tmp_path, monkeypatch, capsys):
    def no_training(*args, **kwargs):
        raise AssertionError("the demo trained a model")

    monkeypatch.setattr(T, "train_teacher", no_training)
    monkeypatch.setattr(T, "train_student", no_training)
    assert main(["split", "demo", "--out", str(tmp_path), "--images", "30", "--device", "cpu", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["student"] == "digits-student" and summary["images"] == summary["labelled"] == 30
    assert summary["accuracy"] >= 0.85 and summary["teacher_accuracy"] >= 0.95
    assert 10 < summary["bytes_per_image"] < 40
    assert not list(tmp_path.glob("*.safetensors"))          # nothing trained, nothing cached
