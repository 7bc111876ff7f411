"""What every attention backend shares: the mask and dropout descriptions, and the dropout
generator (a pure integer function, so NumPy, numba, C++ and CUDA agree bit for bit).

Dropout generator (port it as is; all arithmetic is on unsigned 64-bit integers, wrapping):
    mix(z)  = z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB; z ^ (z >> 31)
    ctr     = (zi * L + i) * S + j                # zi: flat batch-head index of the output,
                                                   # i: query row, j: key column
    bits    = mix(seed + (ctr + 1) * 0x9E3779B97F4A7C15) >> 40     # 24 random bits
    keep    = bits >= threshold,   threshold = floor(dropout_p * 2^24)
This is the (ctr+1)-th output of SplitMix64 seeded with `seed` (Steele, Lea, Flood 2014):
counter-based, so any element's mask is computed alone, in the forward and again in the
backward, and never stored. A kept probability is scaled by 1 / (1 - dropout_p), as torch.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
BITS = 24  # random bits compared against the threshold


class Mask(NamedTuple):
    """An additive float mask, broadcast over the (Z, L, S) scores without copying.

    Element (z, i, j) is data.flat[offset[z] + i * row_stride + j * col_stride]; a bool mask
    arrives here already turned into 0 / -inf of the query's dtype.
    """
    data: np.ndarray  # C-contiguous, the user's mask (or its float version)
    offset: np.ndarray  # (Z,) int64
    row_stride: int  # 0 when the mask broadcasts over L
    col_stride: int  # 0 when the mask broadcasts over S

    def dense(self, L: int, S: int) -> np.ndarray:
        """The (Z, L, S) mask as a full array (the reference's view of it)."""
        i = np.arange(L, dtype=np.int64)[:, None] * self.row_stride
        j = np.arange(S, dtype=np.int64)[None, :] * self.col_stride
        return self.data.reshape(-1)[self.offset[:, None, None] + i + j]


class Dropout(NamedTuple):
    p: float  # dropout probability, in (0, 1)
    seed: int  # in [0, 2^64)
    threshold: int  # floor(p * 2^24): keep when the 24 random bits are >= this

    @property
    def scale(self) -> float:
        return 1.0 / (1.0 - self.p)


def make_dropout(p: float, seed: int) -> Dropout:
    return Dropout(float(p), int(seed), int(np.floor(p * 2.0 ** BITS)))


def dropout_keep(seed: int, threshold: int, z: np.ndarray, i: np.ndarray, j: np.ndarray, L: int, S: int) -> np.ndarray:
    """The keep mask (bool) at positions (z, i, j), broadcast together; the generator above."""
    u = np.uint64
    ctr = (np.asarray(z, u) * u(L) + np.asarray(i, u)) * u(S) + np.asarray(j, u)
    x = u(seed) + (ctr + u(1)) * u(GOLDEN)
    x = (x ^ (x >> u(30))) * u(MIX1)
    x = (x ^ (x >> u(27))) * u(MIX2)
    x = x ^ (x >> u(31))
    return (x >> u(64 - BITS)) >= u(threshold)
