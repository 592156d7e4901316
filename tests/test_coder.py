"""Range coder and entropy models: exact round trips, ideal-bit accounting, bad input and garbage bytes."""
import numpy as np
import pytest
import torch

from bitstream.coder import (Categorical, CdfTableModel, QuantizedGaussian, QuantizedLaplace, RangeDecoder,
                             RangeEncoder, TableModel, decode, encode)
from bitstream.errors import BitstreamError
from bitstream.serial import ByteReader, ByteWriter

I32 = np.iinfo(np.int32)


def _sample_rows(probs: np.ndarray, rng) -> np.ndarray:
    """One symbol per row of an (unnormalised) probability table."""
    cdf = np.cumsum(probs, axis=1)
    return (cdf > rng.random((probs.shape[0], 1)) * cdf[:, -1:]).argmax(axis=1).astype(np.int32)


def _synthetic_cdf_tables(rng, channels=3):
    """CompressAI-layout tables: 16-bit CDFs, cdf_length = pmf_length + 2, the last real slot the escape."""
    lengths = rng.integers(4, 12, channels)
    width = int(lengths.max())
    cdf = np.zeros((channels, width), np.int32)
    for c, n in enumerate(lengths):
        freq = rng.integers(1, 100, n - 1)
        freq[-1] = 1                                           # a small escape mass
        cdf[c, 1:n] = np.cumsum(np.round(freq / freq.sum() * 65536).astype(np.int64))
        cdf[c, n - 1] = 65536
    return cdf, lengths.astype(np.int32), rng.integers(-5, 3, channels).astype(np.int32)


def _cases(rng):
    """(name, model, symbols) for every model kind."""
    n = 3000
    out = []
    counts = rng.integers(0, 50, 40)
    counts[[0, -1]] = 7
    support = np.flatnonzero(counts) - 20
    out.append(("categorical", Categorical.from_counts(counts, min_symbol=-20), rng.choice(support, n)))
    data = np.round(rng.laplace(3, 5, n)).astype(np.int64)
    out.append(("categorical-fit", Categorical.fit(data), data))
    out.append(("laplace-iid", QuantizedLaplace(-30, 40, 2.5, 6.0), rng.integers(-30, 41, n)))
    loc, scale = rng.normal(0, 5, n), rng.uniform(0.2, 8, n)
    out.append(("laplace-per-symbol", QuantizedLaplace(-64, 64, loc, scale),
                np.clip(np.round(rng.laplace(loc, scale)), -64, 64).astype(np.int32)))
    out.append(("gaussian-iid", QuantizedGaussian(0, 255, 128.0, 30.0), rng.integers(0, 256, n)))
    out.append(("gaussian-per-symbol", QuantizedGaussian(-64, 64, loc, scale),
                np.clip(np.round(rng.normal(loc, scale)), -64, 64).astype(np.int16)))
    probs = rng.random((n, 9)) ** 3
    out.append(("table-float", TableModel(probs, min_symbol=-4), _sample_rows(probs, rng) - 4))
    icounts = rng.integers(1, 1000, (n, 5))
    out.append(("table-counts", TableModel(icounts), _sample_rows(icounts.astype(float), rng)))
    cdf, length, offset = _synthetic_cdf_tables(rng)
    idx = rng.integers(0, 3, n)
    sym = rng.integers(-2, 8, n) + offset[idx]
    sym[::97] = rng.integers(-10**6, 10**6, sym[::97].size)   # escapes both ways
    out.append(("cdf-tables", CdfTableModel(cdf, length, offset, idx), sym))
    return out


CASES = _cases(np.random.default_rng(0))


@pytest.mark.parametrize("name,model,symbols", CASES, ids=[c[0] for c in CASES])
def test_round_trip_every_model(name, model, symbols):
    enc = RangeEncoder()
    enc.encode(symbols, model)
    data = enc.to_bytes()
    assert len(data) % 4 == 0 and enc.num_bits == 8 * len(data)
    out = RangeDecoder(data).decode(model, symbols.size)
    assert out.dtype == np.int32 and np.array_equal(out, np.asarray(symbols).reshape(-1))
    assert enc.ideal_bits == pytest.approx(model.ideal_bits(symbols))
    assert enc.ideal_bits <= enc.num_bits + 1e-6
    # the model survives serialisation and decodes the same stream
    again = type(model).from_bytes(model.to_bytes())
    assert np.array_equal(decode(data, again, symbols.size), out)


