"""Synthetic Twitter RecSys Challenge 2021 data with planted, documented signal.

:func:`generate_dataset` writes raw files in the exact challenge format (``\\x01``-separated
fields, 24 per line for train/valid, 20 for test) under ``{out}/{split}/part-NNNNN[.gz|.bz2|.zst]``.
The generative model (populations, distributions, the planted engagement model and its
coefficients) is documented in ``docs/synthetic-data.md``; the constants below are its parameters.

Everything is vectorised with numpy: columns are generated as arrays, token sequences are built by
concatenating pre-tokenised words, and only the final line assembly is a per-row string join.
The lines written are a pure function of the arguments other than ``rows_per_file``,
``compression``, ``storage_options`` and ``progress``; ``rows_per_file`` only decides where a
split's (shuffled) line sequence is cut into files, and compressed files are byte-reproducible too.
"""

from __future__ import annotations

import bz2
import contextlib
import functools
import gzip
import hashlib
import math
import posixpath
import string
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import fsspec
import numpy as np

from ...recsys_format import FIELD_SEP, LIST_SEP, MBERT_CLS, MBERT_SEP, TARGETS
from ...assets import load_tokenizer, resolve_model_path

# --------------------------------------------------------------------------------------------
# Parameters of the generative model (docs/synthetic-data.md explains each one).
# --------------------------------------------------------------------------------------------

#: Version of the generative model; part of the returned params.
GENERATOR_VERSION = 1

DAY = 86_400
HOUR = 3_600
#: 2021-02-04 00:00 UTC, the first second of the 28-day period.
PERIOD_START = 1_612_396_800
PERIOD_DAYS = 28
TRAIN_DAYS = 21
PERIOD_END = PERIOD_START + PERIOD_DAYS * DAY
#: Account creation dates are uniform over [2008-01-01, 2021-02-01) UTC.
ACCOUNT_CREATION_RANGE = (1_199_145_600, 1_612_137_600)

#: Overall positive rates the per-target intercepts are calibrated to.
TARGET_RATES = {"like": 0.40, "retweet": 0.09, "reply": 0.03, "quote": 0.007}

#: The real English language id of the challenge data.
ENGLISH_LANGUAGE_ID = "488B32D24BD4BB44172EB981C1BCA6FA"
#: Languages (ISO code, UTC offset in hours of their main audience). English takes
#: ``ENGLISH_SHARE`` of users; the other 39 share the rest with Zipf weights ``1 / rank**1.3``.
LANGUAGES: tuple[tuple[str, int], ...] = (
    ("en", -4),
    ("ja", 9),
    ("es", -4),
    ("pt", -3),
    ("tr", 3),
    ("ar", 3),
    ("ko", 9),
    ("fr", 1),
    ("th", 7),
    ("id", 7),
    ("hi", 5),
    ("de", 1),
    ("it", 1),
    ("ru", 3),
    ("tl", 8),
    ("pl", 1),
    ("nl", 1),
    ("fa", 4),
    ("ur", 5),
    ("zh", 8),
    ("ca", 1),
    ("el", 2),
    ("sv", 1),
    ("uk", 2),
    ("vi", 7),
    ("ms", 8),
    ("ta", 5),
    ("cs", 1),
    ("ro", 2),
    ("hu", 1),
    ("fi", 2),
    ("da", 1),
    ("no", 1),
    ("he", 2),
    ("bn", 6),
    ("mr", 5),
    ("te", 5),
    ("gu", 5),
    ("sr", 1),
    ("ne", 6),
)
ENGLISH_SHARE = 0.45
LANGUAGE_ZIPF = 1.3
SECONDARY_LANGUAGE_PROB = 0.3
#: A non-English user's secondary language is English with this probability.
SECONDARY_IS_ENGLISH_PROB = 0.6
#: Share of a bilingual reader's impressions in the primary language.
READ_PRIMARY_PROB = 0.8
#: Share of an author's tweets in the primary language (bilingual authors).
WRITE_PRIMARY_PROB = 0.9

#: Reader activity: Pareto(alpha) weights, capped at ACTIVITY_CAP.
ACTIVITY_PARETO_ALPHA = 1.5
ACTIVITY_CAP = 100.0
#: Author popularity: log-popularity lambda ~ N(0, POPULARITY_SIGMA); authors drawn ∝ exp(lambda).
POPULARITY_SIGMA = 1.5
#: log(followers) = FOLLOWERS_LOG_MEAN + FOLLOWERS_POP_SLOPE * lambda + N(0, FOLLOWERS_LOG_SIGMA).
FOLLOWERS_LOG_MEAN, FOLLOWERS_POP_SLOPE, FOLLOWERS_LOG_SIGMA = 4.6, 1.3, 0.8
#: log(following) = FOLLOWING_LOG_MEAN + FOLLOWING_POP_SLOPE * lambda + N(0, FOLLOWING_LOG_SIGMA).
FOLLOWING_LOG_MEAN, FOLLOWING_POP_SLOPE, FOLLOWING_LOG_SIGMA = 5.3, 0.2, 1.0
MAX_COUNT = 200_000_000
#: P(verified) = sigmoid(VERIFIED_INTERCEPT + VERIFIED_POP_SLOPE * lambda).
VERIFIED_INTERCEPT, VERIFIED_POP_SLOPE = -6.0, 1.2
#: Topic preferences: 1/2/3 dominant topics with these probabilities, chosen ∝ topic popularity
#: (Dirichlet(TOPIC_POPULARITY_CONCENTRATION)); dominant mass DOMINANT_MASS split by Dirichlet(2),
#: the rest spread by Dirichlet(1) over all topics.
DOMINANT_TOPIC_COUNT_PROBS = (0.35, 0.40, 0.25)
TOPIC_POPULARITY_CONCENTRATION = 4.0
DOMINANT_MASS = 0.85
#: Preferred active window: local evening hour ACTIVE_LOCAL_HOUR + N(0, ACTIVE_HOUR_SIGMA), converted
#: to UTC with the primary language's offset; "inside" = circular distance <= ACTIVE_HALF_WIDTH h.
ACTIVE_LOCAL_HOUR, ACTIVE_HOUR_SIGMA, ACTIVE_HALF_WIDTH = 20.0, 3.0, 3
#: Per-user engagement propensity ~ N(0, PROPENSITY_SIGMA); per-row shared noise ~ N(0, 1) * ROW_NOISE.
PROPENSITY_SIGMA = 0.5
ROW_NOISE = 0.5

