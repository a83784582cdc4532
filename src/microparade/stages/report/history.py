"""History statistics for the second baseline: what the model sees of a user's history, minus the text.

Per chunk row, over its valid history slots (``hist_mask``; docs/data-format.md §5):

- ``hist_valid`` — the number of valid slots;
- ``hist_like``, ``hist_retweet``, ``hist_reply``, ``hist_quote`` — the slots with that engagement
  (``hist_engagement`` bit mask: like 1, retweet 2, reply 4, quote 8);
- ``hist_hour_sin``, ``hist_hour_cos`` — the mean of the engagements' hours on the 24-hour circle
  (``hist_hour``; 24 = unknown, left out), 0 without a known hour;
- ``hist_near_hour`` — the engagements within :data:`NEAR_HOURS` hours (circularly) of the candidate
  tweet's hour (``hour``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: Names of the statistics, in column order.
HISTORY_FEATURES: tuple[str, ...] = (
    "hist_valid",
    "hist_like",
    "hist_retweet",
    "hist_reply",
    "hist_quote",
    "hist_hour_sin",
    "hist_hour_cos",
    "hist_near_hour",
)
#: The chunk columns the statistics are computed from.
HISTORY_COLUMNS: tuple[str, ...] = ("hour", "hist_engagement", "hist_hour", "hist_mask")
#: ``hist_engagement`` bits of like, retweet, reply, quote.
ENGAGEMENT_BITS: tuple[int, ...] = (1, 2, 4, 8)
#: ``hist_near_hour`` counts engagements at most this many hours from the candidate's hour.
NEAR_HOURS = 3
HOURS = 24


def _flat(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The values of list column ``name`` and the row each value belongs to."""
    col = table.column(name).combine_chunks()
    values = pc.list_flatten(col).to_numpy(zero_copy_only=False)
    rows = pc.list_parent_indices(col).to_numpy(zero_copy_only=False)
    return values, rows


def history_statistics(table: pa.Table) -> np.ndarray:
    """``[rows, len(HISTORY_FEATURES)]`` float32 statistics of a chunk table's history columns."""
    n = table.num_rows
    mask, rows = _flat(table, "hist_mask")
    engagement, e_rows = _flat(table, "hist_engagement")
    hour, h_rows = _flat(table, "hist_hour")
    if not (np.array_equal(rows, e_rows) and np.array_equal(rows, h_rows)):
        raise ValueError("hist_mask, hist_engagement and hist_hour differ in length (docs/data-format.md §5)")
    valid = mask.astype(bool)
    slot_row = rows[valid]
    engagement = engagement[valid].astype(np.int64)
    hour = hour[valid].astype(np.int64)
    out = np.zeros((n, len(HISTORY_FEATURES)), dtype=np.float64)
    out[:, 0] = np.bincount(slot_row, minlength=n)
    for k, bit in enumerate(ENGAGEMENT_BITS):
        out[:, 1 + k] = np.bincount(slot_row, weights=(engagement & bit) != 0, minlength=n)
    known = (hour >= 0) & (hour < HOURS)
    k_row, k_hour = slot_row[known], hour[known]
    count = np.bincount(k_row, minlength=n)
    angle = 2 * np.pi * k_hour / HOURS
    with np.errstate(divide="ignore", invalid="ignore"):
        out[:, 5] = np.where(count > 0, np.bincount(k_row, weights=np.sin(angle), minlength=n) / count, 0.0)
        out[:, 6] = np.where(count > 0, np.bincount(k_row, weights=np.cos(angle), minlength=n) / count, 0.0)
    candidate = table.column("hour").to_numpy(zero_copy_only=False).astype(np.int64)
    apart = np.abs(k_hour - candidate[k_row]) % HOURS
    near = np.minimum(apart, HOURS - apart) <= NEAR_HOURS
    out[:, 7] = np.bincount(k_row, weights=near, minlength=n)
    return out.astype(np.float32)
