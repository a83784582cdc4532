"""The user population: ids, activity, popularity, follower counts, languages and topic preferences.

Also the draws that pick users (readers by activity, authors by popularity) and a user's topic or
language for one tweet or impression.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .params import (
    ACCOUNT_CREATION_RANGE,
    ACTIVE_HOUR_SIGMA,
    ACTIVE_LOCAL_HOUR,
    ACTIVITY_CAP,
    ACTIVITY_PARETO_ALPHA,
    DOMINANT_MASS,
    DOMINANT_TOPIC_COUNT_PROBS,
    ENGLISH_LANGUAGE_ID,
    ENGLISH_SHARE,
    FOLLOWERS_LOG_MEAN,
    FOLLOWERS_LOG_SIGMA,
    FOLLOWERS_POP_SLOPE,
    FOLLOWING_LOG_MEAN,
    FOLLOWING_LOG_SIGMA,
    FOLLOWING_POP_SLOPE,
    LANGUAGE_ZIPF,
    LANGUAGES,
    MAX_COUNT,
    POPULARITY_SIGMA,
    PROPENSITY_SIGMA,
    SECONDARY_IS_ENGLISH_PROB,
    SECONDARY_LANGUAGE_PROB,
    TOPIC_POPULARITY_CONCENTRATION,
    VERIFIED_INTERCEPT,
    VERIFIED_POP_SLOPE,
)
from .sampling import draw_categorical, hex_ids, sigmoid


@dataclass
class Population:
    """Every user's latent and observed attributes (index = user number)."""

    ids: np.ndarray  # hex user ids
    activity: np.ndarray  # reader weights (Pareto)
    activity_z: np.ndarray  # standardised log activity
    log_popularity: np.ndarray  # lambda
    popularity_z: np.ndarray  # standardised log1p(followers)
    followers: np.ndarray
    following: np.ndarray
    verified: np.ndarray
    creation: np.ndarray
    primary_language: np.ndarray
    secondary_language: np.ndarray  # -1 = monolingual
    preference: np.ndarray  # (users, topics) float32, rows sum to 1
    preference_cdf: np.ndarray  # (users, topics) cumulative preference
    unit_preference: np.ndarray  # preference rows / L2 norm
    active_hour: np.ndarray  # UTC centre hour of the active window
    propensity: np.ndarray
    handle_seed: np.ndarray  # (users, 4) ints used to build handles

    @property
    def size(self) -> int:
        """Number of users."""
        return len(self.ids)

    @property
    def topics(self) -> int:
        """Number of topics."""
        return self.preference.shape[1]


def _language_shares() -> np.ndarray:
    """Share of users of each language as primary (order of LANGUAGES)."""
    others = 1.0 / np.arange(1, len(LANGUAGES)) ** LANGUAGE_ZIPF
    return np.concatenate([[ENGLISH_SHARE], (1 - ENGLISH_SHARE) * others / others.sum()])


def language_ids() -> list[str]:
    """Fixed (seed-independent) 32-hex language ids; English is the real challenge id."""
    return [ENGLISH_LANGUAGE_ID] + [
        hashlib.md5(f"microparade-language-{code}".encode()).hexdigest().upper() for code, _ in LANGUAGES[1:]
    ]


