"""HCLT structure learning and the circuit: MI, Chow-Liu tree, balanced tree, exact likelihood, EM."""
import itertools
import math

import numpy as np
import pytest
import torch

from codec.errors import UserError
from codec.lossless.pc import circuit, hclt


def _sample_tree(parent, n, levels, noise, rng):
    """Samples from a Markov tree: root uniform, child = parent's value, replaced by a uniform draw w.p. noise."""
    order = hclt.preorder(parent)
    x = np.zeros((n, len(parent)), dtype=np.int64)
    for v in order:
        p = parent[v]
        fresh = rng.integers(0, levels, n)
        x[:, v] = fresh if p < 0 else np.where(rng.random(n) < noise, fresh, x[:, p])
    return x


def _edges(parent):
    return {tuple(sorted((int(v), int(p)))) for v, p in enumerate(parent) if p >= 0}


def test_chow_liu_recovers_a_known_tree():
    rng = np.random.default_rng(0)
    true_parent = np.array([-1, 0, 0, 1, 1, 2, 5, 6, 3, 0])         # a branching tree over 10 variables
    x = _sample_tree(true_parent, 3000, 16, noise=0.3, rng=rng) * 16    # 8-bit values, 16 levels
    learned = hclt.learn_structure(x.astype(np.uint8))
    assert _edges(learned) == _edges(true_parent)
    hclt.check_tree(learned)


def test_mutual_information_matches_a_direct_count():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 4, (500, 5)) * 64
    x[:, 3] = x[:, 1]                                                  # identical pair: MI = H(X1)
    x[:, 0] = 0                                                        # a constant pixel: level columns unused
    mi = hclt.pairwise_mutual_information(x.astype(np.uint8), levels=4, pseudocount=0.0, chunk=2)
    q = x // 64
    for i, j in [(1, 3), (2, 4), (0, 2)]:
        joint = np.zeros((4, 4))
        np.add.at(joint, (q[:, i], q[:, j]), 1)
        joint /= len(q)
        pi, pj = joint.sum(1), joint.sum(0)
        nz = joint > 0
        direct = np.sum(joint[nz] * np.log(joint[nz] / np.outer(pi, pj)[nz]))
        assert mi[i, j] == pytest.approx(direct, abs=1e-9)
    assert np.array_equal(mi, mi.T)


def test_balanced_tree_is_shallow_and_orientation_is_valid():
    rng = np.random.default_rng(2)
    d = 300
    w = rng.random((d, d))
    edges = hclt.maximum_spanning_tree((w + w.T) / 2)
    balanced = hclt.balanced_tree(d, edges)
    hclt.check_tree(balanced)
    assert hclt.depths(balanced).max() <= math.floor(math.log2(d))
    centred = hclt.orient(d, edges, hclt.tree_centre(d, edges))
    assert _edges(centred) == {tuple(sorted(e)) for e in edges}
    order = hclt.preorder(centred)
    seen = np.zeros(d, bool)
    for v in order:                                                    # parents before children
        assert centred[v] < 0 or seen[centred[v]]
        seen[v] = True


def test_check_tree_refuses_cycles_and_two_roots():
    with pytest.raises(UserError):
        hclt.check_tree(np.array([-1, 2, 1]))
    with pytest.raises(UserError):
        hclt.check_tree(np.array([-1, -1, 0]))


