"""Ragged integer arrays as ``(flat values, offsets)`` pairs: gather, concatenate per item, join.

A ragged array holds row ``i`` in ``values[offsets[i]:offsets[i+1]]``; a *piece* is the same data
given as ``(flat values, per-item lengths)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: A ragged piece: (flat values, per-item lengths).
Piece = tuple[np.ndarray, np.ndarray]


def _ragged_take(values: np.ndarray, offsets: np.ndarray, idx: np.ndarray) -> Piece:
    """Rows ``idx`` of the ragged array ``(values, offsets)``, concatenated: (flat values, lengths)."""
    starts = offsets[idx]
    lengths = offsets[idx + 1] - starts
    out_starts = np.cumsum(lengths) - lengths
    src = np.repeat(starts - out_starts, lengths) + np.arange(int(lengths.sum()))
    return values[src], lengths


def assemble(pieces: Sequence[Piece]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate, per item, several ragged pieces (each ``(flat values, per-item lengths)``).

    Returns the ragged result ``(values, offsets)`` with item ``i`` = piece0[i] + piece1[i] + ...
    """
    lengths = np.stack([lens for _, lens in pieces], axis=1).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths.sum(axis=1))])
    before = np.cumsum(lengths, axis=1) - lengths  # position of each piece inside its item
    values = np.empty(int(offsets[-1]), dtype=np.int32)
    for p, (vals, lens) in enumerate(pieces):
        lens = lens.astype(np.int64)
        piece_starts = np.cumsum(lens) - lens
        dest = np.repeat(offsets[:-1] + before[:, p] - piece_starts, lens) + np.arange(int(lens.sum()))
        values[dest] = vals
    return values, offsets


def slot_piece(slot_item: np.ndarray, slot_rows: np.ndarray, values: np.ndarray, offsets: np.ndarray, n: int) -> Piece:
    """A piece for :func:`assemble` made of ragged rows ``slot_rows`` owned by (sorted) ``slot_item``."""
    vals, lens = _ragged_take(values, offsets, slot_rows)
    return vals, np.bincount(slot_item, weights=lens, minlength=n).astype(np.int64)


def join_ragged(table: np.ndarray, values: np.ndarray, offsets: np.ndarray, sep: str) -> list[str]:
    """``sep.join(table[values[offsets[i]:offsets[i+1]]])`` for every row ``i`` (in chunks of rows)."""
    out: list[str] = []
    step = 1 << 16
    for first in range(0, len(offsets) - 1, step):
        bounds = offsets[first : first + step + 1]
        flat = table[values[bounds[0] : bounds[-1]]].tolist()
        starts = (bounds[:-1] - bounds[0]).tolist()
        ends = (bounds[1:] - bounds[0]).tolist()
        out.extend(sep.join(flat[a:b]) for a, b in zip(starts, ends))
    return out
