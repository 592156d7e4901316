"""Uniform quantisation: error bounds, relaxations for training, exact serialisation, corruption."""
import numpy as np
import pytest
import torch

from bitstream.errors import BitstreamError
from bitstream.serial import ByteReader, ByteWriter
from codec.errors import UserError
from codec.quant import (QuantizedTensor, coding_report, fake_quantize, huffman_code_lengths, quantize,
                         symbol_range)

MODES = [(axis, symmetric) for axis in (None, 0, -1) for symmetric in (False, True)]


def _tensor(seed=0, shape=(6, 5, 7)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.rand(shape[0], 1, 1, generator=g) * 3
    x[1] = 0.0                     # a zero channel
    x[2] = 0.25                    # a constant channel
    return x


def _step(qt):
    shape = [1] * qt.symbols.ndim
    if qt.axis is not None:
        shape[qt.axis] = -1
    return torch.from_numpy(np.asarray(qt.scale, np.float64).reshape(shape))


@pytest.mark.parametrize("bits", range(2, 17))
@pytest.mark.parametrize("axis,symmetric", MODES)
def test_error_is_at_most_half_a_step(bits, axis, symmetric):
    x = _tensor(bits).double()
    qt = quantize(x, bits, axis, symmetric)
    lo, hi = symbol_range(bits, symmetric)
    assert qt.symbols.dtype == np.int32 and qt.symbols.shape == tuple(x.shape)
    assert lo <= qt.symbols.min() and qt.symbols.max() <= hi
    if symmetric:
        assert np.all(qt.offset == 0)
    err = (x - qt.dequantize(dtype=torch.float64)).abs()
    tol = _step(qt) / 2 + 4 * 2.0**-24 * x.abs().max() + 1e-12
    assert torch.all(err <= tol)


def test_zero_range_channels_are_exact():
    x = torch.zeros(3, 4)
    x[1] = -2.5
    for symmetric in (False, True):
        qt = quantize(x, 4, axis=0, symmetric=symmetric)
        assert np.all(np.isfinite(qt.scale)) and np.all(qt.scale > 0)
        assert torch.equal(qt.dequantize(), x) or not symmetric
    qt = quantize(x, 4, axis=0)
    assert torch.equal(qt.dequantize(), x)
    assert torch.equal(quantize(torch.zeros(5), 8, symmetric=True).dequantize(), torch.zeros(5))


def test_zero_maps_to_zero_when_symmetric():
    x = torch.tensor([-3.0, 0.0, 1.0, 0.0])
    qt = quantize(x, 3, symmetric=True)
    assert qt.symbols[1] == 0 and qt.dequantize()[1] == 0


@pytest.mark.parametrize("axis,symmetric", MODES)
def test_ste_forward_quantises_and_gradient_passes_straight(axis, symmetric):
    x = _tensor(1).requires_grad_()
    y = fake_quantize(x, 4, axis, symmetric, mode="ste")
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    ref = quantize(x.detach(), 4, axis, symmetric).dequantize()
    assert torch.allclose(y.detach(), ref, atol=1e-5)


@pytest.mark.parametrize("axis,symmetric", MODES)
def test_noise_relaxation_is_differentiable_and_bounded(axis, symmetric):
    x = _tensor(2).requires_grad_()
    y = fake_quantize(x, 5, axis, symmetric, mode="noise")
    (y * 3).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 3.0))
    step = _step(quantize(x.detach(), 5, axis, symmetric)).float()
    assert torch.all((y - x).abs() <= step / 2 + 1e-6)
    assert not torch.equal(y, x)


def test_relaxations_reject_bad_options_and_pass_empty_tensors():
    x = torch.randn(4)
    with pytest.raises(UserError):
        fake_quantize(x, 4, mode="round")
    with pytest.raises(UserError):
        fake_quantize(x, 1)
    e = torch.zeros(0, 3, requires_grad=True)
    assert fake_quantize(e, 4, axis=1).shape == (0, 3)


@pytest.mark.parametrize("bad", [dict(bits=1), dict(bits=17), dict(bits=8.0), dict(axis=3), dict(axis=-4)])
def test_bad_options_are_user_errors(bad):
    with pytest.raises(UserError):
        quantize(torch.randn(2, 3, 4), **{"bits": 8, **bad})


def test_non_finite_values_are_user_errors():
    for v in (float("nan"), float("inf")):
        with pytest.raises(UserError):
            quantize(torch.tensor([1.0, v]), 8)
    with pytest.raises(UserError):
        quantize(np.array([1e300]), 8)


@pytest.mark.parametrize("bits", [2, 5, 8, 12, 16])
@pytest.mark.parametrize("axis,symmetric", MODES)
def test_bytes_round_trip_exactly(bits, axis, symmetric):
    x = _tensor(bits, shape=(5, 8, 9))
    qt = quantize(x, bits, axis, symmetric)
    back = QuantizedTensor.from_bytes(qt.to_bytes())
    assert np.array_equal(back.symbols, qt.symbols) and back.symbols.dtype == np.int32
    assert np.array_equal(back.scale, qt.scale) and np.array_equal(back.offset, qt.offset)
    assert back.scale.shape == qt.scale.shape and back.scale.dtype == np.float32
    assert (back.bits, back.axis, back.symmetric) == (qt.bits, qt.axis, qt.symmetric)
    assert torch.equal(back.dequantize(), qt.dequantize())


