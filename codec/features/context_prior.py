"""A context prior for the student's latent: each symbol's distribution given a few already-coded neighbours (its
"parents"), as integer count tables fitted on training latents.

The bottleneck's factorised prior codes every channel on its own, but the few channels a low-rate latent keeps are
correlated with each other and with their neighbours. Counting those contexts on the training set's latents codes
the same symbols in fewer bytes without retraining anything: the encoder and the decoder network are unchanged, only
the coding is. The tables are integers, so both ends build bit-identical models.

A parent is (channel, dy, dx): the value at (y + dy, x + dx) of a channel coded earlier, or of the symbol's own
channel one column to the left (dx = -1). Fitting picks each channel's parents greedily, the one that shortens a
held-back fifth of the training latents most each time (docs/STUDENT.md: 2.5% fewer bytes than the first prior's
fixed parents on CIFAR-10). Model files from before carry no parent list: theirs are the fixed ones (the two channels coded
just before, the left neighbour; radius 3), and they still decode.

Coding order: channels in `order`, each column by column (the rows of a column at once: their contexts are known),
so decoding takes channels x columns coder calls, not one per symbol. A symbol outside the tables' support takes
the escape entry; the factorised tables then code its value (and escape again if they must), so every int32 latent
round-trips.
"""
from __future__ import annotations

import numpy as np
import torch

RADIUS = 2                      # a parent's value is bucketed to [-2, 2]: farther values tell little more
MAX_RADIUS = 3                  # files from before the parent lists used 3
PARENTS = 4                     # parents per channel
UNUSED = (-1, 0, 0)             # an unused parent slot: always the "none" bucket
OFFSETS = ((0, 0), (0, -1), (0, 1), (-1, 0), (1, 0))     # where a parent may sit in a channel coded earlier
OWN_OFFSETS = ((0, -1), (-1, -1), (1, -1))              # ... and in the symbol's own channel (the column to the left)
MIN_GAIN = 0.005                # a parent joins only if it shortens the held-back latents by 0.5%
MAX_SUPPORT = 32                # table entries per sign; rarer values escape to the factorised tables
ROW_TOTAL = 1 << 16             # each table row's counts sum to about this
PRIOR_WEIGHT = 4.0              # pseudo-counts of the channel's marginal in every context (rare contexts)
KEYS = ("context_prior.order", "context_prior.min_symbol", "context_prior.counts")
PARENT_KEYS = ("context_prior.parents", "context_prior.radius")
ALL_KEYS = KEYS + PARENT_KEYS


def _entries(symbols: np.ndarray, min_symbol: int, escape: int) -> np.ndarray:
    """Table entry of each symbol: its offset in the support, or the escape."""
    t = symbols.astype(np.int64) - min_symbol
    return np.where((t < 0) | (t >= escape), escape, t)


def _entropy(entry: np.ndarray, k: int) -> float:
    p = np.bincount(entry.ravel(), minlength=k) / max(1, entry.size)
    return -float(np.sum(p[p > 0] * np.log2(p[p > 0])))


def _parent_values(decoded: np.ndarray, parent, radius: int) -> np.ndarray:
    """A parent's bucket at every position of latents [..., C, h, w]: "none" where it falls off the latent."""
    ch, dy, dx = (int(v) for v in parent)
    h, w = decoded.shape[-2:]
    out = np.full(decoded.shape[:-3] + (h, w), 2 * radius + 1, np.int64)
    if ch < 0:
        return out
    src = decoded[..., ch, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)]
    out[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)] = np.clip(src, -radius, radius) + radius
    return out


def _choose_parents(values: dict[tuple, np.ndarray], entry: np.ndarray, held: np.ndarray, k: int) -> np.ndarray:
    """Up to PARENTS of the candidates (their buckets in `values`) for one channel's entries [N, h, w], greedily:
    each time the one that codes the held-back latents in the fewest bits, while it saves at least MIN_GAIN."""
    buckets = 2 * RADIUS + 2
    fit_e, check_e = entry[~held].ravel(), entry[held].ravel()
    chosen, ctx = [], np.zeros(entry.shape, np.int64)
    best = _code_length(ctx[~held].ravel(), fit_e, ctx[held].ravel(), check_e, 1, k)
    while held.any() and len(chosen) < min(PARENTS, len(values)):      # (too few latents to hold any back: none)
        n = buckets ** (len(chosen) + 1)
        trials = []
        for p, v in values.items():
            if p not in chosen:
                trial = ctx * buckets + v
                trials.append((_code_length(trial[~held].ravel(), fit_e, trial[held].ravel(), check_e, n, k), p))
        bits, parent = min(trials)
        if bits > (1 - MIN_GAIN) * best:
            break
        chosen.append(parent)
        ctx, best = ctx * buckets + values[parent], bits
    # unused slots first: the chosen parents keep the place values they were scored with
    return np.array([UNUSED] * (PARENTS - len(chosen)) + chosen, np.int64).reshape(PARENTS, 3)