def test_log_likelihood_matches_brute_force_enumeration():
    parent = np.array([1, -1, 1, 2])
    model = circuit.HCLT(parent, latents=2, num_cats=3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in (model.log_root, model.log_edge, model.log_leaf):
            v = torch.rand(p.shape, generator=g) + 0.1
            p.copy_((v / v.sum(-1, keepdim=True)).log())
    x = torch.tensor([[0, 1, 2, 1], [2, 2, 0, 0], [1, 1, 1, 1]])
    ll = model.log_likelihood(x)
    root, edge, leaf = model.log_root.exp(), model.log_edge.exp(), model.log_leaf.exp()
    for b in range(len(x)):
        total = 0.0
        for z in itertools.product(range(2), repeat=4):
            p = root[z[1]] * edge[0, z[1], z[0]] * edge[2, z[1], z[2]] * edge[3, z[2], z[3]]
            for i in range(4):
                p = p * leaf[i, z[i], x[b, i]]
            total += float(p)
        assert float(ll[b]) == pytest.approx(math.log(total), abs=1e-5)


def _digits():
    from sklearn.datasets import load_digits
    return load_digits().images.reshape(-1, 64).astype(np.uint8)


def test_em_increases_the_training_likelihood():
    x = _digits()[:600]
    cfg = circuit.TrainConfig(latents=4, epochs=4, full_epochs=3, batch_size=200, pseudocount=0.01,
                              full_pseudocount=0.01, smooth_mass=0.0)
    model, history = circuit.train(x, cfg, torch.device("cpu"))
    assert history[-1] > history[0] + 1.0                              # nats per image
    full = history[cfg.epochs:]
    assert all(b > a for a, b in zip(full, full[1:]))                  # full-batch EM is monotone
    final = float(model.log_likelihood(torch.from_numpy(x)).mean())
    assert final > history[-1]                                         # the last M-step improved it again


def test_expected_counts_are_flows():
    """The gradient trick gives counts: every pixel's leaf counts sum to the batch size."""
    x = torch.from_numpy(_digits()[:50])
    model = circuit.HCLT(hclt.learn_structure(x.numpy()), latents=3)
    model.init_params(x, torch.Generator().manual_seed(0))
    root, edge, leaf, _ = model.expected_counts(x)
    assert float(root.sum()) == pytest.approx(50, rel=1e-4)
    assert torch.allclose(leaf.sum((1, 2)), torch.full((64,), 50.0), rtol=1e-4)
    non_root = [i for i in range(64) if i != model.root]
    assert torch.allclose(edge[non_root].sum((1, 2)), torch.full((63,), 50.0), rtol=1e-4)


def test_shift_images_translates_each_image_with_zero_fill():
    h, w, s = 7, 9, 2
    x = torch.zeros(400, h * w, dtype=torch.long)
    x[:, 3 * w + 4] = 200                                              # one bright pixel, away from the border
    x[:, 0] = 50                                                       # one in the corner: may leave the frame
    out = circuit.shift_images(x, (h, w, 1), s, torch.Generator().manual_seed(0)).reshape(400, h, w)
    seen = set()
    for img in out:
        (r,), (c,) = np.nonzero(img.numpy() == 200)
        dy, dx = r - 3, c - 4
        assert abs(dy) <= s and abs(dx) <= s
        seen.add((dy, dx))
        corner = img.numpy() == 50                                     # the corner pixel moved by the same amount
        assert corner.sum() == (dy >= 0 and dx >= 0) and (not corner.any() or corner[dy, dx])
        assert set(np.unique(img.numpy())) <= {0, 50, 200}             # the uncovered border is filled with 0
    assert len(seen) == (2 * s + 1) ** 2                               # every offset is drawn


def test_holdout_keeps_the_best_epoch():
    x = _digits()[:400] * 15                   # 100 training images, 300 held out
    scores = []
    # near-plain full-batch EM after the mini-batch epochs overfits 100 images: the held-out score gets worse
    cfg = circuit.TrainConfig(latents=16, epochs=4, full_epochs=4, batch_size=25, step_start=0.8, step_end=0.5,
                              pseudocount=0.01, full_pseudocount=1e-6, smooth_mass=0.0, holdout=300)
    model, history = circuit.train(x, cfg, torch.device("cpu"), log=lambda e, ll, sc: scores.append(sc["holdout"]))
    assert len(scores) == 8 and model.best_epoch == int(np.argmin(scores)) < 7
    g = torch.Generator().manual_seed(cfg.seed)                        # train()'s split: the shuffle's last 300
    held = torch.from_numpy(x)[torch.randperm(400, generator=g)][-300:]
    assert circuit._bits_per_dim_float(model, held) == pytest.approx(min(scores), abs=1e-6)
    with pytest.raises(UserError):
        circuit.train(x, circuit.TrainConfig(latents=2, epochs=1, holdout=400), torch.device("cpu"))
    with pytest.raises(UserError):
        circuit.train(x, circuit.TrainConfig(latents=2, epochs=1, shift=1), torch.device("cpu"))


def test_training_continues_from_a_model():
    x = _digits()[:300] * 15
    first, _ = circuit.train(x, circuit.TrainConfig(latents=4, epochs=2, batch_size=100), torch.device("cpu"))
    # a zero step leaves every parameter where it was: the continuation starts exactly from `first`
    still, _ = circuit.train(x, circuit.TrainConfig(latents=9, epochs=1, batch_size=100, step_start=0.0,
                                                    step_end=0.0, seed=5), torch.device("cpu"), init=first)
    assert np.array_equal(still.tree, first.tree) and still.latents == 4
    for a, b in zip(still.parameters(), first.parameters()):
        assert torch.allclose(a, b, atol=1e-5)
    more, history = circuit.train(x, circuit.TrainConfig(epochs=2, batch_size=100, step_start=0.5, step_end=0.5),
                                  torch.device("cpu"), init=first)
    xt = torch.from_numpy(x)
    assert float(more.log_likelihood(xt).mean()) > float(first.log_likelihood(xt).mean())
    with pytest.raises(UserError):
        circuit.train(x[:, :10], circuit.TrainConfig(epochs=1), torch.device("cpu"), init=first)


def test_mixture_is_one_hclt_whose_likelihood_is_the_weighted_sum():
    x = _digits()[:300] * 15
    xt = torch.from_numpy(x)
    a, _ = circuit.train(x, circuit.TrainConfig(latents=3, epochs=2, batch_size=100), torch.device("cpu"))
    # b: continued from a (same tree) with other settings, so the two differ
    b, _ = circuit.train(x, circuit.TrainConfig(epochs=2, batch_size=50, shift=1, seed=3), torch.device("cpu"),
                         init=a, shape=(8, 8, 1))
    mix = circuit.mixture([a, b], [0.3, 0.7])
    assert mix.latents == 6 and np.array_equal(mix.tree, a.tree)
    want = torch.logaddexp(a.log_likelihood(xt) + math.log(0.3), b.log_likelihood(xt) + math.log(0.7))
    assert torch.allclose(mix.log_likelihood(xt), want, atol=1e-3)
    equal = circuit.mixture([a, b])
    want = torch.logaddexp(a.log_likelihood(xt), b.log_likelihood(xt)) - math.log(2)
    assert torch.allclose(equal.log_likelihood(xt), want, atol=1e-3)
    other, _ = circuit.train(x[:, ::-1].copy(), circuit.TrainConfig(latents=3, epochs=1), torch.device("cpu"))
    with pytest.raises(UserError, match="share their tree"):
        circuit.mixture([a, other])
    with pytest.raises(UserError, match="positive"):
        circuit.mixture([a, b], [1.0, 0.0])
    with pytest.raises(UserError, match="at least two"):
        circuit.mixture([a])


def test_training_on_a_given_tree_starts_fresh():
    x = _digits()[:300] * 15
    first, _ = circuit.train(x, circuit.TrainConfig(latents=3, epochs=2, batch_size=100), torch.device("cpu"))
    other, _ = circuit.train(x, circuit.TrainConfig(latents=5, epochs=2, batch_size=100, seed=9), torch.device("cpu"),
                             tree=first.tree)
    assert np.array_equal(other.tree, first.tree) and other.latents == 5
    assert circuit.mixture([first, other]).latents == 8                 # so the two can be mixed
    same, _ = circuit.train(x, circuit.TrainConfig(latents=3, epochs=2, batch_size=100, seed=9), torch.device("cpu"),
                            tree=first.tree)
    assert not torch.allclose(same.log_leaf, first.log_leaf)            # fresh parameters, not first's
    with pytest.raises(UserError, match="not both"):
        circuit.train(x, circuit.TrainConfig(epochs=1), torch.device("cpu"), init=first, tree=first.tree)
    with pytest.raises(UserError, match="pixels"):
        circuit.train(x[:, :10], circuit.TrainConfig(epochs=1), torch.device("cpu"), tree=first.tree)
