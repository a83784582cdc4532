"""Random streams and samplers shared by the generator's components.

Every component draws from its own named stream (:func:`stream_rng`), so changing how one component
consumes randomness leaves the others' draws unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Named random streams; each is seeded from (seed, index) so components are independent.
STREAMS = ("lexicon", "users", "pool", "impressions", "content", "engagement", "order")


def stream_rng(seed: int, stream: str, *sub: int) -> np.random.Generator:
    """Independent generator for one named component (and optional sub-index, e.g. the split)."""
    return np.random.default_rng([seed, STREAMS.index(stream), *sub])


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function."""
    return 1.0 / (1.0 + np.exp(-x))


def hex_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random 32-char uppercase hex ids (object array)."""
    text = rng.bytes(16 * n).hex().upper()
    return np.array([text[i : i + 32] for i in range(0, 32 * n, 32)], dtype=object)


def draw_categorical(rng: np.random.Generator, probs: Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    """``n`` category indices with the given probabilities (inverse CDF)."""
    cdf = np.cumsum(probs, dtype=np.float64)
    return np.minimum(np.searchsorted(cdf / cdf[-1], rng.random(n), side="right"), len(probs) - 1)


@dataclass
class AliasTable:
    """Walker alias tables of many categorical distributions stored back to back.

    Distribution ``r`` owns the flat categories ``offsets[r]:offsets[r+1]``; :meth:`draw` samples
    exactly from it in O(1) per draw.
    """

    prob: np.ndarray
    alias: np.ndarray
    offsets: np.ndarray

    @classmethod
    def build(cls, weights: np.ndarray, offsets: np.ndarray) -> AliasTable:
        """Tables of the distributions ``weights[offsets[r]:offsets[r+1]]`` (unnormalised)."""
        weights = np.asarray(weights, dtype=np.float64)
        prob = np.ones(len(weights))
        alias = np.arange(len(weights))
        for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
            scaled = (weights[start:end] * (end - start) / weights[start:end].sum()).tolist()
            small = [i for i, w in enumerate(scaled) if w < 1.0]
            large = [i for i, w in enumerate(scaled) if w >= 1.0]
            while small and large:
                s, g = small.pop(), large.pop()
                prob[start + s], alias[start + s] = scaled[s], start + g
                scaled[g] -= 1.0 - scaled[s]
                (small if scaled[g] < 1.0 else large).append(g)
        return cls(prob=prob, alias=alias, offsets=np.asarray(offsets, dtype=np.int64))

    def draw(self, row: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One flat category index per entry of ``row`` (distribution index), from uniforms ``u``."""
        size = self.offsets[row + 1] - self.offsets[row]
        x = u * size
        j = np.minimum(x.astype(np.int64), size - 1)
        idx = self.offsets[row] + j
        return np.where(x - j < self.prob[idx], idx, self.alias[idx])
