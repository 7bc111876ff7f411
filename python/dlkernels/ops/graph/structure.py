"""Graph: a directed graph stored once as a CSR by target, with its transpose built on demand.

Messages flow edge_index[0] (source u) -> edge_index[1] (target v), as in PyG. Every graph op
reduces over the incoming edges of a target, so the edges are grouped by target (rows) in a
CSR: `indptr` (V+1,) int64 offsets and `col` (E,) the sources, with `perm` mapping each CSR
position back to the user's edge id (so edge_weight and per-edge outputs stay in the user's
edge order). The backward passes of sum/mean/sddmm reduce over the outgoing edges of a
source instead: the transpose (CSR by source) is built once, on first use, and cached.

A Graph may be built from host or device (CuPy, or torch CUDA through DLPack) indices: the
CSR is always built and kept on the host, once; the CUDA glue (ops/graph/cuda.py) copies it
to each device on first use and keeps the copies with the Csr (so x on the CPU or on any GPU
works with the same Graph).

Construction validates every index (first bad edge reported by position) so no kernel ever
reads out of range; it is a counting sort, O(V + E) (C++ when built, else NumPy).

`Csr` is the general, rectangular form (n_src sources, n_dst targets) that `scatter` builds
too: scatter(src, index) is an aggregation over edges e -> index[e].
"""

from __future__ import annotations

import functools
import glob
from typing import Any

import numpy as np

from ... import _cpp
from ..._arrays import as_array, as_int, check_index, device


def host(a: Any) -> np.ndarray:
    """a C-contiguous NumPy copy of a device (CuPy) array, or the NumPy array itself (contiguous)."""
    if device(a) == "cuda":
        return a.get()
    return np.ascontiguousarray(a)


