"""The pc coder: exact round trips, integer tables independent of batch/order/threads/device, rate near ideal."""
import numpy as np
import pytest
import torch

from codec.lossless.pc import circuit, coding, model_file
from codec.lossless.pc.codec import decode_array, encode_array


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    return load_digits().images.astype(np.uint8)                       # [1797, 8, 8], values 0..16


@pytest.fixture(scope="module")
def pcm(digits):
    cfg = circuit.TrainConfig(latents=4, epochs=4, full_epochs=1, batch_size=256)
    model, _ = circuit.train(digits[:1200].reshape(1200, -1), cfg, torch.device("cpu"))
    return model_file.from_bytes(model_file.to_bytes(model_file.from_circuit(model, 8, 8, 1)))


def _hard_cases(digits):
    rng = np.random.default_rng(0)
    black = np.zeros((2, 8, 8), np.uint8)
    white = np.full((2, 8, 8), 255, np.uint8)
    noise = rng.integers(0, 256, (3, 8, 8), dtype=np.uint8)
    return np.concatenate([digits[1200:1300], black, white, noise])[..., None]


def test_round_trip_is_exact_including_black_white_and_noise(pcm, digits):
    x = _hard_cases(digits)
    data, ideal = encode_array(pcm, x, batch=33)                        # batches that do not divide N
    y = decode_array(pcm, data, len(x), batch=33)
    assert y.dtype == np.uint8 and np.array_equal(x, y)
    assert ideal > 0


def _all_tables(q, x):
    return {v: t for v, t in q.tables(x)}


def test_tables_do_not_depend_on_batch_size_order_or_threads(pcm, digits):
    x = _hard_cases(digits).reshape(-1, 64)
    q = coding.IntegerHCLT(pcm.parent, pcm.root, pcm.edge, pcm.leaf)
    full = _all_tables(q, x)
    for v, t in full.items():                                          # integers >= 1, exactly
        assert t.min() >= 1 and np.array_equal(t, np.floor(t))
    parts = [_all_tables(q, x[s:s + 7]) for s in range(0, len(x), 7)]
    perm = np.random.default_rng(1).permutation(len(x))
    shuffled = _all_tables(q, x[perm])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = _all_tables(q, x)
    finally:
        torch.set_num_threads(threads)
    for v, t in full.items():
        assert np.array_equal(np.concatenate([p[v] for p in parts]), t)
        assert np.array_equal(shuffled[v], t[perm])
        assert np.array_equal(single[v], t)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tables_equal_cpu_tables(pcm, digits):
    x = _hard_cases(digits).reshape(-1, 64)
    cpu = _all_tables(coding.IntegerHCLT(pcm.parent, pcm.root, pcm.edge, pcm.leaf, "cpu"), x)
    gpu = _all_tables(coding.IntegerHCLT(pcm.parent, pcm.root, pcm.edge, pcm.leaf, "cuda"), x)
    for v in cpu:
        assert np.array_equal(cpu[v], gpu[v])
    data, _ = encode_array(pcm, x[:, :, None].reshape(-1, 8, 8, 1), device="cuda")
    assert np.array_equal(decode_array(pcm, data, len(x), device="cpu").reshape(-1, 64), x)


def test_conditionals_are_the_model_conditionals(pcm, digits):
    """The product of the tables' probabilities is the model's p(x) (up to the integer rounding)."""
    x = digits[1300:1340].reshape(-1, 64)
    q = coding.IntegerHCLT(pcm.parent, pcm.root, pcm.edge, pcm.leaf)
    bits = np.zeros(len(x))
    for v, t in q.tables(x):
        bits += -np.log2(t[np.arange(len(x)), x[:, v]] / t.sum(1))
    ll = pcm.circuit().double().log_likelihood(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(bits, -ll / np.log(2), rtol=0, atol=0.01)   # bits per image


def test_written_bits_within_one_percent_of_ideal(pcm, digits):
    x = digits[1300:][..., None]
    data, _ = encode_array(pcm, x)
    ideal = circuit.bits_per_dim(pcm.circuit(), x.reshape(len(x), -1)) * x.size
    assert ideal <= len(data) * 8 <= 1.01 * ideal


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 1, 3)])
def test_tiny_and_multichannel_images_round_trip(shape):
    x = np.random.default_rng(0).integers(0, 256, (40,) + shape, dtype=np.uint8)
    model, _ = circuit.train(x.reshape(40, -1), circuit.TrainConfig(latents=3, epochs=2, batch_size=16),
                             torch.device("cpu"))
    pcm = model_file.from_bytes(model_file.to_bytes(model_file.from_circuit(model, *shape)))
    data, _ = encode_array(pcm, x, batch=7)
    assert np.array_equal(decode_array(pcm, data, len(x), batch=7), x)


def _two_component_mixture():
    """Two HCLTs over one tree, one emitting only dark values, one only bright ones (the rest 1e-30)."""
    parent = np.array([-1, 0, 1, 2, 3, 4, 2, 6])                       # 0-1-2, then 3-4-5 and 6-7 below 2
    parts = []
    for lo in (0, 128):
        m = circuit.HCLT(parent, latents=2)
        leaf = torch.full((8, 2, 256), 1e-30, dtype=torch.float64)
        leaf[:, :, lo:lo + 128] = 1.0
        with torch.no_grad():
            m.log_leaf.copy_((leaf / leaf.sum(-1, keepdim=True)).log().float())
        parts.append(m)
    mix = circuit.mixture(parts)
    return model_file.from_bytes(model_file.to_bytes(model_file.from_circuit(mix, 1, 8, 1)))


def test_a_mixture_whose_components_disagree_codes_exactly():
    """Dark pixels above, bright ones in a finished subtree: each side's message floors the other component's
    states to zero. Version 1 arithmetic multiplied them into an all-zero row (a 0/0 table); version 2 keeps
    every message entry >= 1 and codes the image."""
    pcm = _two_component_mixture()
    x = np.array([[10, 20, 30, 200, 210, 220, 40, 50], [200] * 8, [5] * 8], np.uint8).reshape(3, 1, 8, 1)
    old = coding.IntegerHCLT(pcm.parent, pcm.root, pcm.edge, pcm.leaf, version=1)
    assert any(np.isnan(t).any() for _, t in old.tables(x.reshape(3, -1)))
    new = coding.IntegerHCLT(pcm.parent, pcm.root, pcm.edge, pcm.leaf)
    assert all(t.min() >= 1 for _, t in new.tables(x.reshape(3, -1)))
    data, _ = encode_array(pcm, x)
    assert np.array_equal(decode_array(pcm, data, len(x)), x)


def test_version_1_streams_still_decode(pcm, digits):
    from bitstream.coder import RangeEncoder, TableModel

    x = _hard_cases(digits)
    enc = RangeEncoder()
    coding.encode_images(coding.IntegerHCLT(pcm.parent, pcm.root, pcm.edge, pcm.leaf, version=1),
                         x.reshape(len(x), -1), enc, TableModel)
    data = enc.to_bytes()
    assert np.array_equal(decode_array(pcm, data, len(x), version=1), x)
    assert not np.array_equal(decode_array(pcm, data, len(x)), x)       # the arithmetic did change
