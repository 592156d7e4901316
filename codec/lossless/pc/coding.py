"""Exact conditionals p(x_v | x_<v) of an HCLT, pixel by pixel, in integer arithmetic that every device
reproduces bit for bit, and the encode/decode loops that feed them to the shared range coder.

Order and messages. Pixels are coded in the tree's depth-first pre-order. When pixel v comes, the pixels seen
so far are v's ancestors and the finished subtrees hanging off them, and nothing in v's own subtree. So

    p(x_v = k, x_<v) = sum_z alpha_v(z) leaf_v[z, k],     alpha_v = gamma_parent @ edge_v,

where gamma_u = alpha_u * leaf_u[:, x_u] * prod(messages of u's finished child subtrees) is kept for every
open ancestor u, and a finished subtree u sends its parent the upward message edge_u @ beta_u, with
beta_u = leaf_u[:, x_u] * prod(messages of u's children). Each pixel costs one M x M product down, one
M x 256 product for its table and, once its subtree is done, one M x M product up: the cached messages make the
whole image O(D M (M + 256)), below the O(log D |p|) per pixel of the paper's vtree scheme.

Determinism. Parameters are integers (probabilities times 2^28, at least 1) and every message is renormalised
to integers that are at least 1 and sum to at most 2^24, all held in float64. Every product and sum then stays
an integer below 2^53, which float64 represents exactly whatever the summation order, BLAS kernel, thread count,
batch size or device; renormalising is one correctly rounded division and a floor. So the encoder and the
decoder compute the same integer tables on any machine, and each table has every entry >= 1.

Versions. Version 1 floored messages to integers >= 0. A mixture model (circuit.mixture) broke it: when the
pixels seen so far favour one component and a finished subtree another, both messages can floor the other's
states to 0 and their product is all zeros (a 0/0 table). Version 2 floors at 2^23 and adds 1, so every
entry stays >= 1 and no row can vanish; version 1 streams still decode with version 1 arithmetic.
"""
from __future__ import annotations

from typing import Generator, Iterator

import numpy as np
import torch

from codec.device import cpu_thread_limit
from codec.lossless.pc import hclt

PARAM_BITS = 28         # parameter precision: p -> floor(p * 2^28) + 1
MESSAGE_BITS = 24       # messages sum to at most 2^24; 24 + 28 + 1 < 53 keeps every sum exact in float64
_MSG_SCALE = float(2 ** MESSAGE_BITS)
VERSION = 2             # the message arithmetic below; files record it as the pc codec's version
VERSIONS = (1, 2)       # the versions this coder reproduces (decoding older files)
MAX_LATENTS = 2 ** (MESSAGE_BITS - 1)


def _renorm(v: torch.Tensor) -> torch.Tensor:
    """Integers >= 1 summing to <= 2^23 + M <= 2^24 along the last axis, proportional to v (integer, sum < 2^53)
    up to the +1: a power-of-two scaling (exact), one correctly rounded division and a floor."""
    return torch.floor(v * (_MSG_SCALE / 2) / v.sum(-1, keepdim=True)) + 1.0


def _renorm_v1(v: torch.Tensor) -> torch.Tensor:
    """Version 1: integers >= 0 summing to <= 2^24 (a row can vanish under a mixture model, see above)."""
    return torch.floor(v * _MSG_SCALE / v.sum(-1, keepdim=True))


def quantize_params(p: np.ndarray) -> np.ndarray:
    """Probabilities (any float) -> integers floor(p * 2^28) + 1 as float64, computed in numpy on the CPU."""
    p = np.asarray(p, dtype=np.float64)
    return np.floor(np.clip(p, 0.0, 1.0) * float(2 ** PARAM_BITS)) + 1.0