def _code_length(ctx: np.ndarray, entry: np.ndarray, check_ctx: np.ndarray, check_entry: np.ndarray,
                 contexts: int, k: int) -> float:
    """Bits to code the check symbols under tables counted on (ctx, entry): the fit's own smoothing."""
    counts = np.bincount(ctx * k + entry, minlength=contexts * k).reshape(contexts, k).astype(np.float64)
    p = _smoothed(counts[None])[0]
    return float(-np.log2(p[check_ctx, check_entry]).sum())


def _smoothed(counts: np.ndarray) -> np.ndarray:
    """Probabilities [C, contexts, k] from counts: every context pulled toward its channel's marginal."""
    marginal = counts.sum(1, keepdims=True) + 0.5
    marginal /= marginal.sum(2, keepdims=True)
    return (counts + PRIOR_WEIGHT * marginal) / (counts.sum(2, keepdims=True) + PRIOR_WEIGHT)


class ContextPrior:
    """p(symbol | its parents) for latents [C, h, w]."""

    def __init__(self, order: np.ndarray, parents: np.ndarray, radius: int, min_symbol: int, counts: np.ndarray,
                 legacy: bool = False):
        self.legacy = legacy                                 # a file's fixed parents from before parent lists
        self.order = np.asarray(order, np.int64)
        self.parents = np.asarray(parents, np.int64)        # [C, P, 3]: (channel or -1, dy, dx) per parent
        self.radius = int(radius)
        self.buckets = 2 * self.radius + 2                   # [-r, r] and one for "no such neighbour"
        self.min_symbol = int(min_symbol)
        self.counts = np.asarray(counts, np.int64)           # [C, buckets^P, K]; entry K-1 is the escape
        self.contexts_per_channel = self.buckets ** self.parents.shape[1]
        self.escape = self.counts.shape[2] - 1

    # ---- contexts
    def channel_contexts(self, decoded: np.ndarray, ch: int, own: bool | None = None) -> np.ndarray:
        """Context index of every position of channel ch [..., h, w] from the latents decoded so far. own=False
        sums only the parents in other channels (known before the channel starts), own=True only those in its own
        channel (known column by column); both parts add up to the context."""
        ctx = np.zeros(decoded.shape[:-3] + decoded.shape[-2:], np.int64)
        for parent in self.parents[ch]:
            ctx *= self.buckets
            if own is None or own == (parent[0] == ch):
                ctx += _parent_values(decoded, parent, self.radius)
            # a parent left out of this part still takes its place value: the other part adds it
        return ctx

    def contexts(self, symbols: np.ndarray) -> np.ndarray:
        """Context index of every symbol of latents [..., C, h, w] (only already-coded neighbours are used)."""
        return np.stack([self.channel_contexts(symbols, ch) for ch in range(symbols.shape[-3])], axis=-3)

    def entries(self, symbols: np.ndarray) -> np.ndarray:
        """Table entry of each symbol: its offset in the support, or the escape."""
        return _entries(symbols, self.min_symbol, self.escape)

    # ---- fitting and storage
    @classmethod
    def fit(cls, symbols: np.ndarray) -> "ContextPrior":
        """Count contexts on training latents [N, C, h, w] (int): channels coded most informative first, each
        channel's parents chosen greedily on a held-back fifth, then counted on all."""
        s = np.asarray(symbols, np.int64)
        c = s.shape[1]
        lo = int(max(s.min(), -MAX_SUPPORT)) if s.size else 0
        hi = int(min(s.max(), MAX_SUPPORT)) if s.size else 0
        k = hi - lo + 2
        entry = _entries(s, lo, k - 1)
        order = np.argsort([-_entropy(entry[:, ch], k) for ch in range(c)], kind="stable")
        held = np.arange(len(s)) % 5 == 4
        parents = np.full((c, PARENTS, 3), UNUSED, np.int64)
        for i, ch in enumerate(order):
            candidates = [(int(b), dy, dx) for b in order[:i] for dy, dx in OFFSETS] + \
                         [(int(ch), dy, dx) for dy, dx in OWN_OFFSETS]
            values = {p: _parent_values(s, p, RADIUS).astype(np.uint8) for p in candidates}   # 8x less memory
            parents[ch] = _choose_parents(values, entry[:, ch], held, k)
        n = (2 * RADIUS + 2) ** PARENTS
        prior = cls(order, parents, RADIUS, lo, np.ones((c, n, k), np.int64))
        ctx = prior.contexts(s)
        counts = np.stack([np.bincount(ctx[:, ch].ravel() * k + entry[:, ch].ravel(), minlength=n * k).reshape(n, k)
                           for ch in range(c)]).astype(np.float64)
        prior.counts = np.maximum(1, np.round(_smoothed(counts) * ROW_TOTAL)).astype(np.int64)
        return prior

    def tensors(self) -> dict[str, torch.Tensor]:
        """The model file's tensors (a legacy prior is written as it was read: without its implied parents)."""
        out = {KEYS[0]: torch.from_numpy(self.order.astype(np.int32)),
               KEYS[1]: torch.tensor([self.min_symbol], dtype=torch.int32),
               KEYS[2]: torch.from_numpy(self.counts.astype(np.int32))}
        if not self.legacy:
            out[PARENT_KEYS[0]] = torch.from_numpy(self.parents.astype(np.int32))
            out[PARENT_KEYS[1]] = torch.tensor([self.radius], dtype=torch.int32)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], channels: int) -> "ContextPrior":
        """From a model file's tensors; ValueError for tables that cannot be this latent's prior."""
        missing = [k for k in KEYS if k not in tensors]
        if missing:
            raise ValueError(f"context prior lacks {missing[0]}")
        order, lo, counts = (tensors[k].detach().cpu().numpy() for k in KEYS)
        if order.shape != (channels,) or sorted(order.tolist()) != list(range(channels)):
            raise ValueError(f"context prior's channel order is not a permutation of {channels} channels")
        if PARENT_KEYS[0] in tensors:
            if PARENT_KEYS[1] not in tensors:
                raise ValueError(f"context prior lacks {PARENT_KEYS[1]}")
            parents, radius = (tensors[k].detach().cpu().numpy().astype(np.int64) for k in PARENT_KEYS)
            if radius.shape != (1,) or not 1 <= int(radius[0]) <= MAX_RADIUS:
                raise ValueError("context prior's radius is out of range")
            radius = int(radius[0])
        else:                               # a file from before parent lists: the first prior's fixed parents
            parents, radius = legacy_parents(order), MAX_RADIUS
        check_parents(parents, order)
        if lo.shape != (1,) or not -MAX_SUPPORT <= int(lo[0]) <= MAX_SUPPORT:
            raise ValueError("context prior's support is out of range")
        contexts = (2 * radius + 2) ** parents.shape[1]
        if counts.ndim != 3 or counts.shape[:2] != (channels, contexts) or \
                not 2 <= counts.shape[2] <= 2 * MAX_SUPPORT + 2:
            raise ValueError(f"context prior's tables have shape {tuple(counts.shape)}")
        if counts.min() < 1 or counts.max() > 1 << 24:
            raise ValueError("context prior's counts must be in [1, 2^24]")
        return cls(order, parents, radius, int(lo[0]), counts, legacy=PARENT_KEYS[0] not in tensors)