def make_population(n: int, topics: int, rng: np.random.Generator) -> Population:
    """One population of readers and authors with all latent and observed user attributes."""
    ids = hex_ids(rng, n)
    activity = np.minimum((1.0 - rng.random(n)) ** (-1.0 / ACTIVITY_PARETO_ALPHA), ACTIVITY_CAP)
    log_act = np.log(activity)
    lam = rng.normal(0.0, POPULARITY_SIGMA, n)
    followers = np.minimum(
        np.rint(np.exp(FOLLOWERS_LOG_MEAN + FOLLOWERS_POP_SLOPE * lam + rng.normal(0, FOLLOWERS_LOG_SIGMA, n))),
        MAX_COUNT,
    ).astype(np.int64)
    following = np.minimum(
        np.rint(np.exp(FOLLOWING_LOG_MEAN + FOLLOWING_POP_SLOPE * lam + rng.normal(0, FOLLOWING_LOG_SIGMA, n))),
        MAX_COUNT,
    ).astype(np.int64)
    verified = rng.random(n) < sigmoid(VERIFIED_INTERCEPT + VERIFIED_POP_SLOPE * lam)
    creation = rng.integers(ACCOUNT_CREATION_RANGE[0], ACCOUNT_CREATION_RANGE[1], n)
    log_f = np.log1p(followers)

    shares = _language_shares()
    primary = draw_categorical(rng, shares, n)
    bilingual = rng.random(n) < SECONDARY_LANGUAGE_PROB
    other = draw_categorical(rng, shares[1:], n) + 1  # a non-English language
    other = np.where(other == primary, (primary % (len(LANGUAGES) - 1)) + 1, other)
    to_english = (primary != 0) & (rng.random(n) < SECONDARY_IS_ENGLISH_PROB)
    secondary = np.where(bilingual, np.where(to_english, 0, other), -1)

    popularity = rng.dirichlet(np.full(topics, TOPIC_POPULARITY_CONCENTRATION))
    k = draw_categorical(rng, DOMINANT_TOPIC_COUNT_PROBS, n) + 1
    gumbel_keys = np.log(popularity)[None, :] - np.log(-np.log(rng.random((n, topics))))
    top3 = np.argsort(-gumbel_keys, axis=1)[:, :3]
    dom_w = rng.gamma(2.0, 1.0, (n, 3)) * (np.arange(3)[None, :] < k[:, None])
    dom_w /= dom_w.sum(axis=1, keepdims=True)
    pref = (1 - DOMINANT_MASS) * rng.dirichlet(np.ones(topics), n)
    np.add.at(pref, (np.repeat(np.arange(n), 3), top3.ravel()), DOMINANT_MASS * dom_w.ravel())
    pref = pref.astype(np.float32)

    offsets_h = np.array([off for _, off in LANGUAGES], dtype=np.float64)
    local = ACTIVE_LOCAL_HOUR + rng.normal(0, ACTIVE_HOUR_SIGMA, n)
    active = np.mod(np.rint(local - offsets_h[primary]), 24).astype(np.int64)
    propensity = rng.normal(0, PROPENSITY_SIGMA, n)
    handle_seed = rng.integers(0, 2**31 - 1, (n, 4))

    return Population(
        ids=ids,
        activity=activity,
        activity_z=(log_act - log_act.mean()) / (log_act.std() + 1e-12),
        log_popularity=lam,
        popularity_z=(log_f - log_f.mean()) / (log_f.std() + 1e-12),
        followers=followers,
        following=following,
        verified=verified,
        creation=creation,
        primary_language=primary,
        secondary_language=secondary,
        preference=pref,
        preference_cdf=np.cumsum(pref, axis=1),
        unit_preference=pref / np.linalg.norm(pref, axis=1, keepdims=True),
        active_hour=active,
        propensity=propensity,
        handle_seed=handle_seed,
    )


def draw_topics(pop: Population, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A topic per entry of ``users`` drawn from that user's preference (inverse CDF, in chunks)."""
    u = rng.random(len(users))
    out = np.empty(len(users), dtype=np.int64)
    step = 1 << 16
    for s in range(0, len(users), step):
        out[s : s + step] = (pop.preference_cdf[users[s : s + step]] <= u[s : s + step, None]).sum(axis=1)
    return np.minimum(out, pop.topics - 1)


def draw_language(pop: Population, users: np.ndarray, primary_prob: float, rng: np.random.Generator) -> np.ndarray:
    """Primary language, or (bilingual users, with prob 1 - primary_prob) the secondary one."""
    second = pop.secondary_language[users]
    use_second = (second >= 0) & (rng.random(len(users)) >= primary_prob)
    return np.where(use_second, second, pop.primary_language[users])


def draw_readers(pop: Population, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` readers drawn proportionally to their activity weight."""
    cdf = np.cumsum(pop.activity)
    return np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), pop.size - 1)


def draw_popular(pop: Population, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` users drawn proportionally to ``exp(lambda)`` (authors, mentioned users)."""
    cdf = np.cumsum(np.exp(pop.log_popularity))
    return np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), pop.size - 1)