def test_several_models_in_one_stream_and_shapes():
    enc = RangeEncoder()
    for _, model, symbols in CASES:
        enc.encode(np.asarray(symbols).reshape(-1, 1) if np.asarray(symbols).size % 2 else symbols, model)
    dec = RangeDecoder(enc.to_bytes())
    for _, model, symbols in CASES:
        assert np.array_equal(dec.decode(model, np.asarray(symbols).size), np.asarray(symbols).reshape(-1))
    two_d = np.arange(12).reshape(3, 4) % 5
    assert np.array_equal(decode(encode(two_d, Categorical.fit(two_d)), Categorical.fit(two_d), 12),
                          two_d.reshape(-1))        # flattened in C order


@pytest.mark.parametrize("model_kind", ["categorical", "laplace", "table"])
def test_written_bits_close_to_ideal(model_kind):
    rng = np.random.default_rng(1)
    n = 100_000
    if model_kind == "categorical":
        symbols = np.round(rng.laplace(0, 12, n)).astype(np.int32)
        model = Categorical.fit(symbols)
    elif model_kind == "laplace":
        symbols = np.clip(np.round(rng.laplace(0, 12, n)), -200, 200).astype(np.int32)
        model = QuantizedLaplace(-200, 200, 0.0, 12.0)
    else:
        probs = rng.random((n, 16)) ** 4
        symbols, model = _sample_rows(probs, rng), TableModel(probs)
    enc = RangeEncoder()
    enc.encode(symbols, model)
    assert enc.ideal_bits <= enc.num_bits <= 1.005 * enc.ideal_bits + 64 * 8


def test_ideal_bits_are_post_quantisation():
    """A symbol of probability 1e-12 costs at most 24 bits: ideal bits follow the leaky 24-bit model, not the
    float probabilities."""
    counts = np.array([10**12, 1, 10**12])
    symbols = np.array([1] * 500 + [0, 2] * 10)
    enc = RangeEncoder()
    enc.encode(symbols, Categorical.from_counts(counts))
    float_bits = 500 * -np.log2(1 / (2 * 10**12 + 1))
    assert enc.ideal_bits < 24 * 500 + 40 < float_bits
    assert abs(enc.num_bits - enc.ideal_bits) <= 64


def test_empty_arrays_and_one_symbol_alphabets():
    empty = np.zeros(0, np.int64)
    for model in (Categorical.from_counts([3, 4]), QuantizedLaplace(-3, 3, 0.0, 1.0),
                  QuantizedGaussian(-3, 3, 0.0, 1.0), TableModel(np.ones((0, 4))),
                  QuantizedLaplace(-3, 3, np.zeros(0), np.ones(0))):
        data = encode(empty, model)
        assert data == b"" and decode(data, model, 0).shape == (0,)
    for model, value in ((Categorical.from_counts([5], min_symbol=7), 7), (QuantizedLaplace(4, 4, 0.0, 1.0), 4),
                         (TableModel(np.ones((50, 1)), min_symbol=-2), -2), (Categorical.fit([9] * 50), 9)):
        enc = RangeEncoder()
        enc.encode(np.full(50, value), model)
        assert enc.to_bytes() == b"" and enc.ideal_bits == 0
        assert np.array_equal(decode(b"", model, 50), np.full(50, value))
    assert Categorical.fit([9] * 50).counts.size == 1