def legacy_parents(order: np.ndarray) -> np.ndarray:
    """The first prior's parents: the two channels coded just before (same position), then the left neighbour."""
    parents = np.full((len(order), 3, 3), UNUSED, np.int64)
    for i, ch in enumerate(order):
        for slot, back in ((0, 1), (1, 2)):
            if i >= back:
                parents[ch, slot] = (order[i - back], 0, 0)
        parents[ch, 2] = (ch, 0, -1)
    return parents


def check_parents(parents: np.ndarray, order: np.ndarray) -> None:
    """ValueError unless every parent is decoded before its child: an earlier channel next to the position, or
    the child's own channel in the column to the left."""
    c = len(order)
    if parents.ndim != 3 or parents.shape[0] != c or parents.shape[2] != 3 or not 1 <= parents.shape[1] <= PARENTS:
        raise ValueError(f"context prior's parents have shape {tuple(parents.shape)}")
    rank = {int(ch): i for i, ch in enumerate(order)}
    for ch in range(c):
        for p, dy, dx in parents[ch].tolist():
            if p == -1:
                ok = dy == dx == 0
            elif p == ch:
                ok = dx == -1 and abs(dy) <= 1
            else:
                ok = 0 <= p < c and rank[p] < rank[ch] and abs(dy) <= 1 and abs(dx) <= 1
            if not ok:
                raise ValueError(f"context prior's parent ({p}, {dy}, {dx}) of channel {ch} is not decoded before it")
