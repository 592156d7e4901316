"""benchmarks.mirror_images: the mirrored training set of a mixture part (docs/PC.md, part f9)."""
import numpy as np

from benchmarks.mirror_images import main, mirrored


def test_half_the_images_are_mirrored_by_the_seed_and_the_rest_kept(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (400, 5, 7, 1), dtype=np.uint8)
    out = mirrored(x, seed=3)
    flipped = np.array([not np.array_equal(a, b) for a, b in zip(out, x)])
    assert np.array_equal(out[flipped], x[flipped][:, :, ::-1]) and np.array_equal(out[~flipped], x[~flipped])
    assert 150 < flipped.sum() < 250
    assert np.array_equal(mirrored(x, seed=3), out) and not np.array_equal(mirrored(x, seed=4), out)


def test_the_command_writes_an_npy_of_the_input_shape(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (20, 4, 6), dtype=np.uint8)
    np.save(tmp_path / "in.npy", x)
    main([str(tmp_path / "in.npy"), str(tmp_path / "out.npy"), "--seed", "3"])
    y = np.load(tmp_path / "out.npy")
    assert y.shape == x.shape and y.dtype == np.uint8
    assert np.array_equal(y, mirrored(x[..., None], 3)[..., 0])