def test_symbols_a_model_cannot_code_raise():
    cat = Categorical.from_counts([3, 0, 5], min_symbol=10)
    for bad in ([9], [13], [11], [2**40], [1.0]):
        with pytest.raises(ValueError):
            RangeEncoder().encode(np.array(bad), cat)
    with pytest.raises(ValueError):
        encode([0, 6], QuantizedLaplace(-5, 5, 0.0, 1.0))
    table = np.array([[0.5, 0.0, 0.5], [0.2, 0.3, 0.5]])
    with pytest.raises(ValueError, match="probability zero"):
        encode([1, 1], TableModel(table))
    with pytest.raises(ValueError):
        encode([0, 3], TableModel(table))
    with pytest.raises(ValueError):
        encode([0, 1, 2], TableModel(table))            # wrong count
    for bad_table in (-table, table * np.nan, np.zeros((2, 3))):
        with pytest.raises(ValueError):
            encode([0, 2], TableModel(bad_table))
    with pytest.raises(ValueError):
        QuantizedLaplace(-5, 5, 0.0, 0.0)
    with pytest.raises(ValueError):
        QuantizedGaussian(-5, 5, np.nan, 1.0)
    with pytest.raises(ValueError):
        QuantizedLaplace(5, -5, 0.0, 1.0)
    with pytest.raises(ValueError):
        Categorical.from_counts([0, 0])


def test_zero_entries_in_tables_still_decode_consistently():
    """constriction keeps a 2^-24 floor on zero entries: other symbols of the row still round-trip."""
    rng = np.random.default_rng(2)
    probs = rng.random((500, 6))
    probs[:, [0, 3]] = 0
    symbols = _sample_rows(probs, rng)
    assert np.array_equal(decode(encode(symbols, TableModel(probs)), TableModel(probs), 500), symbols)


@pytest.mark.filterwarnings("ignore:.*torch.jit.script:FutureWarning")
def test_cdf_tables_from_a_real_entropy_bottleneck():
    from compressai.entropy_models import EntropyBottleneck

    torch.manual_seed(0)
    eb = EntropyBottleneck(4)
    eb.update(force=True)
    x = torch.randn(2, 4, 8, 8) * 2
    x[0, 0, 0, 0], x[1, 3, 7, 7], x[0, 2, 5, 1] = 5000.0, -1e6, 40.0    # far outside the tables: escapes
    with torch.no_grad():
        symbols = eb.quantize(x, "symbols", eb._get_medians()).numpy()
        indexes = eb._build_indexes(x.size()).numpy()
        strings = eb.compress(x)
    model = CdfTableModel(eb._quantized_cdf.numpy(), eb._cdf_length.numpy(), eb._offset.numpy(), indexes)
    enc = RangeEncoder()
    enc.encode(symbols, model)
    data = enc.to_bytes()
    assert np.array_equal(decode(data, model, symbols.size), symbols.reshape(-1))
    # same model, different coder: the rate matches CompressAI's rANS closely
    theirs = sum(len(s) for s in strings)
    assert abs(len(data) - theirs) <= 0.05 * theirs + 16
    assert enc.ideal_bits <= enc.num_bits


def test_cdf_escapes_cover_all_int32_values():
    rng = np.random.default_rng(3)
    cdf, length, offset = _synthetic_cdf_tables(rng, channels=2)
    symbols = np.array([I32.min, I32.max, 0, -1, 1, I32.min + 1, 2**16, -(2**16), 2**20 + 3], np.int32)
    idx = np.arange(symbols.size) % 2
    model = CdfTableModel(cdf, length, offset, idx)
    enc = RangeEncoder()
    enc.encode(symbols, model)
    assert np.array_equal(decode(enc.to_bytes(), model, symbols.size), symbols)
    assert abs(enc.num_bits - enc.ideal_bits) <= 64


def test_table_model_step_by_step_like_the_pc_codec():
    """D steps of B symbols, each step's tables depending on the symbols decoded so far."""
    rng = np.random.default_rng(4)
    steps, batch, k = 12, 64, 32
    weights = rng.normal(size=(k, k))

    def tables(prev: np.ndarray) -> np.ndarray:
        logits = weights[prev] / 2
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    enc, prev, truth = RangeEncoder(), np.zeros(batch, np.int64), []
    for _ in range(steps):
        probs = tables(prev)
        sym = _sample_rows(probs, rng)
        enc.encode(sym, TableModel(probs))
        truth.append(sym)
        prev = sym
    dec, prev = RangeDecoder(enc.to_bytes()), np.zeros(batch, np.int64)
    for step in range(steps):
        sym = dec.decode(TableModel(tables(prev)), batch)
        assert np.array_equal(sym, truth[step])
        prev = sym


