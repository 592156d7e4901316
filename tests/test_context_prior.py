"""The student's context prior and trimmed streams: exact round trips, fewer bytes where the channels are
correlated, safe loading, and version-1 files (whole 32-bit words) still decode."""
import numpy as np
import pytest
import torch

from bitstream.coder import Categorical, RangeDecoder, decode, encode, trim_stream, untrim_stream
from bitstream.container import Reader, Writer
from bitstream.serial import ByteWriter
from codec.errors import UserError
from codec.features import model_file
from codec.features import train as T
from codec.features.codec import LatentCoder, StudentCodec
from codec.features.options import StudentDecodeOptions
from codec.features.context_prior import ContextPrior, legacy_parents
from codec.features.data import load_dataset, split_holdout

from tests.students import train_tiny_models


@pytest.fixture(scope="module")
def student_file(tmp_path_factory):
    return train_tiny_models(tmp_path_factory.mktemp("ctx"), {"student": 0.3}) / "student.safetensors"


def correlated_latents(n: int, shape=(4, 4, 4), seed: int = 0) -> np.ndarray:
    """Latents whose channels repeat one another and whose columns repeat their left neighbour, plus noise: the
    structure a context prior should find and a factorised prior cannot."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    base = rng.integers(-3, 4, size=(n, 1, h, 1))
    s = np.repeat(np.repeat(base, c, axis=1), w, axis=3)
    flip = rng.random(s.shape) < 0.1
    return np.where(flip, rng.integers(-3, 4, size=s.shape), s).astype(np.int32)


def test_trimmed_streams_decode_the_same_and_are_shorter_on_average():
    rng = np.random.default_rng(1)
    model = Categorical.from_counts([5, 3, 2, 1])
    saved = []
    for n in rng.integers(1, 200, size=100):
        symbols = rng.integers(0, 4, size=n).astype(np.int32)
        whole = encode(symbols, model)
        short = trim_stream(whole, lambda words: np.array_equal(decode(words, model, n), symbols))
        assert 1 <= len(short) <= len(whole)
        assert np.array_equal(RangeDecoder(untrim_stream(short)).decode(model, n), symbols)
        saved.append(len(whole) - len(short))
    assert np.mean(saved) > 0.5 and max(saved) <= 3


def test_context_prior_codes_correlated_latents_smaller_and_round_trips_escapes(student_file):
    student, _ = model_file.load_student(str(student_file))
    train, test = correlated_latents(2000), correlated_latents(50, seed=1)
    factorised = LatentCoder(student)
    student.context_prior = ContextPrior.fit(train)
    in_context = LatentCoder(student)
    for s in test:
        assert np.array_equal(in_context.decode(in_context.encode(s)), s)
    assert sum(len(in_context.encode(s)) for s in test) < 0.7 * sum(len(factorised.encode(s)) for s in test)
    wild = test[0].copy()
    wild[0, 0, 0], wild[1, 2, 3], wild[3, 3, 0] = 1000, -70000, 2**30        # beyond the tables: escaped
    assert np.array_equal(in_context.decode(in_context.encode(wild)), wild)


def test_student_file_keeps_its_context_prior_and_refuses_damaged_tables(student_file, tmp_path):
    student, model_id = model_file.load_student(str(student_file))
    student.context_prior = ContextPrior.fit(correlated_latents(500))
    path = tmp_path / "ctx.safetensors"
    new_id = model_file.save_student(path, student)
    again, loaded_id = model_file.load_student(str(path))
    assert loaded_id == new_id != model_id
    assert np.array_equal(again.context_prior.counts, student.context_prior.counts)
    assert list(again.context_prior.order) == list(student.context_prior.order)
    assert np.array_equal(again.context_prior.parents, student.context_prior.parents)
    mf = model_file.load(path)
    order = student.context_prior.order
    late = torch.tensor(np.full((4, 4, 3), [int(order[-1]), 0, 0]), dtype=torch.int32)     # the last-coded channel
    for key, bad in [("context_prior.counts", torch.zeros(4, student.context_prior.contexts_per_channel, 3,
                                                          dtype=torch.int32)),
                     ("context_prior.order", torch.tensor([0, 0, 1, 2], dtype=torch.int32)),
                     ("context_prior.parents", late),
                     ("context_prior.radius", torch.tensor([9], dtype=torch.int32))]:
        model_file.save(tmp_path / "bad.safetensors", "student", mf.config, {**mf.tensors, key: bad})
        with pytest.raises(UserError, match="context prior"):
            model_file.load_student(str(tmp_path / "bad.safetensors"))


def test_training_keeps_the_context_prior_only_when_it_saves_bytes(student_file):
    student, _ = model_file.load_student(str(student_file))
    ds = load_dataset("digits", limit=500)
    train, held = split_holdout(ds, T.HOLDOUT, seed=0)
    record = T.fit_context_prior(student, train, held, torch.device("cpu"))
    assert record["context_prior"] == (record["heldout_bytes_in_context"] < record["heldout_bytes_factorised"])
    assert (student.context_prior is not None) == record["context_prior"]


def test_version_1_files_of_whole_words_still_decode(student_file, tmp_path):
    student, model_id = model_file.load_student(str(student_file))
    ds = load_dataset("digits", limit=6)
    symbols = student.to_symbols(student.encode(ds.images.float() / 255)).numpy()
    old = LatentCoder(student, trim=False)
    c, h, w = student.latent_shape
    writer = Writer("student", 1, {"kind": "features", "count": len(symbols), "latent_c": c, "latent_h": h,
                                   "latent_w": w, "model_id": model_id})
    body = ByteWriter()
    for s in symbols:
        stream = old.encode(s)
        assert len(stream) % 4 == 0
        body.bytes_(stream)
    writer.add_section("latents", body.getvalue())
    writer.write(tmp_path / "v1.ncb")
    codec, options = StudentCodec(), StudentDecodeOptions(model=str(student_file), device="cpu")
    out = codec.save(codec.open(Reader.from_path(tmp_path / "v1.ncb"), options), None, options)
    with torch.no_grad():
        expected = student.classify_symbols(torch.from_numpy(symbols)).argmax(1).tolist()
    assert [p["class"] for p in out["predictions"]] == expected


def test_fitting_picks_parents_that_carry_the_structure():
    """Channel 1 repeats channel 0 one row down, channel 2 is noise: channel 1's first parent is channel 0 at
    dy = -1 (if channel 0 is coded first), channel 2 gets none, and every parent is decoded before its child."""
    rng = np.random.default_rng(2)
    s = rng.integers(-2, 3, size=(3000, 3, 6, 6))
    s[:, 1, 1:] = s[:, 0, :-1]
    prior = ContextPrior.fit(s)
    first, second = (int(c) for c in prior.order[:2])
    used = [tuple(p) for p in prior.parents[second].tolist() if p[0] != -1]
    assert {first, second} == {0, 1}
    assert (first, -1 if second == 1 else 1, 0) in used
    assert all(p[0] == -1 for p in prior.parents[2].tolist())
    rebuilt = ContextPrior.from_tensors(prior.tensors(), 3)
    assert np.array_equal(rebuilt.contexts(s[:5]), prior.contexts(s[:5]))


def test_files_from_before_parent_lists_code_with_the_first_priors_fixed_parents(student_file):
    """Legacy tables (no parents tensor, radius 3): contexts are (channel before, the one before it, left)."""
    student, _ = model_file.load_student(str(student_file))
    c = student.latent_shape[0]
    order = np.array([2, 0, 3, 1])
    counts = np.random.default_rng(3).integers(1, 1000, size=(c, 8 ** 3, 6))
    prior = ContextPrior.from_tensors({"context_prior.order": torch.tensor(order, dtype=torch.int32),
                                       "context_prior.min_symbol": torch.tensor([-2], dtype=torch.int32),
                                       "context_prior.counts": torch.tensor(counts, dtype=torch.int32)}, c)
    assert prior.radius == 3 and np.array_equal(prior.parents, legacy_parents(order))
    s = correlated_latents(3)
    b = lambda v: np.clip(v, -3, 3) + 3
    expected = (b(s[:, 3]) * 8 + b(s[:, 0])) * 8 + np.concatenate([np.full((3, 4, 1), 7), b(s[:, 1, :, :-1])], 2)
    assert np.array_equal(prior.contexts(s)[:, 1], expected)            # channel 1, coded last
    student.context_prior = prior
    coder = LatentCoder(student)
    assert all(np.array_equal(coder.decode(coder.encode(x)), x) for x in s)