def _group_by(key: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(indptr (n_groups+1,) int64, perm (E,) int64 or None if already grouped): a stable counting sort."""
    E = key.shape[0]
    if E == 0 or bool(np.all(key[1:] >= key[:-1])):
        counts = np.bincount(key, minlength=n_groups) if E else np.zeros(n_groups, np.int64)
        indptr = np.zeros(n_groups + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        return indptr, None
    indptr = np.empty(n_groups + 1, np.int64)
    perm = np.empty(E, np.int64)
    if _cpp.available() and hasattr(_cpp._C, "graph_group_by"):
        _cpp._C.graph_group_by(np.ascontiguousarray(key), indptr, perm)
    else:
        counts = np.bincount(key, minlength=n_groups)
        indptr[0] = 0
        np.cumsum(counts, out=indptr[1:])
        perm[:] = np.argsort(key, kind="stable")
    return indptr, perm


@functools.lru_cache(maxsize=1)
def last_level_cache_bytes() -> int:
    """Size of this CPU's largest cache (Linux sysfs), or 32 MiB where it cannot be read."""
    sizes = []
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            with open(path) as f:
                text = f.read().strip()
            sizes.append(int(text[:-1]) * {"K": 1 << 10, "M": 1 << 20}[text[-1]])
        except (OSError, ValueError, KeyError, IndexError):
            continue
    return max(sizes, default=32 << 20)


class Transpose:
    """The CSR by source: rows = sources, t_col = targets, t_perm = transposed position -> edge id."""

    def __init__(self, indptr: np.ndarray, col: np.ndarray, perm: np.ndarray | None):
        self.indptr, self.col, self.perm = indptr, col, perm


class Csr:
    """Edges grouped by target. Internal: Graph (square) and scatter (rectangular) build one.

    n_src, n_dst   number of sources (rows of x) and targets (rows of the output)
    src, dst       (E,) the edges in the user's order (index dtype int32 or int64)
    indptr         (n_dst+1,) int64: target v's incoming edges are CSR positions indptr[v]:indptr[v+1]
    col            (E,) source of each CSR position (index dtype)
    perm           (E,) int64 edge id of each CSR position, or None when the edges came grouped
    """

    def __init__(self, n_src: int, n_dst: int, src: np.ndarray, dst: np.ndarray,
                 indptr: np.ndarray | None = None, col: np.ndarray | None = None,
                 perm: np.ndarray | None = None):
        self.n_src, self.n_dst, self.num_edges = n_src, n_dst, int(src.shape[0])
        self.src, self.dst = src, dst
        if indptr is None:
            indptr, perm = _group_by(dst, n_dst)
            col = src if perm is None else src[perm]
        self.indptr, self.col, self.perm = indptr, col, perm
        self._transpose: Transpose | None = None
        self._in_degree: np.ndarray | None = None
        self._cache: dict[Any, Any] = {}

    @property
    def transpose(self) -> Transpose:
        """The CSR by source (for the backward passes), built on first use and cached."""
        if self._transpose is None:
            t_indptr, t_perm = _group_by(self.src, self.n_src)
            t_col = self.dst if t_perm is None else self.dst[t_perm]
            self._transpose = Transpose(t_indptr, t_col, t_perm)
        return self._transpose

    def tiled(self, passes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(indptr, col, perm) of this CSR tiled by source range, for the C++ sum and max/min.

        The edges are grouped by which of `passes` equal ranges of sources they read, then by
        target: pass p is a CSR of its own over all n_dst rows, at indptr[p * n_dst:], whose
        gathers stay in 1/passes of x (see Tiles in csrc/graph.cpp). Built on first use, cached.
        """
        key = ("tiled", passes)
        if key not in self._cache:
            width = -(-self.n_src // passes)
            tile = self.src.astype(np.int64) // width * self.n_dst + self.dst
            indptr, perm = _group_by(tile, passes * self.n_dst)
            self._cache[key] = (indptr, self.src if perm is None else self.src[perm], perm)
        return self._cache[key]

    def passes(self, row_bytes: int) -> int:
        """How many source ranges a C++ sum or max/min over x (row_bytes per row) gathers in.

        One gather per edge of rows scattered over x misses to DRAM once x outgrows the last-level
        cache; tiled (passes > 1), each pass gathers from 1/passes of x, which fits, but reads and
        writes the output once more. Measured on bench/'s graphs (2 cores, 32 MiB L3): G1 and G2
        (x 51 MB, 10 edges per row) ran 15-25% faster in 2 passes; G3 (x 87 MB, 6.9 edges per
        row) gained nothing at 2 to 6. So: enough passes for a range to fit the cache, and only
        while the rows have at least 4 edges per extra pass and the edges read each row of x twice
        or more on average (a scatter reads each once: a cache cannot help it).
        """
        p = min(-(-self.n_src * row_bytes // last_level_cache_bytes()), 8)
        reused = self.num_edges >= 2 * self.n_src
        return p if p > 1 and reused and self.num_edges >= 4 * (p - 1) * self.n_dst else 1

    @property
    def in_degree(self) -> np.ndarray:
        """(n_dst,) int64 number of incoming edges of each target."""
        if self._in_degree is None:
            self._in_degree = np.diff(self.indptr)
        return self._in_degree

    def inv_degree(self, dtype: np.dtype) -> np.ndarray:
        """(n_dst,) 1 / max(in-degree, 1) in dtype (mean's scale), cached per dtype."""
        key = ("inv_degree", np.dtype(dtype).str)
        if key not in self._cache:
            self._cache[key] = (1.0 / np.maximum(self.in_degree, 1)).astype(dtype)
        return self._cache[key]


def _check_edges(src: np.ndarray, dst: np.ndarray, n_src: int, n_dst: int, name: str) -> None:
    """IndexError naming the first edge (by position) with a negative or out-of-range index."""
    if src.shape[0] == 0:
        return
    bad = (src < 0) | (src >= n_src) | (dst < 0) | (dst >= n_dst)
    if bad.any():
        p = int(np.flatnonzero(bad)[0])
        u, v = int(src[p]), int(dst[p])
        if u < 0 or v < 0:
            raise IndexError(f"{name}: edge {p} ({u} -> {v}) has a negative node index")
        raise IndexError(f"{name}: edge {p} ({u} -> {v}) is out of range for num_nodes={n_dst}")


class Graph:
    """A directed graph on V nodes, E edges u -> v, built once and reused by every op.

        g = Graph(edge_index)                 # edge_index (2, E) int32/int64: row 0 sources, row 1 targets
        g = Graph.from_csr(indptr, indices, num_nodes)   # rows are targets

    Holds the CSR by target (indptr int64, sources, the permutation back to edge order), the
    transpose (CSR by source, built on first backward) and the degrees.
    """

    def __init__(self, edge_index: Any, num_nodes: int | None = None):
        ei = as_array(edge_index, "edge_index")
        check_index(ei, "edge_index")
        if ei.ndim != 2 or ei.shape[0] != 2:
            raise ValueError(f"edge_index: expected shape (2, E), got {tuple(ei.shape)}")
        ei = host(ei)  # a device edge_index is copied to the host once: the CSR lives there
        src, dst = np.ascontiguousarray(ei[0]), np.ascontiguousarray(ei[1])
        if num_nodes is None:
            if src.shape[0] and (src.min() < 0 or dst.min() < 0):
                _check_edges(src, dst, 1 << 62, 1 << 62, "edge_index")
            V = int(max(src.max(), dst.max())) + 1 if src.shape[0] else 0
        else:
            V = as_int(num_nodes, "num_nodes", minimum=0)
        _check_edges(src, dst, V, V, "edge_index")
        self._csr = Csr(V, V, src, dst)

    @classmethod
    def from_csr(cls, indptr: Any, indices: Any, num_nodes: int) -> Graph:
        """Graph whose target v has sources indices[indptr[v]:indptr[v+1]]; edge order = CSR order."""
        ip, ix = as_array(indptr, "indptr"), as_array(indices, "indices")
        check_index(ip, "indptr")
        check_index(ix, "indices")
        V = as_int(num_nodes, "num_nodes", minimum=0)
        if ip.ndim != 1 or ip.shape[0] != V + 1:
            raise ValueError(f"indptr: expected shape ({V + 1},) (num_nodes + 1), got {tuple(ip.shape)}")
        if ix.ndim != 1:
            raise ValueError(f"indices: expected a 1-D array, got shape {tuple(ix.shape)}")
        ip = host(ip).astype(np.int64, copy=False)
        if ip[0] != 0 or ip[-1] != ix.shape[0]:
            raise ValueError(f"indptr: expected indptr[0] == 0 and indptr[-1] == len(indices) = {ix.shape[0]}, "
                             f"got {int(ip[0])} and {int(ip[-1])}")
        drop = np.diff(ip) < 0
        if drop.any():
            raise ValueError(f"indptr: expected non-decreasing offsets, but indptr[{int(np.flatnonzero(drop)[0]) + 1}]"
                             " is smaller than the one before it")
        ix = host(ix)
        dst = np.repeat(np.arange(V, dtype=ix.dtype), np.diff(ip))
        _check_edges(ix, dst, V, V, "indices")
        g = cls.__new__(cls)
        g._csr = Csr(V, V, ix, dst, indptr=ip, col=ix, perm=None)
        return g

    @property
    def num_nodes(self) -> int:
        return self._csr.n_dst

    @property
    def num_edges(self) -> int:
        return self._csr.num_edges

    @property
    def edge_index(self) -> np.ndarray:
        """(2, E) in the user's edge order."""
        return np.stack([self._csr.src, self._csr.dst])

    @property
    def indptr(self) -> np.ndarray:
        return self._csr.indptr

    @property
    def in_degree(self) -> np.ndarray:
        return self._csr.in_degree

    @property
    def out_degree(self) -> np.ndarray:
        return np.diff(self._csr.transpose.indptr)

    def __repr__(self) -> str:
        return f"Graph(num_nodes={self.num_nodes}, num_edges={self.num_edges}, index dtype={self._csr.src.dtype})"
