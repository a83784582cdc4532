"""Engagements: b_follows_a and the four labels of every row, from the planted logistic model.

Each target's log-odds is a shared per-row term plus ENGAGEMENT_COEFFICIENTS times the row's
features, with an intercept calibrated to hit TARGET_RATES; engagement times follow the tweet by a
lognormal delay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...recsys_format import TARGETS
from .content import Content
from .impressions import Impressions
from .params import (
    ACTIVE_HALF_WIDTH,
    ENGAGEMENT_COEFFICIENTS,
    ENGAGEMENT_CYCLE_PEAK_UTC,
    ENGAGEMENT_DELAY_MEDIAN_S,
    ENGAGEMENT_DELAY_SIGMA,
    FOLLOW_INTERCEPT,
    FOLLOW_POP,
    FOLLOW_SIM,
    HOUR,
    MEDIA_PROBS,
    PERIOD_END,
    ROW_NOISE,
    TARGET_RATES,
    TWEET_TYPE_NAMES,
)
from .population import Population
from .sampling import sigmoid, stream_rng


@dataclass
class Labels:
    """Follow flag and engagements of every row."""

    positive: np.ndarray  # (rows, 4) bool, TARGETS order
    timestamp: np.ndarray  # (rows, 4) int64 engagement time (meaningful where positive)
    follows: np.ndarray  # (rows,) bool b_follows_a


def _pair_uniform(a: np.ndarray, b: np.ndarray, seed: int) -> np.ndarray:
    """A uniform [0, 1) number per (a, b) pair, the same wherever the pair occurs (splitmix64)."""
    golden = 0x9E3779B97F4A7C15
    z = (a.astype(np.uint64) << np.uint64(32)) ^ b.astype(np.uint64) ^ np.uint64((seed * golden) % 2**64)
    z = z + np.uint64(golden)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _follows(pop: Population, author: np.ndarray, reader: np.ndarray, seed: int) -> np.ndarray:
    """b_follows_a: a fixed coin per (author, reader) pair, likelier for popular, like-minded authors."""
    similarity = np.empty(len(author))
    for s in range(0, len(author), 1 << 18):
        sl = slice(s, s + (1 << 18))
        similarity[sl] = np.einsum("ij,ij->i", pop.unit_preference[author[sl]], pop.unit_preference[reader[sl]])
    p = sigmoid(FOLLOW_INTERCEPT + FOLLOW_POP * pop.popularity_z[author] + FOLLOW_SIM * similarity)
    return _pair_uniform(author, reader, seed) < p


def _calibrate(score: np.ndarray, rate: float) -> float:
    """The intercept b with mean(sigmoid(score + b)) == rate (safeguarded Newton on a bracket)."""
    lo, hi = -40.0, 40.0
    b = math.log(rate / (1 - rate)) - float(np.median(score))
    for _ in range(100):
        p = sigmoid(score + b)
        gap = p.mean() - rate
        if abs(gap) < 1e-10 * rate:
            break
        lo, hi = (b, hi) if gap < 0 else (lo, b)
        step = b - gap / max(float((p * (1 - p)).mean()), 1e-300)
        b = step if lo < step < hi else 0.5 * (lo + hi)
    return b


def _engagement_features(
    imp: Impressions, content: Content, pop: Population, follows: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-row value of every feature of ENGAGEMENT_COEFFICIENTS (float64 columns)."""
    t, b = imp.tweet, imp.reader
    author = imp.tweets.author[t]
    topic = imp.tweets.topic[t]
    topic_match = pop.preference[b, topic] / pop.preference.max(axis=1)[b]
    hour = (imp.tweets.timestamp[t] // HOUR) % 24
    distance = np.abs(hour - pop.active_hour[b])
    distance = np.minimum(distance, 24 - distance)
    ttype, media = content.tweet_type[t], content.media[t]
    media_names = list(MEDIA_PROBS)
    columns = {
        "topic_match": topic_match,
        "active_hour": distance <= ACTIVE_HALF_WIDTH,
        "daily_cycle": np.cos(2 * np.pi * (hour - ENGAGEMENT_CYCLE_PEAK_UTC) / 24),
        "b_follows_a": follows,
        "author_popularity": pop.popularity_z[author],
        "author_verified": pop.verified[author],
        "reader_activity": pop.activity_z[b],
        "type_retweet": ttype == TWEET_TYPE_NAMES.index("Retweet"),
        "type_reply": ttype == TWEET_TYPE_NAMES.index("Reply"),
        "type_quote": ttype == TWEET_TYPE_NAMES.index("Quote"),
        "photo": media == media_names.index("Photo"),
        "video": media == media_names.index("Video"),
        "gif": media == media_names.index("GIF"),
        "link": content.n_links[t] > 0,
    }
    return {name: np.asarray(columns[name], dtype=np.float64) for name in ENGAGEMENT_COEFFICIENTS}


def engage(imp: Impressions, content: Content, pop: Population, seed: int) -> tuple[Labels, np.ndarray]:
    """Draw the four engagements of every row; returns the labels and the calibrated intercepts."""
    rng = stream_rng(seed, "engagement")
    n = len(imp.tweet)
    follows = _follows(pop, imp.tweets.author[imp.tweet], imp.reader, seed)
    shared = pop.propensity[imp.reader] + ROW_NOISE * rng.standard_normal(n)
    score = np.repeat(shared[:, None], len(TARGETS), axis=1)
    for name, column in _engagement_features(imp, content, pop, follows).items():
        score += column[:, None] * np.array(ENGAGEMENT_COEFFICIENTS[name])[None, :]
    intercepts = np.array([_calibrate(score[:, k], TARGET_RATES[t]) for k, t in enumerate(TARGETS)])
    positive = rng.random((n, len(TARGETS))) < sigmoid(score + intercepts)
    medians = np.log([ENGAGEMENT_DELAY_MEDIAN_S[t] for t in TARGETS])
    delay = np.ceil(np.exp(medians + ENGAGEMENT_DELAY_SIGMA * rng.standard_normal((n, len(TARGETS)))))
    tweet_ts = imp.tweets.timestamp[imp.tweet][:, None]
    timestamp = np.minimum(tweet_ts + np.maximum(delay, 1).astype(np.int64), PERIOD_END - 1)
    return Labels(positive=positive, timestamp=timestamp, follows=follows), intercepts
