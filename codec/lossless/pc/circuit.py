"""The HCLT as a tensorised circuit in PyTorch: exact log-likelihood and EM, on CPU or CUDA.

An HCLT over pixels X_1..X_D has one hidden categorical Z_i (M states) per pixel. The Z's follow the Chow-Liu
tree (Z_parent -> Z_child), and each Z_i emits its pixel through a 256-way categorical leaf:

    p(x) = sum_z root[z_r] * prod_{i != r} edge_i[z_parent(i), z_i] * prod_i leaf_i[z_i, x_i]

As a circuit: per pixel M input units, per tree node a product of the leaf with the children's sum units, and
an M-way sum unit per edge. The upward pass here evaluates it level by level (all nodes of one depth at once),
in log space with a per-message max shift, so nothing under- or overflows.

EM uses the classic identity: the gradient of the total log-likelihood with respect to a log-parameter is that
parameter's expected count (its "circuit flow"), so one autograd backward gives the E-step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from codec.errors import UserError
from codec.lossless.pc import hclt
from codec.progress import progress

NUM_CATS = 256


class HCLT(torch.nn.Module):
    """Parameters are kept normalised, as log-probabilities:

    log_root [M]; log_edge [D, M, M] (row = parent state, node i's row for the root is unused);
    log_leaf [D, M, 256].
    """

    def __init__(self, parent: np.ndarray, latents: int, num_cats: int = NUM_CATS):
        super().__init__()
        parent = hclt.check_tree(parent)
        d, m = len(parent), int(latents)
        self.num_vars, self.latents, self.num_cats = d, m, num_cats
        self.register_buffer("parent", torch.from_numpy(parent.copy()), persistent=False)
        self.root = int(np.flatnonzero(parent == -1)[0])
        self.log_root = torch.nn.Parameter(torch.full((m,), -math.log(m)), requires_grad=False)
        self.log_edge = torch.nn.Parameter(torch.full((d, m, m), -math.log(m)), requires_grad=False)
        self.log_leaf = torch.nn.Parameter(torch.full((d, m, num_cats), -math.log(num_cats)), requires_grad=False)
        # Variables regrouped level by level, deepest first and the root last, so that each level is one
        # contiguous block (torch.split: views forward, one concatenation backward).
        depth = hclt.depths(parent)
        self.depth = int(depth.max())
        blocks = [np.flatnonzero(depth == lev) for lev in range(self.depth, -1, -1)]
        perm = np.concatenate(blocks)
        slot = np.empty(d, dtype=np.int64)
        slot[perm] = np.arange(d)
        self._sizes = [len(b) for b in blocks]
        starts = np.cumsum([0] + self._sizes)
        # For level j's nodes: their parents' positions inside level j + 1's block.
        self._parent_pos = [torch.from_numpy(slot[parent[b]] - starts[j + 1]) for j, b in enumerate(blocks[:-1])]
        self.register_buffer("_perm", torch.from_numpy(perm), persistent=False)

    @property
    def tree(self) -> np.ndarray:
        return self.parent.cpu().numpy()

    def log_likelihood(self, x: torch.Tensor, params=None) -> torch.Tensor:
        """log p(x) in nats for x [B, D] (integers in [0, 256)); returns [B]."""
        log_root, log_edge, log_leaf = params if params is not None else (self.log_root, self.log_edge,
                                                                          self.log_leaf)
        perm = self._perm
        xp = x.long()[:, perm]
        b = xp.shape[0]
        leaf = log_leaf.transpose(1, 2)[perm[None, :], xp]             # [B, D, M]: log leaf_i[z, x_i]
        leaves = torch.split(leaf, self._sizes, dim=1)
        edges = torch.split(log_edge[perm[:-1]].exp(), self._sizes[:-1], dim=0)
        incoming = None
        for j, parent_pos in enumerate(self._parent_pos):
            lb = leaves[j] if incoming is None else leaves[j] + incoming     # log p(evidence below | z)
            shift = lb.max(-1, keepdim=True).values.detach()
            e = (lb - shift).exp().transpose(0, 1)                          # [n, B, M]
            msg = torch.bmm(e, edges[j].transpose(1, 2)).transpose(0, 1)    # [B, n, M_parent]
            msg = msg.clamp_min(torch.finfo(msg.dtype).tiny).log() + shift
            incoming = torch.zeros(b, self._sizes[j + 1], self.latents, dtype=msg.dtype, device=x.device)
            incoming = incoming.index_add(1, parent_pos.to(x.device), msg)
        lb = leaves[-1][:, 0] if incoming is None else leaves[-1][:, 0] + incoming[:, 0]
        return torch.logsumexp(lb + log_root, dim=-1)

    # ------------------------------------------------------------------ EM

    def expected_counts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """E-step on a batch: expected counts of (root state), (parent state, child state), (state, pixel value)
        summed over the batch, and the batch's total log-likelihood."""
        params = [p.detach().clone().requires_grad_(True) for p in (self.log_root, self.log_edge, self.log_leaf)]
        with torch.enable_grad():
            ll = self.log_likelihood(x, params).sum()
            grads = torch.autograd.grad(ll, params, allow_unused=True)   # one pixel: no edges are used
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        return grads[0], grads[1], grads[2], float(ll.detach())

    @torch.no_grad()
    def m_step(self, counts, step: float, pseudocount: float, smooth_mass: float = 0.0,
               smooth_sigma: float = 2.0) -> None:
        """theta <- (1 - step) theta + step * theta_new, row by row (stays normalised), where
        theta_new = (counts + pc/K) / (total + pc) for sums, and for the 256-way leaves also a data-shaped prior:
        `smooth_mass` pseudo-observations spread like the row's own counts blurred over neighbouring pixel
        values (a Gaussian of `smooth_sigma` levels). Pixel values are ordinal; a value never seen with a
        latent state in training should cost about what its neighbours cost, not what a uniform prior gives."""
        for param, c in zip((self.log_root, self.log_edge, self.log_leaf), counts):
            k = c.shape[-1]
            total = c.sum(-1, keepdim=True)
            num = c + pseudocount / k
            den = total + pseudocount
            if param is self.log_leaf and smooth_mass > 0:
                blurred = c @ _blur_matrix(k, smooth_sigma, c.device, c.dtype)
                num = num + smooth_mass * blurred / total.clamp_min(1e-12)
                den = den + smooth_mass * (total > 0)
            new = num / den
            if step >= 1.0:
                param.data.copy_(new.log())
            else:
                param.data.copy_(torch.log(param.data.exp().mul_(1.0 - step).add_(new, alpha=step)))

    @torch.no_grad()
    def init_params(self, x: torch.Tensor, generator: torch.Generator, perturbation: float = 0.4,
                    pseudocount: float = 1.0) -> None:
        """Mixture-style start: latent state m of every pixel leans towards the value of one random training
        image (the same image across pixels, so states are coherent along the tree); edges and root are
        uniform with a multiplicative perturbation that breaks the symmetry."""
        d, m, k = self.num_vars, self.latents, self.num_cats
        x = x.long().cpu()
        hist = torch.zeros(d, k, dtype=torch.float64)
        hist.scatter_add_(1, x.T.contiguous(), torch.ones(x.shape[1], x.shape[0], dtype=torch.float64))
        marginal = (hist + pseudocount / k) / (hist.sum(-1, keepdim=True) + pseudocount)
        pick = x[torch.randint(0, x.shape[0], (m,), generator=generator)]           # [M, D]
        values = torch.arange(k, dtype=torch.float64)
        bump = torch.exp(-0.5 * ((values[None, None, :] - pick.T[:, :, None].double()) / 8.0) ** 2)  # [D, M, K]
        bump = bump / bump.sum(-1, keepdim=True)
        leaf = 0.5 * marginal[:, None, :] + 0.5 * bump

        def noisy(shape):
            return 1.0 - perturbation / 2 + perturbation * torch.rand(shape, generator=generator, dtype=torch.float64)

        edge = noisy((d, m, m))
        root = noisy((m,))
        for param, v in ((self.log_root, root), (self.log_edge, edge), (self.log_leaf, leaf)):
            v = v / v.sum(-1, keepdim=True)
            param.data.copy_(v.log().to(param.dtype))


def mixture(models: list[HCLT], weights: list[float] | None = None) -> HCLT:
    """The mixture sum_k w_k p_k(x) of HCLTs over the same tree, as one HCLT: their latent states side by side
    (M = sum of the M_k), the root's states weighted by w_k, edges block-diagonal (a state never leads into
    another model's states), leaves as they were. A mixture of circuits is a circuit, so the coder codes it
    unchanged. Why: models that overfit their training images differently (other augmentation, seed or sample)
    code unseen images better together than each alone (an ensemble); equal weights need no held-out data."""
    if len(models) < 2:
        raise UserError("a mixture needs at least two models")
    first = models[0]
    for m in models[1:]:
        if not np.array_equal(m.tree, first.tree) or m.num_cats != first.num_cats:
            raise UserError("the models of a mixture must share their tree (continue them from one model with --init, "
                            "or train them with --tree-from)")
    weights = [1.0 / len(models)] * len(models) if weights is None else [float(w) for w in weights]
    if len(weights) != len(models) or not all(w > 0 and math.isfinite(w) for w in weights):
        raise UserError(f"mixture weights must be {len(models)} positive numbers, got {weights}")
    total = sum(weights)
    sizes = [m.latents for m in models]
    mix = HCLT(first.tree, sum(sizes), first.num_cats)
    edge = torch.zeros(first.num_vars, mix.latents, mix.latents, dtype=torch.float64)
    at = 0
    for m, size in zip(models, sizes):
        edge[:, at:at + size, at:at + size] = m.log_edge.detach().double().cpu().exp()
        at += size
    root = torch.cat([m.log_root.detach().double().cpu().exp() * (w / total) for m, w in zip(models, weights)])
    leaf = torch.cat([m.log_leaf.detach().double().cpu() for m in models], dim=1)
    with torch.no_grad():
        mix.log_root.copy_(root.clamp_min(1e-30).log().float())
        mix.log_edge.copy_(edge.clamp_min(1e-30).log().float())
        mix.log_leaf.copy_(leaf.float())
    return mix


_BLUR: dict = {}


def _blur_matrix(k: int, sigma: float, device, dtype) -> torch.Tensor:
    """[K, K]: row j spreads one count at value j over its neighbours (Gaussian, each row sums to 1)."""
    key = (k, sigma, str(device), dtype)
    if key not in _BLUR:
        v = torch.arange(k, dtype=torch.float64)
        w = torch.exp(-0.5 * ((v[None, :] - v[:, None]) / sigma) ** 2)
        _BLUR[key] = (w / w.sum(1, keepdim=True)).to(device=device, dtype=dtype)
    return _BLUR[key]


def shift_images(x: torch.Tensor, shape: tuple[int, int, int], max_shift: int,
                 generator: torch.Generator) -> torch.Tensor:
    """Each image of x [B, H*W*C] moved by its own random (dy, dx) in [-max_shift, max_shift]^2, the uncovered
    border filled with 0 (the background of MNIST-like data). A data augmentation for EM: a 10k-image set
    overfits the D x M x 256 leaves, and digits written a pixel further left are still digits."""
    h, w, c = shape
    b, s = x.shape[0], int(max_shift)
    padded = torch.nn.functional.pad(x.reshape(b, h, w, c), (0, 0, s, s, s, s))     # [B, H+2s, W+2s, C]
    dy, dx = torch.randint(0, 2 * s + 1, (2, b), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]              # [B, H, 1]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]              # [B, 1, W]
    return padded[torch.arange(b, device=x.device)[:, None, None], rows, cols].reshape(b, -1)


@dataclass
class TrainConfig:
    latents: int = 16
    epochs: int = 25                 # mini-batch EM epochs
    full_epochs: int = 0             # full-batch EM passes after them (they overfit 10k MNIST images: off)
    batch_size: int = 512
    step_start: float = 0.8          # damped step (1 - "param inertia"), decays linearly to step_end
    step_end: float = 0.05
    pseudocount: float = 0.1
    full_pseudocount: float = 0.1
    full_step: float = 1.0           # damped full-batch step (1.0: plain EM)
    smooth_mass: float = 1.0         # leaf prior: pseudo-observations shaped like the blurred counts
    smooth_sigma: float = 2.0
    shift: int = 0                   # augmentation: mini-batch images moved by up to this many pixels
    holdout: int = 0                 # training images kept out of EM to pick the best epoch (early stopping)
    balanced: bool = False
    seed: int = 0


def train(images: np.ndarray, cfg: TrainConfig, device: torch.device, log=None,
          shape: tuple[int, int, int] | None = None, valid: np.ndarray | None = None,
          init: HCLT | None = None, tree: np.ndarray | None = None) -> tuple[HCLT, list[float]]:
    """Structure from the images, then mini-batch EM with a decaying damped step, then full-batch EM.
    With `init` (a trained HCLT over the same pixels), EM continues from it: its tree and parameters are the
    start, and `cfg.latents`/`cfg.balanced` are ignored (a second, smaller-step phase of a long schedule).
    With `tree` (a parent array, e.g. another model's), EM starts from fresh parameters on that tree instead of
    learning one: an independent model that can join that one in a mixture.

    images: [N, D] uint8; `shape` (H, W, C) is needed for the shift augmentation. With `cfg.holdout` > 0 the
    last `holdout` images (after a seeded shuffle) are held out: each epoch's model is scored on them and the
    best epoch's parameters are kept. `valid` (images [V, D]) is scored each epoch too, for monitoring only.
    `log(epoch, train_ll, scores)` is called after each epoch, scores a dict of bits/dim.
    Returns the model (on the CPU) and the mean training log-likelihood (nats per image) measured during each
    epoch (before that epoch's last update).
    """
    if cfg.shift < 0:
        raise UserError(f"--shift must be >= 0, got {cfg.shift}")
    if cfg.shift and shape is None:
        raise UserError("shift augmentation needs the image shape")
    g = torch.Generator().manual_seed(cfg.seed)
    x_all = torch.from_numpy(np.ascontiguousarray(images)).long()
    held = None
    if cfg.holdout:
        if cfg.holdout < 0:
            raise UserError(f"--holdout must be >= 0, got {cfg.holdout}")
        if cfg.holdout >= len(x_all):
            raise UserError(f"--holdout {cfg.holdout} leaves no training images (there are {len(x_all)})")
        shuffled = x_all[torch.randperm(len(x_all), generator=g)]
        x_all, held = shuffled[:-cfg.holdout], shuffled[-cfg.holdout:]
    if tree is not None and init is not None:
        raise UserError("give a starting model or a tree, not both")
    if tree is not None and len(tree) != x_all.shape[1]:
        raise UserError(f"the tree has {len(tree)} pixels, the images {x_all.shape[1]}")
    if init is not None:
        if init.num_vars != x_all.shape[1]:
            raise UserError(f"the starting model has {init.num_vars} pixels, the images {x_all.shape[1]}")
        model = HCLT(init.tree, init.latents, init.num_cats)
        model.load_state_dict(init.state_dict())
    else:
        # The Chow-Liu tree from at most 5000 images, as the official recipe (its MI is O(N D^2 levels^2)).
        if tree is None:
            sub = x_all[torch.randperm(len(x_all), generator=g)[:5000]].numpy()
            tree = hclt.learn_structure(sub, balanced=cfg.balanced)
        model = HCLT(tree, cfg.latents)
        model.init_params(x_all, g)
    model.to(device)
    x_dev = x_all.to(device)
    n = len(x_all)
    history = []
    best = (math.inf, None)
    watch = {"holdout": held, "valid": None if valid is None else torch.from_numpy(np.ascontiguousarray(valid))}

    def end_of_epoch(epoch: int, ll: float) -> None:
        nonlocal best
        history.append(ll)
        scores = {"train": -ll / model.num_vars / math.log(2)}
        for name, xs in watch.items():
            if xs is not None:
                scores[name] = _bits_per_dim_float(model, xs.to(device))
        if held is not None and (best[1] is None or scores["holdout"] < best[0]):
            best = (scores["holdout"], [p.detach().clone() for p in model.parameters()], epoch)
        bar.update(1)
        bar.set_postfix({k: f"{v:.4f}" for k, v in scores.items()})
        if log:
            log(epoch, ll, scores)

    bar = progress(total=cfg.epochs + cfg.full_epochs, desc="EM", unit="epoch")
    for epoch in range(cfg.epochs):
        frac = epoch / max(1, cfg.epochs - 1)
        step = cfg.step_start + (cfg.step_end - cfg.step_start) * frac
        perm = torch.randperm(n, generator=g).to(device)
        ll_sum = 0.0
        for s in range(0, n, cfg.batch_size):
            batch = x_dev[perm[s:s + cfg.batch_size]]
            if cfg.shift:
                batch = shift_images(batch, shape, cfg.shift, g)
            *counts, ll = model.expected_counts(batch)
            ll_sum += ll
            model.m_step(counts, step, cfg.pseudocount, cfg.smooth_mass, cfg.smooth_sigma)
        end_of_epoch(epoch, ll_sum / n)
    for epoch in range(cfg.full_epochs):
        totals = None
        ll_sum = 0.0
        for s in range(0, n, cfg.batch_size):
            *counts, ll = model.expected_counts(x_dev[s:s + cfg.batch_size])
            ll_sum += ll
            totals = counts if totals is None else [a + b for a, b in zip(totals, counts)]
        model.m_step(totals, cfg.full_step, cfg.full_pseudocount, cfg.smooth_mass, cfg.smooth_sigma)
        end_of_epoch(cfg.epochs + epoch, ll_sum / n)
    bar.close()
    if held is not None:
        with torch.no_grad():
            for p, kept in zip(model.parameters(), best[1]):
                p.copy_(kept)
        model.best_epoch = best[2]
    return model.cpu(), history


@torch.no_grad()
def _bits_per_dim_float(model: HCLT, x: torch.Tensor, batch_size: int = 1000) -> float:
    """Mean -log2 p(x) per pixel with the model's own (float32) parameters: a cheap score during training."""
    total = sum(float(model.log_likelihood(x[s:s + batch_size]).sum()) for s in range(0, len(x), batch_size))
    return -total / (len(x) * model.num_vars * math.log(2))


@torch.no_grad()
def bits_per_dim(model: HCLT, images: np.ndarray, batch_size: int = 1000, device=None) -> float:
    """The model's ideal code length, -log2 p(x) per pixel, averaged over images [N, D] (float64 pass)."""
    device = device or torch.device("cpu")
    m64 = HCLT(model.tree, model.latents, model.num_cats)
    m64.load_state_dict(model.state_dict())
    m64 = m64.double().to(device)
    total = 0.0
    for s in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[s:s + batch_size])).to(device)
        total += float(m64.log_likelihood(x).sum())
    return -total / (len(images) * model.num_vars * math.log(2))