def test_bytes_of_empty_and_scalar_tensors_and_readers():
    for x in (torch.zeros(0, 4), torch.tensor(3.5), torch.zeros(2, 0, 3)):
        qt = quantize(x, 6, axis=1 if x.dim() == 3 else None)
        back = QuantizedTensor.from_bytes(qt.to_bytes())
        assert back.shape == tuple(x.shape) and torch.equal(back.dequantize(), qt.dequantize())
    # several tensors in one ByteReader, each reading only its own bytes
    w = ByteWriter()
    tensors = [quantize(_tensor(s), 8, axis=0) for s in range(3)]
    for qt in tensors:
        qt.write(w)
    w.u8(0xAB)
    r = ByteReader(w.getvalue())
    for qt in tensors:
        assert np.array_equal(QuantizedTensor.from_bytes(r).symbols, qt.symbols)
    assert r.u8() == 0xAB


def _field_corruptions(data: bytes):
    """(description, bytes) for header fields: format, bits, flags, axis."""
    yield "format", bytes([9]) + data[1:]
    yield "bits=1", data[:1] + bytes([1]) + data[2:]
    yield "bits=17", data[:1] + bytes([17]) + data[2:]
    yield "flags", data[:2] + bytes([data[2] | 0x10]) + data[3:]
    yield "axis", data[:3] + bytes([7]) + data[4:]
    yield "trailing", data + b"\x00"


def test_corrupted_bytes_raise_bitstream_errors():
    qt = quantize(_tensor(3), 8, axis=0)
    data = qt.to_bytes()
    for what, bad in _field_corruptions(data):
        with pytest.raises(BitstreamError):
            QuantizedTensor.from_bytes(bad)
    for cut in range(len(data)):
        with pytest.raises(BitstreamError):
            QuantizedTensor.from_bytes(data[:cut])
    # scales: the first follows format, bits, flags, axis, ndim and three one-byte dims
    scale_at = 8
    for value in (np.nan, np.inf, -1.0, 0.0):
        bad = bytearray(data)
        bad[scale_at:scale_at + 4] = np.float32(value).tobytes()
        with pytest.raises(BitstreamError):
            QuantizedTensor.from_bytes(bytes(bad))
    with pytest.raises(BitstreamError):
        QuantizedTensor.from_bytes(data, max_elements=qt.symbols.size - 1)
    rng = np.random.default_rng(0)
    for _ in range(150):                      # random damage: a clean error or a well-formed tensor, never a crash
        bad = bytearray(data)
        for i in rng.integers(0, len(bad), rng.integers(1, 4)):
            bad[i] = rng.integers(256)
        try:
            out = QuantizedTensor.from_bytes(bytes(bad))
        except BitstreamError:
            continue
        lo, hi = symbol_range(out.bits, out.symmetric)
        assert out.symbols.min() >= lo and out.symbols.max() <= hi


def test_dequantize_is_identical_for_float32_and_float64_inputs_and_devices():
    x32 = _tensor(4)
    for axis, symmetric in MODES:
        a = quantize(x32, 7, axis, symmetric)
        b = quantize(x32.double(), 7, axis, symmetric)
        assert np.array_equal(a.symbols, b.symbols) and np.array_equal(a.scale, b.scale)
        assert np.array_equal(a.offset, b.offset)
        d32 = a.dequantize()
        assert torch.equal(d32, b.dequantize())
        assert torch.equal(a.dequantize(dtype=torch.float64), d32.double())   # computed in float32, then cast
        meta = a.dequantize(device="meta")
        assert meta.device.type == "meta" and meta.shape == d32.shape
        if torch.cuda.is_available():                 # the same float32 numbers, moved: identical on the GPU
            assert torch.equal(a.dequantize(device="cuda").cpu(), d32)


def test_huffman_code_lengths():
    assert huffman_code_lengths([5, 2, 1, 1]).tolist() == [1, 2, 3, 3]
    assert huffman_code_lengths([0, 7, 0]).tolist() == [0, 1, 0]
    counts = np.random.default_rng(1).integers(0, 1000, 300)
    lengths = huffman_code_lengths(counts)
    present = counts > 0
    assert np.sum(2.0 ** -lengths[present]) == pytest.approx(1.0)      # a complete prefix code
    assert np.all(lengths[~present] == 0)


def test_adaptive_model_choice_and_report():
    g = torch.Generator().manual_seed(5)
    # a skewed three-value alphabet no unimodal model fits: the histogram wins and beats Huffman's 1-bit floor
    skewed = torch.zeros(20_000)
    skewed[torch.randperm(20_000, generator=g)[:2000]] = torch.tensor([-1.0, 1.0]).repeat(1000)
    report = coding_report(quantize(skewed, 3, symmetric=True))
    assert report["model"] == "categorical"
    assert report["payload_bytes"] + report["model_bytes"] < 0.8 * report["huffman_payload_bytes"]
    assert report["bytes"] == len(quantize(skewed, 3, symmetric=True).to_bytes())
    # 16-bit smooth weights: a histogram table would cost more than a two-parameter model
    smooth = torch.randn(20_000, generator=g)
    report = coding_report(quantize(smooth, 16))
    assert report["model"] in ("laplace", "gaussian") and report["model_bytes"] < 32
    assert report["payload_bytes"] <= 1.02 * report["huffman_payload_bytes"] + report["huffman_table_bytes"]


def test_round_ste_rounds_forward_and_passes_gradients():
    from codec.quant import round_ste

    x = torch.tensor([0.4, 1.6, -2.5, 3.0], requires_grad=True)
    y = round_ste(x)
    assert torch.equal(y.detach(), torch.round(x.detach()))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