#: Tweets per split pool = max(MIN_POOL, ceil(POOL_PER_ROW * split rows)); tweets without
#: impressions are dropped. Tweet virality ~ exp(VIRALITY_POP_SLOPE * lambda + N(0, VIRALITY_SIGMA)).
POOL_PER_ROW = 0.5
MIN_POOL = 64
VIRALITY_POP_SLOPE, VIRALITY_SIGMA = 0.3, 1.0
#: Tweet volume per UTC hour slot ∝ 1 + DAILY_AMPLITUDE * cos(2π (local hour - DAILY_PEAK_LOCAL) / 24).
DAILY_AMPLITUDE, DAILY_PEAK_LOCAL = 0.6, 19.0
#: Share of impressions whose topic is drawn from the reader's preference (the rest: any tweet
#: of the reading language, by virality).
TOPICAL_IMPRESSION_PROB = 0.5
#: Placement retries for impressions that hit the reader's own tweet or a (tweet, reader) pair
#: already used: after WHOLE_SPLIT_AFTER attempts any tweet of the split, after UNIFORM_AFTER
#: uniformly instead of by virality, after NEW_READER_AFTER with another reader.
MAX_PLACEMENT_ATTEMPTS, WHOLE_SPLIT_AFTER, UNIFORM_AFTER, NEW_READER_AFTER = 60, 10, 20, 30

#: Content of a tweet.
TWEET_TYPE_PROBS = {"TopLevel": 0.55, "Retweet": 0.25, "Reply": 0.15, "Quote": 0.05}
MEDIA_PROBS = {"": 0.63, "Photo": 0.25, "Video": 0.10, "GIF": 0.02}
PHOTO_COUNT_PROBS = (0.75, 0.10, 0.05, 0.10)  # 1, 2, 3, 4 photos
LINK_COUNT_PROBS = (0.80, 0.18, 0.02)  # 0, 1, 2 links
HASHTAG_COUNT_PROBS = (0.80, 0.12, 0.05, 0.03)  # 0..3 hashtags
REPLY_MENTION_PROBS = (0.15, 0.75, 0.10)  # a reply starts with 0, 1 or 2 @handles
EMOJI_TWEET_PROB, EMOJI_EXTRA_MEAN, EMOJI_MAX = 0.3, 1.0, 6
#: Body words: round(lognormal(BODY_LOG_MEAN, BODY_LOG_SIGMA)) clipped to [1, room left <= 290].
BODY_LOG_MEAN, BODY_LOG_SIGMA = 3.52, 0.6
MAX_TOKENS = 290
#: Body word mix: topic word / common word / word of a random other topic.
TOPIC_WORD_PROB, COMMON_WORD_PROB = 0.60, 0.35
TOPIC_VOCAB_SIZE_RANGE = (60, 200)
MIN_WORD_LEN = 4
WORD_ZIPF = 1.0
LINK_CHARS = string.ascii_letters + string.digits
LINK_SUFFIX_LEN = 10
LINKS_PER_LINK_SLOT = 0.5
LINKS_PER_DOMAIN = 20
DOMAIN_ZIPF = 1.1

#: b_follows_a: P = sigmoid(FOLLOW_INTERCEPT + FOLLOW_POP * pop_z(a) + FOLLOW_SIM * cos(pref_a, pref_b)).
FOLLOW_INTERCEPT, FOLLOW_POP, FOLLOW_SIM = -1.0, 0.4, 2.5

#: Engagement log-odds coefficients per target (order of TARGETS: like, retweet, reply, quote).
ENGAGEMENT_COEFFICIENTS: dict[str, tuple[float, float, float, float]] = {
    "topic_match": (3.0, 3.0, 1.5, 2.0),
    "active_hour": (0.7, 0.6, 0.5, 0.5),
    "daily_cycle": (0.15, 0.15, 0.1, 0.1),
    "b_follows_a": (0.5, 0.4, 0.9, 0.3),
    "author_popularity": (0.1, 0.35, -0.2, 0.1),
    "author_verified": (0.1, 0.2, -0.1, 0.0),
    "reader_activity": (-0.25, -0.1, -0.1, -0.1),
    "type_retweet": (-0.3, 0.2, -0.6, -0.2),
    "type_reply": (-0.2, -0.5, 0.6, -0.5),
    "type_quote": (-0.1, 0.0, 0.0, 0.3),
    "photo": (0.2, 0.15, 0.0, 0.0),
    "video": (0.1, 0.25, -0.1, 0.0),
    "gif": (0.15, 0.0, 0.1, 0.0),
    "link": (-0.2, 0.1, 0.0, 0.1),
}
#: UTC hour at which the global engagement cycle peaks.
ENGAGEMENT_CYCLE_PEAK_UTC = 21.0
#: Engagement delay after the tweet: lognormal with these medians (s) and ENGAGEMENT_DELAY_SIGMA.
ENGAGEMENT_DELAY_MEDIAN_S = {"like": 300.0, "retweet": 600.0, "reply": 1200.0, "quote": 900.0}
ENGAGEMENT_DELAY_SIGMA = 1.6

#: Frequent English words and punctuation: the shared "common word" pool (Zipf by list order).
COMMON_WORDS: tuple[str, ...] = tuple(
    ". , the ! to and a i of you is in it ? that for my on this be me with so just have are not "
    "we your all at was but like what do no can if get they he she out up now one about love "
    "more new good day time people know will how when there go from today see want need think "
    "really back much make great thank thanks here why some our would been only by an or as his "
    "her them then than very too also still never always first last best happy lol yes well "
    "right even us any going because who were did got let way life world year night morning "
    "work home look".split()
)

#: Compression levels (bz2 uses its default, 9); gzip headers carry no timestamp or file name.
GZIP_LEVEL, ZSTD_LEVEL = 4, 3

_COMPRESSION_SUFFIX = {None: "", "gzip": ".gz", "bz2": ".bz2", "zstd": ".zst"}
_SPLITS = ("train", "valid", "test")
_TWEET_TYPES = tuple(TWEET_TYPE_PROBS)
#: Named random streams; each is seeded from (seed, index) so components are independent.
_STREAMS = ("lexicon", "users", "pool", "impressions", "content", "engagement", "order")
_WRITE_BATCH_LINES = 65_536
#: Tweets whose token ids are built at once (fixed: the random stream is consumed per block).
CONTENT_BLOCK_TWEETS = 65_536