class IntegerHCLT:
    """The coder's view of a model: the tree, the coding schedule and integer parameter tables on a device."""

    def __init__(self, parent: np.ndarray, root: np.ndarray, edge: np.ndarray, leaf: np.ndarray,
                 device: torch.device | str = "cpu", version: int = VERSION):
        if version not in VERSIONS:
            raise ValueError(f"pc coder version {version} is unknown (known: {VERSIONS})")
        if root.shape[0] > MAX_LATENTS:
            raise ValueError(f"{root.shape[0]} latent states: the coder's messages allow at most {MAX_LATENTS}")
        self.renorm = _renorm if version == 2 else _renorm_v1
        self.parent = hclt.check_tree(parent)
        self.num_vars = len(self.parent)
        self.latents = root.shape[0]
        self.num_cats = leaf.shape[2]
        self.device = torch.device(device)
        self.order = hclt.preorder(self.parent)
        # completions[t]: the nodes whose subtree is finished once the t-th pixel is coded, deepest first.
        position = np.empty(self.num_vars, dtype=np.int64)
        position[self.order] = np.arange(self.num_vars)
        last = position.copy()
        for v in self.order[::-1]:                     # children come after parents in pre-order
            p = self.parent[v]
            if p >= 0:
                last[p] = max(last[p], last[v])
        depth = hclt.depths(self.parent)
        self.has_children = np.zeros(self.num_vars, dtype=bool)
        self.has_children[self.parent[self.parent >= 0]] = True
        self.completions: list[list[int]] = [[] for _ in range(self.num_vars)]
        for u in np.argsort(-depth, kind="stable"):
            self.completions[last[u]].append(int(u))
        dev = self.device
        self.root_alpha = self.renorm(torch.from_numpy(quantize_params(root)).to(dev))      # [M]
        self.edge = torch.from_numpy(quantize_params(edge)).to(dev)                    # [D, M_parent, M_child]
        self.edge_t = self.edge.transpose(1, 2).contiguous()                            # [D, M_child, M_parent]
        self.leaf = torch.from_numpy(quantize_params(leaf)).to(dev)                     # [D, M, K]
        self.leaf_t = self.leaf.transpose(1, 2).contiguous()                            # [D, K, M]

    def walk(self, batch: int) -> Generator[tuple[int, np.ndarray], np.ndarray, None]:
        """Yields (pixel index, integer table [batch, K] as float64) in coding order; send back that pixel's
        values [batch] (the encoder sends what it has, the decoder what it decoded)."""
        dev, renorm = self.device, self.renorm
        gamma: dict[int, torch.Tensor] = {}
        beta: dict[int, torch.Tensor] = {}
        for t, v in enumerate(self.order):
            v = int(v)
            p = int(self.parent[v])
            if p < 0:
                alpha = self.root_alpha.expand(batch, self.latents)
            else:
                alpha = renorm(gamma[p] @ self.edge[v])
            table = alpha @ self.leaf[v]                                     # [B, K], entries in [1, 2^53)
            values = yield v, table.cpu().numpy()
            col = self.leaf_t[v][torch.as_tensor(np.asarray(values, dtype=np.int64), device=dev)]  # [B, M]
            if self.has_children[v]:                   # a leaf of the tree has no subtree to condition
                gamma[v] = renorm(alpha * col)
            beta[v] = renorm(col)
            for u in self.completions[t]:
                pu = int(self.parent[u])
                if pu >= 0:
                    msg = renorm(beta[u] @ self.edge_t[u])                    # sum over z_u of edge * beta
                    gamma[pu] = renorm(gamma[pu] * msg)
                    beta[pu] = renorm(beta[pu] * msg)
                gamma.pop(u, None)
                del beta[u]

    def tables(self, x: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """All conditional tables for known images x [B, D] (tests and diagnostics)."""
        x = np.asarray(x)
        walker = self.walk(len(x))
        v, table = next(walker)
        while True:
            yield v, table
            try:
                v, table = walker.send(x[:, v])
            except StopIteration:
                return


def ideal_bits(table: np.ndarray, symbols: np.ndarray) -> float:
    """-log2 of the table's probability of the symbols (before the coder's own 24-bit quantisation)."""
    rows = np.arange(len(symbols))
    return float(-np.sum(np.log2(table[rows, symbols] / table.sum(1))))


def coding_threads(device: torch.device):
    """The coding loop is thousands of small tensor ops: on a CPU one intra-op thread beats two (no OpenMP
    hand-offs per op, and no spinning when other jobs share the cores). The tables do not depend on it."""
    return cpu_thread_limit(device, limit=1)


def encode_images(model: IntegerHCLT, x: np.ndarray, encoder, table_model, chunk: int = 2000,
                  on_chunk=None) -> None:
    """Code images x [N, D] (uint8) into `encoder`, chunk after chunk, pixel by pixel within a chunk.

    `table_model(probs[B, K])` builds the coder's per-symbol model (bitstream.coder.TableModel).
    """
    with coding_threads(model.device):
        _encode_images(model, x, encoder, table_model, chunk, on_chunk)


def _encode_images(model, x, encoder, table_model, chunk, on_chunk) -> None:
    for s in range(0, len(x), chunk):
        xs = np.asarray(x[s:s + chunk])
        for v, table in model.tables(xs):
            encoder.encode(xs[:, v].astype(np.int32), table_model(table))
        if on_chunk:
            on_chunk(len(xs))


def decode_images(model: IntegerHCLT, decoder, count: int, table_model, chunk: int = 2000,
                  on_chunk=None) -> np.ndarray:
    """Inverse of encode_images: `count` images [count, D] uint8 from `decoder`."""
    with coding_threads(model.device):
        return _decode_images(model, decoder, count, table_model, chunk, on_chunk)


def _decode_images(model, decoder, count, table_model, chunk, on_chunk) -> np.ndarray:
    out = np.empty((count, model.num_vars), dtype=np.uint8)
    for s in range(0, count, chunk):
        b = min(chunk, count - s)
        walker = model.walk(b)
        v, table = next(walker)
        while True:
            sym = np.asarray(decoder.decode(table_model(table), b))
            out[s:s + b, v] = sym
            try:
                v, table = walker.send(sym)
            except StopIteration:
                break
        if on_chunk:
            on_chunk(b)
    return out
