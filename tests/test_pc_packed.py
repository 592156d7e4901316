"""Packed pc model files (version 2: 8-bit log-domain codes, xz): the codebook's precision, the round trip, exact
coding with a packed model, older float16 files, and malformed packed tables refused in one line."""
import json
import lzma

import numpy as np
import pytest
from safetensors.numpy import save

import ncodec
from codec.errors import UserError
from codec.lossless.pc import model_file, packed

RNG = np.random.default_rng(5)


def probs(*shape):
    p = RNG.random(shape) ** 4 + 1e-7          # peaked rows with small entries, as trained leaves have
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)


def tiny(d=12, m=3) -> model_file.PCModel:
    return model_file.PCModel(np.arange(-1, d - 1), probs(m), probs(d, m, m), probs(d, m, 256), 3, 4, 1)


def test_codes_keep_zero_one_and_a_small_relative_error():
    book = packed.codebook()
    assert book[0] == 0.0 and book[255] == 1.0 and np.all(np.diff(book[1:]) > 0)
    p = np.exp2(RNG.uniform(packed.LOG2_FLOOR, 0, 100_000))
    q = book[packed.codes(p)].astype(np.float64)
    assert np.max(np.abs(np.log2(q / p))) <= -packed.LOG2_FLOOR / (packed.LEVELS - 1) / 2 + 1e-6   # half a step
    assert list(packed.codes(np.array([0.0, 1e-30, 1.0]))) == [0, 1, 255]


def test_a_packed_file_round_trips_and_peeks_like_a_plain_one(tmp_path):
    m = tiny()
    plain, small = tmp_path / "plain.pcm", tmp_path / "packed.pcm"
    model_file.save_model(m, plain)
    small.write_bytes(model_file.to_bytes(m, packed_tables=True))
    loaded = model_file.load_model(small)
    for name in ("edge", "leaf"):
        assert np.array_equal(getattr(loaded, name), packed.codebook()[packed.codes(getattr(m, name))])
    assert np.array_equal(loaded.root, m.root) and np.array_equal(loaded.parent, m.parent)
    a, b = model_file.peek(plain), model_file.peek(small)
    assert (a.variables, a.latents, a.depth) == (b.variables, b.latents, b.depth)


def test_a_packed_model_codes_bit_exactly(tmp_path):
    path = tmp_path / "packed.pcm"
    path.write_bytes(model_file.to_bytes(tiny(), packed_tables=True))
    images = RNG.integers(0, 256, (6, 3, 4), dtype=np.uint8)
    ncodec.encode(images, tmp_path / "x.ncb", codec="pc", model=str(path), device="cpu")
    assert np.array_equal(ncodec.decode(tmp_path / "x.ncb", model=str(path), device="cpu"), images)


def test_a_version_1_float16_file_still_loads(tmp_path):
    m = tiny()
    tensors = {"parent": m.parent.astype(np.int64),
               **{k: getattr(m, k).astype(np.float16) for k in ("root", "edge", "leaf")}}
    meta = {"format": model_file.FORMAT, "version": "1", "height": "3", "width": "4", "channels": "1",
            "latents": "3", "info": "{}"}
    (tmp_path / "f16.pcm").write_bytes(save(tensors, metadata=meta))
    assert np.array_equal(model_file.load_model(tmp_path / "f16.pcm").leaf,
                          m.leaf.astype(np.float16).astype(np.float32))


def _packed_file(tmp_path, **change) -> str:
    m = tiny()
    data = model_file.to_bytes(m, packed_tables=True)
    from safetensors.numpy import load
    tensors = load(data)
    meta = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])["__metadata__"]
    for k, v in change.items():
        if v is None:
            tensors.pop(k)
        else:
            tensors[k] = v
    path = tmp_path / "bad.pcm"
    path.write_bytes(save(tensors, metadata=meta))
    return str(path)


def _xz(raw: bytes) -> np.ndarray:
    return np.frombuffer(lzma.compress(raw, format=lzma.FORMAT_XZ), dtype=np.uint8)


@pytest.mark.parametrize("change, says", [
    ({"leaf_xz": _xz(bytes(12 * 3 * 256 - 1))}, "fewer than"),
    ({"leaf_xz": _xz(bytes(12 * 3 * 256 + 1))}, "more than"),
    ({"leaf_xz": np.frombuffer(b"not an xz stream", dtype=np.uint8)}, "does not decompress"),
    ({"edge_codebook": np.full(256, 2.0, dtype=np.float32)}, "codebook"),
    ({"edge_codebook": np.zeros(255, dtype=np.float32)}, "codebook"),
    ({"leaf_xz": None}, "missing"),
    ({"root": np.full(4096, 1 / 4096, dtype=np.float32), "parent": np.arange(-1, 2**20 - 1)}, "too large"),
])
def test_malformed_packed_tables_are_refused_in_one_line(tmp_path, change, says):
    with pytest.raises(UserError) as e:
        model_file.load_model(_packed_file(tmp_path, **change))
    assert says in str(e.value) and "\n" not in str(e.value)