# --------------------------------------------------------------------------------------------
# Public helpers
# --------------------------------------------------------------------------------------------


def generate_dataset(
    out: str,
    *,
    rows: int,
    users: int | None = None,
    seed: int = 0,
    tokenizer: str | None = None,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    rows_per_file: int = 250_000,
    compression: str | None = None,
    topics: int = 48,
    storage_options: dict | None = None,
    progress: bool = True,
) -> dict:
    """Write a synthetic RecSys 2021 dataset under ``out`` and return a JSON-serialisable summary.

    Files: ``{out}/{train,valid,test}/part-%05d`` plus the compression suffix (``.gz``, ``.bz2``,
    ``.zst``); train/valid lines have 24 fields, test lines the first 20. Existing ``part-*`` files
    in those split folders are removed first. ``out`` is any fsspec URL or a local path.

    Returns ``{"files": [{"path", "split", "rows"}], "rows": {split: n}, "label_rates": {split:
    {target: rate}}, "params": {...}, "tweets": n}``: ``path`` is relative to ``out``; test label
    rates come from the labels that are not written; ``params`` holds every effective parameter
    (resolved ``users`` and tokenizer directory, the period bounds, calibrated intercepts).
    """
    n_users = max(200, rows // 25) if users is None else int(users)
    _validate(rows, n_users, seed, valid_fraction, test_fraction, rows_per_file, compression, topics)
    log = _Progress(progress)
    started = time.perf_counter()

    tokenizer_dir = str(resolve_model_path(tokenizer))
    tok, lexicon = _lexicon(tokenizer_dir, topics, seed)
    population = _make_population(n_users, topics, _rng(seed, "users"))
    layout = _SplitLayout.from_fractions(rows, valid_fraction, test_fraction)
    log(f"{n_users} users, {topics} topics, splits {layout.rows}")

    impressions = _sample_all_impressions(layout, population, seed)
    log(f"{rows} impressions of {len(impressions.tweets.author)} tweets sampled")
    content = _make_content(impressions.tweets, population, lexicon, tok, _rng(seed, "content"))
    labels, intercepts = _engage(impressions, content, population, seed)
    log("engagements drawn; writing files")

    files = _write_splits(
        out,
        impressions,
        content,
        population,
        labels,
        seed,
        rows_per_file,
        compression,
        storage_options or {},
        log,
    )
    rates = {
        split: {
            t: float(labels.positive[impressions.split == i, k].mean()) if layout.rows[split] else 0.0
            for k, t in enumerate(TARGETS)
        }
        for i, split in enumerate(_SPLITS)
    }
    log(f"done: {rows} rows in {time.perf_counter() - started:.1f} s")
    return {
        "files": files,
        "rows": dict(layout.rows),
        "label_rates": rates,
        "params": {
            "generator_version": GENERATOR_VERSION,
            "rows": rows,
            "users": n_users,
            "seed": seed,
            "tokenizer": tokenizer_dir,
            "valid_fraction": valid_fraction,
            "test_fraction": test_fraction,
            "rows_per_file": rows_per_file,
            "compression": compression,
            "topics": topics,
            "period": {
                "start": PERIOD_START,
                "train_end": layout.bounds["train"][1],
                "valid_end": layout.bounds["valid"][1],
                "end": PERIOD_END,
            },
            "target_rates": dict(TARGET_RATES),
            "intercepts": {t: float(b) for t, b in zip(TARGETS, intercepts)},
        },
        "tweets": int(len(impressions.tweets.author)),
    }


def topic_vocabularies(tokenizer: str | None = None, *, seed: int = 0, topics: int = 48) -> list[np.ndarray]:
    """Token ids of each topic's vocabulary, exactly as :func:`generate_dataset` builds them.

    Useful to analyse generated data: a tweet's topic is the vocabulary most of its words come
    from (see :func:`topics_of_texts`).
    """
    _, lexicon = _lexicon(str(resolve_model_path(tokenizer)), topics, seed)
    off = lexicon.topic_offsets
    return [lexicon.topic_words[off[t] : off[t + 1]].copy() for t in range(topics)]


def topics_of_texts(texts: Sequence[Sequence[int]], vocabularies: Sequence[np.ndarray]) -> np.ndarray:
    """For each token sequence, the topic whose vocabulary holds most of its tokens.

    Ties go to the lowest topic index; a sequence with no topic word gets -1. ``vocabularies`` is
    the output of :func:`topic_vocabularies`.
    """
    size = max(int(v.max()) for v in vocabularies if len(v)) + 1
    lookup = np.full(size, -1, dtype=np.int64)
    for topic, words in enumerate(vocabularies):
        lookup[words] = topic
    arrays = [np.asarray(t, dtype=np.int64) for t in texts]
    lengths = np.array([len(t) for t in arrays], dtype=np.int64)
    flat = np.concatenate(arrays) if arrays else np.empty(0, dtype=np.int64)
    owner = np.repeat(np.arange(len(texts)), lengths)
    topic = np.where((flat >= 0) & (flat < size), lookup[np.clip(flat, 0, size - 1)], -1)
    hit = topic >= 0
    counts = np.bincount(owner[hit] * len(vocabularies) + topic[hit], minlength=len(texts) * len(vocabularies))
    counts = counts.reshape(len(texts), len(vocabularies))
    return np.where(counts.max(axis=1) > 0, counts.argmax(axis=1), -1)


# --------------------------------------------------------------------------------------------
# Small utilities
# --------------------------------------------------------------------------------------------


def _validate(rows, n_users, seed, valid_fraction, test_fraction, rows_per_file, compression, topics):
    if int(rows) != rows or rows < 1:
        raise ValueError(f"rows must be a positive integer, got {rows!r}")
    if n_users < 10:
        raise ValueError(f"users must be >= 10, got {n_users}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not (0 <= valid_fraction < 1 and 0 <= test_fraction < 1 and valid_fraction + test_fraction < 1):
        raise ValueError("valid_fraction and test_fraction must be in [0, 1) with a sum below 1")
    if rows_per_file < 1:
        raise ValueError(f"rows_per_file must be >= 1, got {rows_per_file}")
    if compression not in _COMPRESSION_SUFFIX:
        raise ValueError(f"compression must be one of {list(_COMPRESSION_SUFFIX)}, got {compression!r}")
    if not 2 <= topics <= 512:
        raise ValueError(f"topics must be in [2, 512], got {topics}")


class _Progress:
    """Short progress lines on stderr (silent when disabled)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"[generate {time.perf_counter() - self.t0:6.1f}s] {message}", file=sys.stderr, flush=True)


def _rng(seed: int, stream: str, *sub: int) -> np.random.Generator:
    """Independent generator for one named component (and optional sub-index, e.g. the split)."""
    return np.random.default_rng([seed, _STREAMS.index(stream), *sub])


def _sigmoid(x):
    """The logistic function."""
    return 1.0 / (1.0 + np.exp(-x))


@functools.lru_cache(maxsize=4)
def _lexicon(tokenizer_dir: str, topics: int, seed: int) -> tuple[object, _Lexicon]:
    """The tokenizer (a copy without padding/truncation: MiniLM's pads to 128) and its lexicon."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(load_tokenizer(tokenizer_dir).to_str())
    tok.no_padding()
    tok.no_truncation()
    return tok, _build_lexicon(tok, topics, seed)


def _hex_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random 32-char uppercase hex ids (object array)."""
    text = rng.bytes(16 * n).hex().upper()
    return np.array([text[i : i + 32] for i in range(0, 32 * n, 32)], dtype=object)


def _draw(rng: np.random.Generator, probs: Sequence[float], n: int) -> np.ndarray:
    """``n`` category indices with the given probabilities (inverse CDF)."""
    cdf = np.cumsum(probs, dtype=np.float64)
    return np.minimum(np.searchsorted(cdf / cdf[-1], rng.random(n), side="right"), len(probs) - 1)


@dataclass
class _AliasTable:
    """Walker alias tables of many categorical distributions stored back to back.

    Distribution ``r`` owns the flat categories ``offsets[r]:offsets[r+1]``; :meth:`draw` samples
    exactly from it in O(1) per draw.
    """

    prob: np.ndarray
    alias: np.ndarray
    offsets: np.ndarray

    @classmethod
    def build(cls, weights: np.ndarray, offsets: np.ndarray) -> _AliasTable:
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


def _ragged_take(values: np.ndarray, offsets: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``idx`` of the ragged array ``(values, offsets)``, concatenated: (flat values, lengths)."""
    starts = offsets[idx]
    lengths = offsets[idx + 1] - starts
    out_starts = np.cumsum(lengths) - lengths
    src = np.repeat(starts - out_starts, lengths) + np.arange(int(lengths.sum()))
    return values[src], lengths


def _assemble(pieces: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
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


def _slot_piece(slot_item: np.ndarray, slot_rows: np.ndarray, values: np.ndarray, offsets: np.ndarray, n: int):
    """A piece for :func:`_assemble` made of ragged rows ``slot_rows`` owned by (sorted) ``slot_item``."""
    vals, lens = _ragged_take(values, offsets, slot_rows)
    return vals, np.bincount(slot_item, weights=lens, minlength=n).astype(np.int64)


def _sorted_contains(sorted_values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Whether each element of ``x`` occurs in the sorted array ``sorted_values``."""
    if len(sorted_values) == 0:
        return np.zeros(len(x), dtype=bool)
    idx = np.minimum(np.searchsorted(sorted_values, x), len(sorted_values) - 1)
    return sorted_values[idx] == x


def _join_ragged(table: np.ndarray, values: np.ndarray, offsets: np.ndarray, sep: str) -> list[str]:
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


# --------------------------------------------------------------------------------------------
# Lexicon: topic vocabularies, common words, special tokens
# --------------------------------------------------------------------------------------------


@dataclass
class _Lexicon:
    topic_words: np.ndarray  # token ids, topic vocabularies back to back
    topic_offsets: np.ndarray  # (topics + 1,)
    topic_sampler: _AliasTable  # Zipf over each topic's words
    common_words: np.ndarray
    common_sampler: _AliasTable  # Zipf over the common words
    handle_words: list[str]  # words used to build user handles
    cls: int
    sep: int
    unk: int
    hash_ids: np.ndarray  # "#"
    rt_ids: np.ndarray  # "RT"
    colon_ids: np.ndarray  # ":"
    token_strings: np.ndarray  # str(id) for every id of the vocabulary (object array)


def _build_lexicon(tok, topics: int, seed: int) -> _Lexicon:
    """Deterministic (by seed) topic vocabularies and common-word pool from the tokenizer's vocab."""
    rng = _rng(seed, "lexicon")
    vocab = tok.get_vocab()
    specials = {MBERT_CLS, MBERT_SEP, tok.token_to_id("[UNK]"), tok.token_to_id("[PAD]"), tok.token_to_id("[MASK]")}

    common_enc = tok.encode_batch(list(COMMON_WORDS), add_special_tokens=False)
    common_ids = list(dict.fromkeys(e.ids[0] for e in common_enc if len(e.ids) == 1))
    common = np.array(common_ids, dtype=np.int32)

    candidates = sorted(
        (i, w) for w, i in vocab.items() if len(w) >= MIN_WORD_LEN and w.isascii() and w.isalpha() and i not in specials
    )
    encoded = tok.encode_batch([w for _, w in candidates], add_special_tokens=False)
    common_set = set(common_ids)
    words = [(i, w) for (i, w), e in zip(candidates, encoded) if e.ids == [i] and i not in common_set]
    order = rng.permutation(len(words))
    sizes = rng.integers(TOPIC_VOCAB_SIZE_RANGE[0], TOPIC_VOCAB_SIZE_RANGE[1] + 1, size=topics)
    if sizes.sum() > len(words):
        sizes = np.maximum(10, sizes * len(words) // sizes.sum())
        if sizes.sum() > len(words):
            raise ValueError(f"the tokenizer has only {len(words)} whole-word tokens, too few for {topics} topics")
    topic_offsets = np.concatenate([[0], np.cumsum(sizes)])
    chosen = order[: topic_offsets[-1]]
    topic_words = np.array([words[j][0] for j in chosen], dtype=np.int32)
    ranks = np.arange(topic_offsets[-1]) - np.repeat(topic_offsets[:-1], sizes)

    def ids(text: str) -> np.ndarray:
        return np.array(tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    token_strings = np.array([str(i) for i in range(tok.get_vocab_size())], dtype=object)
    return _Lexicon(
        topic_words=topic_words,
        topic_offsets=topic_offsets,
        topic_sampler=_AliasTable.build(1.0 / (ranks + 1.0) ** WORD_ZIPF, topic_offsets),
        common_words=common,
        common_sampler=_AliasTable.build(1.0 / np.arange(1, len(common) + 1) ** WORD_ZIPF, np.array([0, len(common)])),
        handle_words=[w for _, w in words],
        cls=MBERT_CLS,
        sep=MBERT_SEP,
        unk=tok.token_to_id("[UNK]"),
        hash_ids=ids("#"),
        rt_ids=ids("RT"),
        colon_ids=ids(":"),
        token_strings=token_strings,
    )


# --------------------------------------------------------------------------------------------
# Users
# --------------------------------------------------------------------------------------------


@dataclass
class _Population:
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
        return len(self.ids)

    @property
    def topics(self) -> int:
        return self.preference.shape[1]


def _language_shares() -> np.ndarray:
    others = 1.0 / np.arange(1, len(LANGUAGES)) ** LANGUAGE_ZIPF
    return np.concatenate([[ENGLISH_SHARE], (1 - ENGLISH_SHARE) * others / others.sum()])


def _language_ids() -> list[str]:
    """Fixed (seed-independent) 32-hex language ids; English is the real challenge id."""
    return [ENGLISH_LANGUAGE_ID] + [
        hashlib.md5(f"microparade-language-{code}".encode()).hexdigest().upper() for code, _ in LANGUAGES[1:]
    ]


def _make_population(n: int, topics: int, rng: np.random.Generator) -> _Population:
    """One population of readers and authors with all latent and observed user attributes."""
    ids = _hex_ids(rng, n)
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
    verified = rng.random(n) < _sigmoid(VERIFIED_INTERCEPT + VERIFIED_POP_SLOPE * lam)
    creation = rng.integers(ACCOUNT_CREATION_RANGE[0], ACCOUNT_CREATION_RANGE[1], n)
    log_f = np.log1p(followers)

    shares = _language_shares()
    primary = _draw(rng, shares, n)
    bilingual = rng.random(n) < SECONDARY_LANGUAGE_PROB
    other = _draw(rng, shares[1:], n) + 1  # a non-English language
    other = np.where(other == primary, (primary % (len(LANGUAGES) - 1)) + 1, other)
    to_english = (primary != 0) & (rng.random(n) < SECONDARY_IS_ENGLISH_PROB)
    secondary = np.where(bilingual, np.where(to_english, 0, other), -1)

    popularity = rng.dirichlet(np.full(topics, TOPIC_POPULARITY_CONCENTRATION))
    k = _draw(rng, DOMINANT_TOPIC_COUNT_PROBS, n) + 1
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

    return _Population(
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


def _draw_topics(pop: _Population, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A topic per entry of ``users`` drawn from that user's preference (inverse CDF, in chunks)."""
    u = rng.random(len(users))
    out = np.empty(len(users), dtype=np.int64)
    step = 1 << 16
    for s in range(0, len(users), step):
        out[s : s + step] = (pop.preference_cdf[users[s : s + step]] <= u[s : s + step, None]).sum(axis=1)
    return np.minimum(out, pop.topics - 1)


def _draw_language(pop: _Population, users: np.ndarray, primary_prob: float, rng) -> np.ndarray:
    """Primary language, or (bilingual users, with prob 1 - primary_prob) the secondary one."""
    second = pop.secondary_language[users]
    use_second = (second >= 0) & (rng.random(len(users)) >= primary_prob)
    return np.where(use_second, second, pop.primary_language[users])


def _draw_readers(pop: _Population, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` readers drawn proportionally to their activity weight."""
    cdf = np.cumsum(pop.activity)
    return np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), pop.size - 1)


def _draw_popular(pop: _Population, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` users drawn proportionally to ``exp(lambda)`` (authors, mentioned users)."""
    cdf = np.cumsum(np.exp(pop.log_popularity))
    return np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), pop.size - 1)


# --------------------------------------------------------------------------------------------
# Time layout, tweet pools and impressions
# --------------------------------------------------------------------------------------------


@dataclass
class _SplitLayout:
    rows: dict[str, int]
    bounds: dict[str, tuple[int, int]]  # [start, end) Unix seconds of tweet timestamps

    @classmethod
    def from_fractions(cls, rows: int, valid_fraction: float, test_fraction: float) -> _SplitLayout:
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
class _Tweets:
    """Tweets with at least one impression (index = tweet number)."""

    author: np.ndarray
    language: np.ndarray
    topic: np.ndarray
    timestamp: np.ndarray
    split: np.ndarray


@dataclass
class _Impressions:
    tweets: _Tweets
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
    flat = _AliasTable.build(weights.ravel(), seg).draw(language, rng.random(len(language)))
    slot = flat - language * len(slots)
    return slots[slot] + rng.integers(0, HOUR, len(language))


def _sample_split(
    pop: _Population, n_rows: int, bounds: tuple[int, int], seed: int, split_index: int
) -> tuple[_Tweets, np.ndarray, np.ndarray]:
    """Tweet pool of one split and its ``n_rows`` impressions: (pool, row -> pool tweet, row -> reader)."""
    rng = _rng(seed, "pool", split_index)
    n_pool = max(MIN_POOL, math.ceil(POOL_PER_ROW * n_rows))
    author = _draw_popular(pop, n_pool, rng)
    language = _draw_language(pop, author, WRITE_PRIMARY_PROB, rng)
    topic = _draw_topics(pop, author, rng)
    virality = np.exp(VIRALITY_POP_SLOPE * pop.log_popularity[author] + rng.normal(0, VIRALITY_SIGMA, n_pool))
    timestamp = _tweet_timestamps(language, bounds[0], bounds[1], rng)

    # Sort the pool by (language, topic) so every cell and every language block is contiguous.
    key = language * pop.topics + topic
    order = np.argsort(key, kind="stable")
    author, language, topic, virality, timestamp, key = (
        a[order] for a in (author, language, topic, virality, timestamp, key)
    )
    pool = _Tweets(author, language, topic, timestamp, np.full(n_pool, split_index))
    cum = np.concatenate([[0.0], np.cumsum(virality)])
    cells = np.arange(len(LANGUAGES) * pop.topics)
    cell_lo, cell_hi = np.searchsorted(key, cells, "left"), np.searchsorted(key, cells, "right")
    lang_lo, lang_hi = cell_lo[:: pop.topics], cell_hi[pop.topics - 1 :: pop.topics]

    rng = _rng(seed, "impressions", split_index)
    reader = _draw_readers(pop, n_rows, rng)
    tweet = np.empty(n_rows, dtype=np.int64)
    todo = np.arange(n_rows)
    placed = np.empty(0, dtype=np.int64)  # sorted (tweet, reader) keys of accepted rows
    for attempt in range(MAX_PLACEMENT_ATTEMPTS):
        if attempt >= NEW_READER_AFTER:  # give hard cases another reader
            reader[todo] = _draw_readers(pop, len(todo), rng)
        b = reader[todo]
        lang = _draw_language(pop, b, READ_PRIMARY_PROB, rng)
        cell = lang * pop.topics + _draw_topics(pop, b, rng)
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


def _sample_all_impressions(layout: _SplitLayout, pop: _Population, seed: int) -> _Impressions:
    """Impressions of all splits; tweets renumbered to those with at least one impression."""
    parts = []
    for i, split in enumerate(_SPLITS):
        if layout.rows[split]:
            pool, tweet, reader = _sample_split(pop, layout.rows[split], layout.bounds[split], seed, i)
            used, local = np.unique(tweet, return_inverse=True)
            parts.append((pool, used, local, reader, i))
    base = np.cumsum([0] + [len(used) for _, used, _, _, _ in parts])
    tweets = _Tweets(
        *(
            np.concatenate([getattr(pool, f)[used] for pool, used, _, _, _ in parts])
            for f in ("author", "language", "topic", "timestamp", "split")
        )
    )
    return _Impressions(
        tweets=tweets,
        tweet=np.concatenate([local + base[j] for j, (_, _, local, _, _) in enumerate(parts)]),
        reader=np.concatenate([reader for _, _, _, reader, _ in parts]),
        split=np.concatenate([np.full(len(reader), i) for _, _, _, reader, i in parts]),
    )


# --------------------------------------------------------------------------------------------
# Tweet content: type, media, links, hashtags, text tokens
# --------------------------------------------------------------------------------------------


@dataclass
class _Content:
    tweet_type: np.ndarray  # index into _TWEET_TYPES
    media: np.ndarray  # index into MEDIA_PROBS keys ("" = none)
    n_links: np.ndarray
    fields: list[str]  # first 9 raw fields of each tweet, pre-joined with FIELD_SEP


def _handles(pop: _Population, users: np.ndarray, words: list[str]) -> list[str]:
    """Deterministic handle strings (``@name``) of ``users``: one or two words, maybe '_' and digits."""
    hs = pop.handle_seed[users]
    out = []
    for a, b, c, d in hs.tolist():
        name = words[a % len(words)].capitalize() if c % 2 else words[a % len(words)]
        if b % 5 < 2:
            name += ("_" if c % 5 == 0 else "") + words[b % len(words)]
        if d % 2:
            name += str(d % 10_000)
        out.append("@" + name)
    return out


def _encode_ragged(tok, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = tok.encode_batch(texts, add_special_tokens=False)
    lengths = np.array([len(e.ids) for e in encoded], dtype=np.int64)
    values = np.fromiter((i for e in encoded for i in e.ids), dtype=np.int32, count=int(lengths.sum()))
    return values, np.concatenate([[0], np.cumsum(lengths)])


def _body_tokens(topic: np.ndarray, n_words: np.ndarray, lex: _Lexicon, rng: np.random.Generator) -> np.ndarray:
    """Body words of consecutive tweets (``n_words`` each), concatenated.

    Each word is a word of the tweet's topic (Zipf within the topic) with probability
    TOPIC_WORD_PROB, a common word (Zipf) with COMMON_WORD_PROB, else a word of a random topic.
    """
    word_topic = np.repeat(topic, n_words)
    kind = rng.random(len(word_topic))
    is_common = (kind >= TOPIC_WORD_PROB) & (kind < TOPIC_WORD_PROB + COMMON_WORD_PROB)
    is_noise = kind >= TOPIC_WORD_PROB + COMMON_WORD_PROB
    word_topic[is_noise] = rng.integers(0, len(lex.topic_offsets) - 1, int(is_noise.sum()))
    u = rng.random(len(word_topic))
    tokens = np.empty(len(word_topic), dtype=np.int32)
    tokens[is_common] = lex.common_words[
        lex.common_sampler.draw(np.zeros(int(is_common.sum()), dtype=np.int64), u[is_common])
    ]
    tokens[~is_common] = lex.topic_words[lex.topic_sampler.draw(word_topic[~is_common], u[~is_common])]
    return tokens


def _make_content(tweets: _Tweets, pop: _Population, lex: _Lexicon, tok, rng: np.random.Generator) -> _Content:
    """Type, media, links, hashtags and token ids of every tweet, rendered to the first 9 fields."""
    m = len(tweets.author)
    every = np.arange(m)
    ttype = _draw(rng, list(TWEET_TYPE_PROBS.values()), m)
    media = _draw(rng, list(MEDIA_PROBS.values()), m)
    n_photos = np.where(media == list(MEDIA_PROBS).index("Photo"), _draw(rng, PHOTO_COUNT_PROBS, m) + 1, 0)
    n_links = _draw(rng, LINK_COUNT_PROBS, m)
    n_tags = _draw(rng, HASHTAG_COUNT_PROBS, m)
    is_retweet, is_reply = ttype == _TWEET_TYPES.index("Retweet"), ttype == _TWEET_TYPES.index("Reply")
    n_mentions = np.where(is_reply, _draw(rng, REPLY_MENTION_PROBS, m), 0)
    n_emoji = np.where(rng.random(m) < EMOJI_TWEET_PROB, np.minimum(1 + rng.poisson(EMOJI_EXTRA_MEAN, m), EMOJI_MAX), 0)

    # Mentioned users (the retweeted author, reply targets): popular users other than the author.
    mentioned = _draw_popular(pop, 3 * m, rng).reshape(m, 3)
    mentioned = np.where(mentioned == tweets.author[:, None], (mentioned + 1) % pop.size, mentioned)
    handle_users, handle_row = np.unique(mentioned, return_inverse=True)
    handle_row = handle_row.reshape(m, 3)
    handle_vals, handle_off = _encode_ragged(tok, _handles(pop, handle_users, lex.handle_words))

    # Link pool: t.co links with a domain each; a tweet's links are drawn uniformly from it.
    n_link_slots = int(n_links.sum())
    n_pool_links = max(64, math.ceil(LINKS_PER_LINK_SLOT * n_link_slots))
    n_domains = max(16, n_pool_links // LINKS_PER_DOMAIN)
    chars = np.array(list(LINK_CHARS))[rng.integers(0, len(LINK_CHARS), (n_pool_links, LINK_SUFFIX_LEN))]
    link_vals, link_off = _encode_ragged(tok, ["https://t.co/" + "".join(row) for row in chars.tolist()])
    link_ids = _hex_ids(rng, n_pool_links)
    domain_ids = _hex_ids(rng, n_domains)
    link_domain = _draw(rng, 1.0 / np.arange(1, n_domains + 1) ** DOMAIN_ZIPF, n_pool_links)
    slot_tweet = np.repeat(every, n_links)
    slot_link = rng.integers(0, n_pool_links, n_link_slots)

    # Hashtags: words of the tweet's topic; one hex id per topic word.
    tag_tweet = np.repeat(every, n_tags)
    tag_word = lex.topic_sampler.draw(tweets.topic[tag_tweet], rng.random(len(tag_tweet)))
    hashtag_ids = _hex_ids(rng, len(lex.topic_words))

    # Pieces around the body, in text order, and the room they leave for body words.
    def const_piece(count: np.ndarray, ids: np.ndarray):
        return np.tile(ids, int(count.sum())), count * len(ids)

    ones, retweets = np.ones(m, dtype=np.int64), is_retweet.astype(np.int64)
    mention_mask = np.arange(2)[None, :] < n_mentions[:, None]
    tag_vals = np.concatenate([np.tile(lex.hash_ids, (len(tag_word), 1)), lex.topic_words[tag_word][:, None]], axis=1)
    before = [
        const_piece(ones, np.array([lex.cls], dtype=np.int32)),
        const_piece(retweets, lex.rt_ids),
        _slot_piece(every[is_retweet], handle_row[is_retweet, 0], handle_vals, handle_off, m),
        const_piece(retweets, lex.colon_ids),
        _slot_piece(np.nonzero(mention_mask)[0], handle_row[:, 1:][mention_mask], handle_vals, handle_off, m),
    ]
    after = [
        (np.full(int(n_emoji.sum()), lex.unk, dtype=np.int32), n_emoji),
        (tag_vals.ravel(), n_tags * (len(lex.hash_ids) + 1)),
        _slot_piece(slot_tweet, slot_link, link_vals, link_off, m),
        const_piece(ones, np.array([lex.sep], dtype=np.int32)),
    ]
    room = np.maximum(1, MAX_TOKENS - sum(lens for _, lens in before + after))
    n_words = np.clip(np.rint(rng.lognormal(BODY_LOG_MEAN, BODY_LOG_SIGMA, m)), 1, room).astype(np.int64)

    # Token ids, built and rendered in blocks of tweets to bound memory.
    starts = [np.concatenate([[0], np.cumsum(lens)]) for _, lens in before + after]
    text: list[str] = []
    for a in range(0, m, CONTENT_BLOCK_TWEETS):
        b = min(m, a + CONTENT_BLOCK_TWEETS)
        block = [(vals[st[a] : st[b]], lens[a:b]) for (vals, lens), st in zip(before + after, starts)]
        body = (_body_tokens(tweets.topic[a:b], n_words[a:b], lex, rng), n_words[a:b])
        tokens, offsets = _assemble(block[: len(before)] + [body] + block[len(before) :])
        text.extend(_join_ragged(lex.token_strings, tokens, offsets, LIST_SEP))

    tag_off = np.concatenate([[0], np.cumsum(n_tags)])
    hashtags = _join_ragged(hashtag_ids, tag_word, tag_off, LIST_SEP)
    link_field_off = np.concatenate([[0], np.cumsum(n_links)])
    links = _join_ragged(link_ids, slot_link, link_field_off, LIST_SEP)
    domains = _join_ragged(domain_ids, link_domain[slot_link], link_field_off, LIST_SEP)
    media_names = list(MEDIA_PROBS)  # "" = no media
    media_field = [
        LIST_SEP.join(["Photo"] * k) if k else media_names[j] for j, k in zip(media.tolist(), n_photos.tolist())
    ]
    tweet_ids = _hex_ids(rng, m)
    language_ids = np.array(_language_ids(), dtype=object)[tweets.language].tolist()
    fields = [
        FIELD_SEP.join(f)
        for f in zip(
            text,
            hashtags,
            tweet_ids.tolist(),
            media_field,
            links,
            domains,
            np.array(_TWEET_TYPES, dtype=object)[ttype].tolist(),
            language_ids,
            map(str, tweets.timestamp.tolist()),
        )
    ]
    return _Content(tweet_type=ttype, media=media, n_links=n_links, fields=fields)


# --------------------------------------------------------------------------------------------
# Engagements
# --------------------------------------------------------------------------------------------


@dataclass
class _Labels:
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


def _follows(pop: _Population, author: np.ndarray, reader: np.ndarray, seed: int) -> np.ndarray:
    """b_follows_a: a fixed coin per (author, reader) pair, likelier for popular, like-minded authors."""
    similarity = np.empty(len(author))
    for s in range(0, len(author), 1 << 18):
        sl = slice(s, s + (1 << 18))
        similarity[sl] = np.einsum("ij,ij->i", pop.unit_preference[author[sl]], pop.unit_preference[reader[sl]])
    p = _sigmoid(FOLLOW_INTERCEPT + FOLLOW_POP * pop.popularity_z[author] + FOLLOW_SIM * similarity)
    return _pair_uniform(author, reader, seed) < p


def _calibrate(score: np.ndarray, rate: float) -> float:
    """The intercept b with mean(sigmoid(score + b)) == rate (safeguarded Newton on a bracket)."""
    lo, hi = -40.0, 40.0
    b = math.log(rate / (1 - rate)) - float(np.median(score))
    for _ in range(100):
        p = _sigmoid(score + b)
        gap = p.mean() - rate
        if abs(gap) < 1e-10 * rate:
            break
        lo, hi = (b, hi) if gap < 0 else (lo, b)
        step = b - gap / max(float((p * (1 - p)).mean()), 1e-300)
        b = step if lo < step < hi else 0.5 * (lo + hi)
    return b


def _engagement_features(
    imp: _Impressions, content: _Content, pop: _Population, follows: np.ndarray
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
        "type_retweet": ttype == _TWEET_TYPES.index("Retweet"),
        "type_reply": ttype == _TWEET_TYPES.index("Reply"),
        "type_quote": ttype == _TWEET_TYPES.index("Quote"),
        "photo": media == media_names.index("Photo"),
        "video": media == media_names.index("Video"),
        "gif": media == media_names.index("GIF"),
        "link": content.n_links[t] > 0,
    }
    return {name: np.asarray(columns[name], dtype=np.float64) for name in ENGAGEMENT_COEFFICIENTS}


def _engage(imp: _Impressions, content: _Content, pop: _Population, seed: int) -> tuple[_Labels, np.ndarray]:
    """Draw the four engagements of every row; returns the labels and the calibrated intercepts."""
    rng = _rng(seed, "engagement")
    n = len(imp.tweet)
    follows = _follows(pop, imp.tweets.author[imp.tweet], imp.reader, seed)
    shared = pop.propensity[imp.reader] + ROW_NOISE * rng.standard_normal(n)
    score = np.repeat(shared[:, None], len(TARGETS), axis=1)
    for name, column in _engagement_features(imp, content, pop, follows).items():
        score += column[:, None] * np.array(ENGAGEMENT_COEFFICIENTS[name])[None, :]
    intercepts = np.array([_calibrate(score[:, k], TARGET_RATES[t]) for k, t in enumerate(TARGETS)])
    positive = rng.random((n, len(TARGETS))) < _sigmoid(score + intercepts)
    medians = np.log([ENGAGEMENT_DELAY_MEDIAN_S[t] for t in TARGETS])
    delay = np.ceil(np.exp(medians + ENGAGEMENT_DELAY_SIGMA * rng.standard_normal((n, len(TARGETS)))))
    tweet_ts = imp.tweets.timestamp[imp.tweet][:, None]
    timestamp = np.minimum(tweet_ts + np.maximum(delay, 1).astype(np.int64), PERIOD_END - 1)
    return _Labels(positive=positive, timestamp=timestamp, follows=follows), intercepts


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _open_output(fs, path: str, compression: str | None) -> Iterator:
    """A binary writer for ``path`` with deterministic compression (no timestamps in headers)."""
    with fs.open(path, "wb") as raw:
        if compression is None:
            yield raw
        elif compression == "gzip":
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0) as f:
                yield f
        elif compression == "bz2":
            with bz2.BZ2File(raw, "wb") as f:
                yield f
        else:
            import zstandard

            with zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(raw, closefd=False) as f:
                yield f


def _label_strings(labels: _Labels, rows: np.ndarray, target: str) -> np.ndarray:
    """The label field of ``target`` for ``rows``: the engagement time if positive, else empty."""
    k = TARGETS.index(target)
    out = np.full(len(rows), "", dtype=object)
    positive = labels.positive[rows, k]
    out[positive] = list(map(str, labels.timestamp[rows[positive], k].tolist()))
    return out


def _render(
    rows: np.ndarray,
    imp: _Impressions,
    tweet_fields: np.ndarray,
    user_fields: np.ndarray,
    labels: _Labels,
    labeled: bool,
) -> bytes:
    """The lines of ``rows`` (in that order), newline-terminated, UTF-8."""
    t = imp.tweet[rows]
    columns = [
        tweet_fields[t],
        user_fields[imp.tweets.author[t]],
        user_fields[imp.reader[rows]],
        np.where(labels.follows[rows], "true", "false").astype(object),
    ]
    if labeled:  # raw order: reply, retweet, retweet_with_comment (quote), like
        columns += [_label_strings(labels, rows, target) for target in ("reply", "retweet", "quote", "like")]
    lines = map(FIELD_SEP.join, zip(*(c.tolist() for c in columns)))
    return ("\n".join(lines) + "\n").encode()


def _write_splits(
    out: str,
    imp: _Impressions,
    content: _Content,
    pop: _Population,
    labels: _Labels,
    seed: int,
    rows_per_file: int,
    compression: str | None,
    storage_options: dict,
    log: _Progress,
) -> list[dict]:
    """Shuffle each split once, cut it into files of ``rows_per_file`` lines and write them."""
    fs, root = fsspec.core.url_to_fs(out, **storage_options)
    suffix = _COMPRESSION_SUFFIX[compression]
    boolean = np.array(["false", "true"], dtype=object)
    user_fields = np.array(
        [
            FIELD_SEP.join(f)
            for f in zip(
                pop.ids.tolist(),
                map(str, pop.followers.tolist()),
                map(str, pop.following.tolist()),
                boolean[pop.verified.astype(np.int64)].tolist(),
                map(str, pop.creation.tolist()),
            )
        ],
        dtype=object,
    )
    tweet_fields = np.array(content.fields, dtype=object)
    files = []
    for i, split in enumerate(_SPLITS):
        directory = posixpath.join(root, split)
        fs.makedirs(directory, exist_ok=True)
        for stale in sorted(fs.glob(posixpath.join(directory, "part-*"))):
            fs.rm(stale)
        split_rows = np.flatnonzero(imp.split == i)
        order = split_rows[_rng(seed, "order", i).permutation(len(split_rows))]
        for number, start in enumerate(range(0, len(order), rows_per_file)):
            chunk = order[start : start + rows_per_file]
            name = f"part-{number:05d}{suffix}"
            with _open_output(fs, posixpath.join(directory, name), compression) as f:
                for s in range(0, len(chunk), _WRITE_BATCH_LINES):
                    f.write(
                        _render(
                            chunk[s : s + _WRITE_BATCH_LINES],
                            imp,
                            tweet_fields,
                            user_fields,
                            labels,
                            labeled=split != "test",
                        )
                    )
            files.append({"path": f"{split}/{name}", "split": split, "rows": int(len(chunk))})
            log(f"wrote {split}/{name} ({len(chunk)} rows)")
    return files
