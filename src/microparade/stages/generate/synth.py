"""Synthetic Twitter RecSys Challenge 2021 data with planted, documented signal.

:func:`generate_dataset` writes raw files in the exact challenge format (``\\x01``-separated
fields, 24 per line for train/valid, 20 for test) under ``{out}/{split}/part-NNNNN[.gz|.bz2|.zst]``.
The generative model (populations, distributions, the planted engagement model and its
coefficients) is documented in ``docs/synthetic-data.md``; its parameters are the constants of
:mod:`.params`. The steps live in their own modules: :mod:`.lexicon` (topic vocabularies),
:mod:`.population` (users), :mod:`.impressions` (tweet pools and rows), :mod:`.content` (the tweet
fields) and :mod:`.engagement` (labels); this module validates the arguments and writes the files.

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
import posixpath
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

import numpy as np

from ...assets import resolve_model_path
from ...recsys_format import FIELD_SEP, TARGETS
from ...storage import filesystem, join, write_url
from .content import Content, make_content
from .engagement import Labels, engage
from .impressions import Impressions, SplitLayout, sample_impressions
from .lexicon import load_lexicon
from .params import (
    ACCOUNT_CREATION_RANGE,
    ENGLISH_LANGUAGE_ID,
    GENERATOR_VERSION,
    PERIOD_END,
    PERIOD_START,
    SPLITS,
    TARGET_RATES,
)
from .population import Population, make_population
from .sampling import stream_rng

__all__ = [
    "ACCOUNT_CREATION_RANGE",
    "ENGLISH_LANGUAGE_ID",
    "PERIOD_END",
    "PERIOD_START",
    "TARGET_RATES",
    "generate_dataset",
    "topic_vocabularies",
    "topics_of_texts",
]

#: Compression levels (bz2 uses its default, 9); gzip headers carry no timestamp or file name.
GZIP_LEVEL, ZSTD_LEVEL = 4, 3

_COMPRESSION_SUFFIX = {None: "", "gzip": ".gz", "bz2": ".bz2", "zstd": ".zst"}
_WRITE_BATCH_LINES = 65_536


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
    tok, lexicon = load_lexicon(tokenizer_dir, topics, seed)
    population = make_population(n_users, topics, stream_rng(seed, "users"))
    layout = SplitLayout.from_fractions(rows, valid_fraction, test_fraction)
    log(f"{n_users} users, {topics} topics, splits {layout.rows}")

    impressions = sample_impressions(layout, population, seed)
    log(f"{rows} impressions of {len(impressions.tweets.author)} tweets sampled")
    content = make_content(impressions.tweets, population, lexicon, tok, stream_rng(seed, "content"))
    labels, intercepts = engage(impressions, content, population, seed)
    log("engagements drawn; writing files")

    files = _write_splits(
        out, impressions, content, population, labels, seed, rows_per_file, compression, storage_options or {}, log
    )
    log(f"done: {rows} rows in {time.perf_counter() - started:.1f} s")
    params = {
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
    }
    return {
        "files": files,
        "rows": dict(layout.rows),
        "label_rates": _label_rates(labels, impressions, layout),
        "params": params | _model_params(layout, intercepts),
        "tweets": int(len(impressions.tweets.author)),
    }


def topic_vocabularies(tokenizer: str | None = None, *, seed: int = 0, topics: int = 48) -> list[np.ndarray]:
    """Token ids of each topic's vocabulary, exactly as :func:`generate_dataset` builds them.

    Useful to analyse generated data: a tweet's topic is the vocabulary most of its words come
    from (see :func:`topics_of_texts`).
    """
    _, lexicon = load_lexicon(str(resolve_model_path(tokenizer)), topics, seed)
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
    token_topic = np.where((flat >= 0) & (flat < size), lookup[np.clip(flat, 0, size - 1)], -1)
    hit = token_topic >= 0
    counts = np.bincount(owner[hit] * len(vocabularies) + token_topic[hit], minlength=len(texts) * len(vocabularies))
    counts = counts.reshape(len(texts), len(vocabularies))
    return np.where(counts.max(axis=1) > 0, counts.argmax(axis=1), -1)


def _label_rates(labels: Labels, impressions: Impressions, layout: SplitLayout) -> dict[str, dict[str, float]]:
    """Positive rate of every target in every split (0.0 for a split without rows)."""
    return {
        split: {
            t: float(labels.positive[impressions.split == i, k].mean()) if layout.rows[split] else 0.0
            for k, t in enumerate(TARGETS)
        }
        for i, split in enumerate(SPLITS)
    }


def _model_params(layout: SplitLayout, intercepts: np.ndarray) -> dict:
    """The period bounds, target rates and calibrated intercepts of a generated dataset."""
    return {
        "period": {
            "start": PERIOD_START,
            "train_end": layout.bounds["train"][1],
            "valid_end": layout.bounds["valid"][1],
            "end": PERIOD_END,
        },
        "target_rates": dict(TARGET_RATES),
        "intercepts": {t: float(b) for t, b in zip(TARGETS, intercepts)},
    }


# --------------------------------------------------------------------------------------------
# Small utilities
# --------------------------------------------------------------------------------------------


def _validate(
    rows: int,
    n_users: int,
    seed: int,
    valid_fraction: float,
    test_fraction: float,
    rows_per_file: int,
    compression: str | None,
    topics: int,
) -> None:
    """Raise ValueError naming the first argument of :func:`generate_dataset` that is out of range."""
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

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"[generate {time.perf_counter() - self.t0:6.1f}s] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _write_output(
    url: str, rows: np.ndarray, render: Callable[[np.ndarray], bytes], compression: str | None, storage_options: dict
) -> None:
    """Write the lines of ``rows`` (``render(batch)`` for batches of :data:`_WRITE_BATCH_LINES` rows)
    to ``url`` with deterministic compression (no timestamps in headers); a transient I/O error
    writes the file again from its first line."""

    def write(raw: IO[bytes]) -> None:
        with contextlib.ExitStack() as stack:
            f: Any = raw
            if compression == "gzip":
                f = stack.enter_context(
                    gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0)
                )
            elif compression == "bz2":
                f = stack.enter_context(bz2.BZ2File(raw, "wb"))
            elif compression is not None:
                import zstandard

                f = stack.enter_context(zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(raw, closefd=False))
            for s in range(0, len(rows), _WRITE_BATCH_LINES):
                f.write(render(rows[s : s + _WRITE_BATCH_LINES]))

    write_url(url, write, storage_options)


def _label_strings(labels: Labels, rows: np.ndarray, target: str) -> np.ndarray:
    """The label field of ``target`` for ``rows``: the engagement time if positive, else empty."""
    k = TARGETS.index(target)
    out = np.full(len(rows), "", dtype=object)
    positive = labels.positive[rows, k]
    out[positive] = list(map(str, labels.timestamp[rows[positive], k].tolist()))
    return out


def _render(
    rows: np.ndarray,
    imp: Impressions,
    tweet_fields: np.ndarray,
    user_fields: np.ndarray,
    labels: Labels,
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
    imp: Impressions,
    content: Content,
    pop: Population,
    labels: Labels,
    seed: int,
    rows_per_file: int,
    compression: str | None,
    storage_options: dict,
    log: _Progress,
) -> list[dict]:
    """Shuffle each split once, cut it into files of ``rows_per_file`` lines and write them."""
    fs, root = filesystem(out, storage_options)
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
    for i, split in enumerate(SPLITS):
        directory = posixpath.join(root, split)
        fs.makedirs(directory, exist_ok=True)
        for stale in sorted(fs.glob(posixpath.join(directory, "part-*"))):
            fs.rm(stale)
        split_rows = np.flatnonzero(imp.split == i)
        order = split_rows[stream_rng(seed, "order", i).permutation(len(split_rows))]
        for number, start in enumerate(range(0, len(order), rows_per_file)):
            chunk = order[start : start + rows_per_file]
            name = f"part-{number:05d}{suffix}"
            render = functools.partial(
                _render,
                imp=imp,
                tweet_fields=tweet_fields,
                user_fields=user_fields,
                labels=labels,
                labeled=split != "test",
            )
            _write_output(join(out, split, name), chunk, render, compression, storage_options)
            files.append({"path": f"{split}/{name}", "split": split, "rows": int(len(chunk))})
            log(f"wrote {split}/{name} ({len(chunk)} rows)")
    return files
