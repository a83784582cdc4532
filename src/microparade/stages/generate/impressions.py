"""Impressions: the split time layout, each split's tweet pool and the (tweet, reader) rows.

A reader sees tweets of a language they read, about half of them on a topic they prefer; no reader
sees their own tweet or the same tweet twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .params import (
    DAILY_AMPLITUDE,
    DAILY_PEAK_LOCAL,
    DAY,
    HOUR,
    LANGUAGES,
    MAX_PLACEMENT_ATTEMPTS,
    MIN_POOL,
    NEW_READER_AFTER,
    PERIOD_DAYS,
    PERIOD_END,
    PERIOD_START,
    POOL_PER_ROW,
    READ_PRIMARY_PROB,
    SPLITS,
    TOPICAL_IMPRESSION_PROB,
    TRAIN_DAYS,
    UNIFORM_AFTER,
    VIRALITY_POP_SLOPE,
    VIRALITY_SIGMA,
    WHOLE_SPLIT_AFTER,
    WRITE_PRIMARY_PROB,
)
from .population import Population, draw_language, draw_popular, draw_readers, draw_topics
from .sampling import AliasTable, stream_rng


@dataclass
class SplitLayout:
    """Rows of each split and the time range its tweets are posted in."""

    rows: dict[str, int]
    bounds: dict[str, tuple[int, int]]  # [start, end) Unix seconds of tweet timestamps

    @classmethod
    def from_fractions(cls, rows: int, valid_fraction: float, test_fraction: float) -> SplitLayout:
        """Train gets the first TRAIN_DAYS; valid and test share the last week by their row fractions."""
        n_valid = round(rows * valid_fraction)
        n_test = round(rows * test_fraction)
        n_train = rows - n_valid - n_test
        if n_train < 1:
            raise ValueError("valid_fraction + test_fraction leave no training rows")
        week4 = PERIOD_START + TRAIN_DAYS * DAY
        share = valid_fraction / (valid_fraction + test_fraction) if valid_fraction + test_fraction else 1.0
        cut = week4 + HOUR * round((PERIOD_DAYS - TRAIN_DAYS) * 24 * share)
        # A split with rows gets at least one hour.
        cut = min(max(cut, week4 + HOUR * (n_valid > 0)), PERIOD_END - HOUR * (n_test > 0))
        return cls(
            rows={"train": n_train, "valid": n_valid, "test": n_test},
            bounds={"train": (PERIOD_START, week4), "valid": (week4, cut), "test": (cut, PERIOD_END)},
        )


@dataclass
class Tweets:
    """Tweets with at least one impression (index = tweet number)."""

    author: np.ndarray
    language: np.ndarray
    topic: np.ndarray
    timestamp: np.ndarray
    split: np.ndarray


@dataclass
class Impressions:
    """The rows of the dataset (one impression each) and the tweets they show."""

    tweets: Tweets
    tweet: np.ndarray  # row -> tweet number
    reader: np.ndarray  # row -> user
    split: np.ndarray  # row -> split index


def _tweet_timestamps(language: np.ndarray, start: int, end: int, rng: np.random.Generator) -> np.ndarray:
    """Timestamps in [start, end) following each language's local daily cycle."""
    slots = np.arange(start, end, HOUR)
    utc_hour = (slots // HOUR) % 24
    offsets = np.array([off for _, off in LANGUAGES])
    local = np.mod(utc_hour[None, :] + offsets[:, None], 24)
    weights = 1.0 + DAILY_AMPLITUDE * np.cos(2 * np.pi * (local - DAILY_PEAK_LOCAL) / 24)
    seg = np.arange(len(LANGUAGES) + 1) * len(slots)
    flat = AliasTable.build(weights.ravel(), seg).draw(language, rng.random(len(language)))
    slot = flat - language * len(slots)
    return slots[slot] + rng.integers(0, HOUR, len(language))


def _sample_split(
    pop: Population, n_rows: int, bounds: tuple[int, int], seed: int, split_index: int
) -> tuple[Tweets, np.ndarray, np.ndarray]:
    """Tweet pool of one split and its ``n_rows`` impressions: (pool, row -> pool tweet, row -> reader)."""
    rng = stream_rng(seed, "pool", split_index)
    n_pool = max(MIN_POOL, math.ceil(POOL_PER_ROW * n_rows))
    author = draw_popular(pop, n_pool, rng)
    language = draw_language(pop, author, WRITE_PRIMARY_PROB, rng)
    topic = draw_topics(pop, author, rng)
    virality = np.exp(VIRALITY_POP_SLOPE * pop.log_popularity[author] + rng.normal(0, VIRALITY_SIGMA, n_pool))
    timestamp = _tweet_timestamps(language, bounds[0], bounds[1], rng)

    # Sort the pool by (language, topic) so every cell and every language block is contiguous.
    key = language * pop.topics + topic
    order = np.argsort(key, kind="stable")
    author, language, topic, virality, timestamp, key = (
        a[order] for a in (author, language, topic, virality, timestamp, key)
    )
    pool = Tweets(author, language, topic, timestamp, np.full(n_pool, split_index))
    cum = np.concatenate([[0.0], np.cumsum(virality)])
    cells = np.arange(len(LANGUAGES) * pop.topics)
    cell_lo, cell_hi = np.searchsorted(key, cells, "left"), np.searchsorted(key, cells, "right")
    lang_lo, lang_hi = cell_lo[:: pop.topics], cell_hi[pop.topics - 1 :: pop.topics]

    rng = stream_rng(seed, "impressions", split_index)
    reader = draw_readers(pop, n_rows, rng)
    tweet = np.empty(n_rows, dtype=np.int64)
    todo = np.arange(n_rows)
    placed = np.empty(0, dtype=np.int64)  # sorted (tweet, reader) keys of accepted rows
    for attempt in range(MAX_PLACEMENT_ATTEMPTS):
        if attempt >= NEW_READER_AFTER:  # give hard cases another reader
            reader[todo] = draw_readers(pop, len(todo), rng)
        b = reader[todo]
        lang = draw_language(pop, b, READ_PRIMARY_PROB, rng)
        cell = lang * pop.topics + draw_topics(pop, b, rng)
        topical = (rng.random(len(todo)) < TOPICAL_IMPRESSION_PROB) & (cell_hi[cell] > cell_lo[cell])
        lo = np.where(topical, cell_lo[cell], lang_lo[lang])
        hi = np.where(topical, cell_hi[cell], lang_hi[lang])
        if attempt >= WHOLE_SPLIT_AFTER:  # the reader's languages are exhausted: any tweet of the split
            lo, hi = np.zeros_like(lo), np.full_like(hi, n_pool)
        lo, hi = np.where(hi > lo, lo, 0), np.where(hi > lo, hi, n_pool)
        u = rng.random(len(todo))
        if attempt >= UNIFORM_AFTER:  # uniform instead of by virality
            pick = lo + np.minimum((u * (hi - lo)).astype(np.int64), hi - lo - 1)
        else:
            target = cum[lo] + u * (cum[hi] - cum[lo])
            pick = np.clip(np.searchsorted(cum, target, side="right") - 1, lo, hi - 1)
        tweet[todo] = pick
        pair = pick * pop.size + b
        ok = (author[pick] != b) & ~_sorted_contains(placed, pair)
        first = np.zeros(len(todo), dtype=bool)
        first[np.unique(pair, return_index=True)[1]] = True
        ok &= first
        placed = np.sort(np.concatenate([placed, pair[ok]]), kind="stable")  # merges two sorted runs
        todo = todo[~ok]
        if len(todo) == 0:
            return pool, tweet, reader
    raise RuntimeError(
        f"could not place {len(todo)} impressions without self-views or repeated (tweet, reader) pairs; use more users"
    )


def sample_impressions(layout: SplitLayout, pop: Population, seed: int) -> Impressions:
    """Impressions of all splits; tweets renumbered to those with at least one impression."""
    parts = []
    for i, split in enumerate(SPLITS):
        if layout.rows[split]:
            pool, tweet, reader = _sample_split(pop, layout.rows[split], layout.bounds[split], seed, i)
            used, local = np.unique(tweet, return_inverse=True)
            parts.append((pool, used, local, reader, i))
    base = np.cumsum([0] + [len(used) for _, used, _, _, _ in parts])
    tweets = Tweets(
        *(
            np.concatenate([getattr(pool, f)[used] for pool, used, _, _, _ in parts])
            for f in ("author", "language", "topic", "timestamp", "split")
        )
    )
    return Impressions(
        tweets=tweets,
        tweet=np.concatenate([local + base[j] for j, (_, _, local, _, _) in enumerate(parts)]),
        reader=np.concatenate([reader for _, _, _, reader, _ in parts]),
        split=np.concatenate([np.full(len(reader), i) for _, _, _, reader, i in parts]),
    )


def _sorted_contains(sorted_values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Whether each element of ``x`` occurs in the sorted array ``sorted_values``."""
    if len(sorted_values) == 0:
        return np.zeros(len(x), dtype=bool)
    idx = np.minimum(np.searchsorted(sorted_values, x), len(sorted_values) - 1)
    return sorted_values[idx] == x