def test_categorical_serialisation_is_compact_and_lossless():
    rng = np.random.default_rng(5)
    symbols = np.clip(np.round(rng.laplace(0, 18, 100_000)), -127, 127).astype(np.int32)
    fitted = Categorical.fit(symbols)
    exact = Categorical.fit(symbols, mantissa_bits=60)
    varints = ByteWriter()
    for c in exact.counts.tolist():
        varints.varint(c)
    assert len(fitted.to_bytes()) < 0.5 * len(varints.getvalue())
    # rounding the counts costs < 0.05% of the payload, far less than the table bytes it saves
    assert fitted.ideal_bits(symbols) < 1.0005 * exact.ideal_bits(symbols)
    for model in (fitted, exact, Categorical.from_counts([1, 0, 2**40 + 1, 3], min_symbol=-(2**31))):
        back = Categorical.from_bytes(model.to_bytes())
        assert np.array_equal(back.counts, model.counts) and back.min_symbol == model.min_symbol


def test_parametric_fit_finds_a_good_scale():
    rng = np.random.default_rng(6)
    symbols = np.round(rng.laplace(5, 7, 20_000)).astype(np.int32)
    lap = QuantizedLaplace.fit(symbols)
    assert abs(float(lap.loc) - 5) <= 1 and 5 < float(lap.scale) < 9
    gauss = QuantizedGaussian.fit(np.round(rng.normal(-3, 4, 20_000)).astype(int))
    assert abs(float(gauss.mean) + 3) < 0.5 and 3 < float(gauss.std) < 5


def test_decoder_rejects_partial_words():
    with pytest.raises(BitstreamError):
        RangeDecoder(b"\x00" * 7)


@pytest.mark.parametrize("name,model,symbols", CASES, ids=[c[0] for c in CASES])
def test_garbage_bytes_decode_within_support_or_raise(name, model, symbols):
    rng = np.random.default_rng(7)
    lo, hi = np.min(symbols), np.max(symbols)
    if isinstance(model, Categorical):
        lo, hi = model.min_symbol, model.max_symbol
    for size in (0, 4, 8, 64, 400):
        garbage = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        try:
            out = decode(garbage, model, np.asarray(symbols).size)
        except BitstreamError:
            continue
        assert out.dtype == np.int32 and out.size == np.asarray(symbols).size
        if not isinstance(model, CdfTableModel):             # escapes may decode any int32
            assert out.min() >= min(lo, -64) and out.max() <= max(hi, 255)


@pytest.mark.parametrize("name,model,symbols", CASES, ids=[c[0] for c in CASES])
def test_model_parameters_reject_corruption(name, model, symbols):
    data = model.to_bytes()
    for cut in sorted(set(range(min(len(data), 48))) | set(np.linspace(0, len(data) - 1, 24).astype(int))):
        with pytest.raises(BitstreamError):
            type(model).from_bytes(data[:cut])
    with pytest.raises(BitstreamError):
        type(model).from_bytes(data + b"\x00")
    rng = np.random.default_rng(8)
    for _ in range(60):
        bad = bytearray(data)
        bad[rng.integers(len(bad))] ^= 1 << rng.integers(8)
        try:
            type(model).from_bytes(bytes(bad))
        except BitstreamError:
            pass


def test_model_byte_limit_is_enforced():
    model = TableModel(np.ones((100, 4)))
    with pytest.raises(BitstreamError):
        TableModel.from_bytes(ByteReader(model.to_bytes()), max_elements=399)
    assert TableModel.from_bytes(ByteReader(model.to_bytes()), max_elements=400).n == 100
