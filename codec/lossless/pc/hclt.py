"""Structure learning for the hidden Chow-Liu tree (HCLT): pairwise mutual information, maximum spanning tree,
and the tree's orientation (rooted at its centre, or rebuilt as a balanced tree of depth O(log D)).

The tree is kept as a parent array (`parent[root] == -1`); the circuit and the coder derive everything else
(levels, coding order) from it with the helpers here.
"""
from __future__ import annotations

from collections import deque

import numpy as np
import torch

from codec.errors import UserError


def truncate(x: np.ndarray, levels: int = 16) -> np.ndarray:
    """Pixels -> `levels` categories over the data's range; for 8-bit data with levels=16 this is x // 16,
    the official recipe's 4-bit truncation."""
    top = int(x.max()) + 1 if x.size else 1
    return (x.astype(np.int64) * levels // top).astype(np.int64)


def pairwise_mutual_information(x: np.ndarray, levels: int = 16, pseudocount: float = 0.1,
                                chunk: int = 64) -> np.ndarray:
    """Exact mutual information (nats) between every pair of variables of x [N, D], on `levels`-category pixels.

    The pair histograms are one big one-hot Gram matrix, computed in chunks of variables so memory stays
    O(chunk * D * levels^2). Pair marginals are smoothed with `pseudocount` spread over the levels^2 cells.
    """
    q = truncate(np.asarray(x), levels)
    n, d = q.shape
    onehot = torch.zeros(n, d, levels, dtype=torch.float32)
    onehot.scatter_(2, torch.from_numpy(q)[:, :, None], 1.0)
    onehot = onehot.reshape(n, d * levels)
    z = n + pseudocount
    col_counts = onehot.sum(0)
    single = (col_counts.double() + pseudocount / levels) / z                            # [D*L]
    log_single = single.log().reshape(d, levels)
    # Only (pixel, level) columns that occur take part in the Gram matrix: on digit-like images most border
    # pixels never leave level 0, which saves about half the work.
    active = torch.nonzero(col_counts > 0).flatten()
    dense = onehot[:, active].contiguous()
    mi = np.zeros((d, d))
    for s in range(0, d, chunk):
        e = min(d, s + chunk)
        rows = torch.nonzero((active >= s * levels) & (active < e * levels)).flatten()
        counts = torch.zeros((e - s) * levels, d * levels, dtype=torch.float64)
        block = (dense[:, rows].T @ dense).double()                                      # [rows, active]
        counts[(active[rows] - s * levels)[:, None], active[None, :]] = block
        pair = ((counts + pseudocount / levels**2) / z).reshape(e - s, levels, d, levels)
        log_ratio = pair.log() - log_single[s:e, :, None, None] - log_single[None, None, :, :]
        terms = torch.where(pair > 0, pair * log_ratio, torch.zeros((), dtype=pair.dtype))  # 0 log 0 = 0
        mi[s:e] = terms.sum(dim=(1, 3)).numpy()
    np.fill_diagonal(mi, 0.0)
    return (mi + mi.T) / 2          # the same sums in two orders: make it exactly symmetric


def maximum_spanning_tree(weights: np.ndarray) -> list[tuple[int, int]]:
    """Prim's algorithm on a dense symmetric weight matrix; ties go to the lower index (deterministic)."""
    d = weights.shape[0]
    in_tree = np.zeros(d, dtype=bool)
    in_tree[0] = True
    best = weights[0].astype(np.float64).copy()
    best_from = np.zeros(d, dtype=np.int64)
    edges = []
    for _ in range(d - 1):
        cand = np.where(in_tree, -np.inf, best)
        v = int(np.argmax(cand))
        edges.append((int(best_from[v]), v))
        in_tree[v] = True
        better = weights[v] > best
        best = np.where(better, weights[v], best)
        best_from = np.where(better, v, best_from)
    return edges


def _adjacency(d: int, edges: list[tuple[int, int]]) -> list[list[int]]:
    adj: list[list[int]] = [[] for _ in range(d)]
    for a, b in edges:
        adj[a].append(b)
        adj[b].append(a)
    for a in adj:
        a.sort()
    return adj


def _bfs(adj: list[list[int]], start: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Distances and BFS parents from `start` (within `allowed` nodes when given); -1 where unreached."""
    d = len(adj)
    dist = np.full(d, -1, dtype=np.int64)
    par = np.full(d, -1, dtype=np.int64)
    dist[start] = 0
    queue = deque([start])
    while queue:
        u = queue.popleft()
        for w in adj[u]:
            if dist[w] < 0 and (allowed is None or allowed[w]):
                dist[w] = dist[u] + 1
                par[w] = u
                queue.append(w)
    return dist, par


def tree_centre(d: int, edges: list[tuple[int, int]]) -> int:
    """The node of minimum eccentricity: the middle of a longest path (two BFS passes)."""
    adj = _adjacency(d, edges)
    dist, _ = _bfs(adj, 0)
    a = int(np.argmax(dist))
    dist, par = _bfs(adj, a)
    b = int(np.argmax(dist))
    path = [b]
    while path[-1] != a:
        path.append(int(par[path[-1]]))
    return path[len(path) // 2]


def orient(d: int, edges: list[tuple[int, int]], root: int) -> np.ndarray:
    """Parent array of the tree hung from `root` (BFS)."""
    _, par = _bfs(_adjacency(d, edges), root)
    par[root] = -1
    return par


def balanced_tree(d: int, edges: list[tuple[int, int]]) -> np.ndarray:
    """Centroid decomposition of the spanning tree: the root is the node whose removal leaves the smallest
    largest component, each component left hangs from its own centroid, recursively. Depth <= log2(D) + 1;
    every subtree is a connected piece of the Chow-Liu tree, but the edges between centroids are not always
    Chow-Liu edges (the price of the shallow tree)."""
    adj = _adjacency(d, edges)
    removed = np.zeros(d, dtype=bool)
    parent = np.full(d, -1, dtype=np.int64)
    stack = [(0, -1)]                         # (any node of a component, parent centroid)
    while stack:
        start, up = stack.pop()
        allowed = ~removed
        dist, par = _bfs(adj, start, allowed)
        comp = np.flatnonzero(dist >= 0)
        order = comp[np.argsort(dist[comp], kind="stable")]
        size = np.ones(d, dtype=np.int64)
        heaviest_child = np.zeros(d, dtype=np.int64)
        for u in order[::-1]:                 # subtree sizes, leaves first
            p = par[u]
            if p >= 0:
                size[p] += size[u]
                heaviest_child[p] = max(heaviest_child[p], size[u])
        n = len(comp)
        worst = np.maximum(heaviest_child[comp], n - size[comp])
        c = int(comp[np.argmin(worst)])      # lowest index among the best (argmin takes the first)
        parent[c] = up
        removed[c] = True
        for w in adj[c]:
            if not removed[w]:
                stack.append((w, c))
    return parent


def check_tree(parent: np.ndarray) -> np.ndarray:
    """Validate a parent array (one root, every node reaches it, no cycle); returns it as int64."""
    parent = np.asarray(parent, dtype=np.int64)
    d = parent.shape[0]
    if parent.ndim != 1 or d == 0:
        raise UserError("HCLT tree: parent array must be 1-D and non-empty")
    if np.sum(parent == -1) != 1 or np.any(parent < -1) or np.any(parent >= d):
        raise UserError("HCLT tree: expected exactly one root and parents within range")
    depth = depths(parent)
    if np.any(depth < 0):
        raise UserError("HCLT tree: the parent array has a cycle")
    return parent


def depths(parent: np.ndarray) -> np.ndarray:
    """Depth of every node (root 0); -1 for nodes on a cycle or cut off from the root."""
    d = len(parent)
    children = children_lists(parent)
    depth = np.full(d, -1, dtype=np.int64)
    roots = np.flatnonzero(parent == -1)
    if len(roots) != 1:
        return depth
    depth[roots[0]] = 0
    queue = deque([int(roots[0])])
    while queue:
        u = queue.popleft()
        for c in children[u]:
            if depth[c] < 0:
                depth[c] = depth[u] + 1
                queue.append(c)
    return depth


def children_lists(parent: np.ndarray) -> list[list[int]]:
    children: list[list[int]] = [[] for _ in range(len(parent))]
    for v, p in enumerate(parent):
        if 0 <= p < len(parent):
            children[int(p)].append(v)
    return children


def preorder(parent: np.ndarray) -> np.ndarray:
    """Depth-first pre-order (children by index): the coding order. Every node comes after its parent, and a
    subtree is finished before the next sibling's starts, which is what lets the coder keep one message per
    open ancestor."""
    children = children_lists(parent)
    root = int(np.flatnonzero(parent == -1)[0])
    out = []
    stack = [root]
    while stack:
        u = stack.pop()
        out.append(u)
        stack.extend(reversed(children[u]))
    return np.asarray(out, dtype=np.int64)


def learn_structure(x: np.ndarray, balanced: bool = False, levels: int = 16,
                    pseudocount: float = 0.1) -> np.ndarray:
    """The HCLT's variable tree for images x [N, D] (uint8): Chow-Liu tree rooted at its centre, or its
    balanced (centroid) rebuild. Returns the parent array."""
    x = np.asarray(x)
    d = x.shape[1]
    if d == 1:
        return np.array([-1], dtype=np.int64)
    edges = maximum_spanning_tree(pairwise_mutual_information(x, levels, pseudocount))
    if balanced:
        return balanced_tree(d, edges)
    return orient(d, edges, tree_centre(d, edges))
