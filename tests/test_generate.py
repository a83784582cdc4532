"""Tests of the synthetic RecSys 2021 generator (:mod:`microparade.stages.generate`)."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import fsspec
import numpy as np
import pytest

from microparade import recsys_format as recsys
from microparade.assets import load_tokenizer
from microparade.stages.generate.synth import (
    ACCOUNT_CREATION_RANGE,
    ENGLISH_LANGUAGE_ID,
    PERIOD_END,
    PERIOD_START,
    TARGET_RATES,
    generate_dataset,
    topic_vocabularies,
    topics_of_texts,
)
from tests.helpers.paths import MBERT_VOCAB as MBERT_DIR

SPLITS = ("train", "valid", "test")
HEX = re.compile(r"[0-9A-F]{32}")
BIG_ROWS = 200_000
BIG_SEED = 7
COL = {name: i for i, name in enumerate(recsys.COLUMNS)}
#: Label columns in file order (reply, retweet, quote, like) mapped to their target names.
LABEL_TARGETS = {
    "reply_timestamp": "reply",
    "retweet_timestamp": "retweet",
    "quote_timestamp": "quote",
    "like_timestamp": "like",
}


def read_lines(fs, root: str, split: str) -> list[str]:
    """All lines of a split through fsspec, files in name order, decompressed by suffix."""
    lines: list[str] = []
    for path in sorted(fs.glob(f"{root}/{split}/part-*")):
        with fs.open(path, "rb", compression="infer") as f:
            lines.extend(f.read().decode("utf-8").split("\n")[:-1])
    return lines


def local_lines(root: Path, split: str) -> list[str]:
    return [line for p in sorted((root / split).glob("part-*")) for line in p.read_text("utf-8").split("\n")[:-1]]


def sha256_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """200k rows with the default (MiniLM) tokenizer, parsed into field lists per split."""
    out = tmp_path_factory.mktemp("big")
    summary = generate_dataset(str(out), rows=BIG_ROWS, seed=BIG_SEED, progress=False)
    rows = {split: [line.split(recsys.FIELD_SEP) for line in local_lines(out, split)] for split in SPLITS}
    return out, summary, rows


def test_layout_and_summary(big):
    out, summary, rows = big
    json.dumps(summary)
    assert summary["rows"] == {"train": 160_000, "valid": 20_000, "test": 20_000}
    assert {split: len(r) for split, r in rows.items()} == summary["rows"]
    assert [f["path"] for f in summary["files"]] == ["train/part-00000", "valid/part-00000", "test/part-00000"]
    for f in summary["files"]:
        assert (out / f["path"]).is_file()
    params = summary["params"]
    assert params["users"] == BIG_ROWS // 25 and params["seed"] == BIG_SEED and params["topics"] == 48
    assert Path(params["tokenizer"]).is_dir()
    assert params["period"]["start"] == PERIOD_START and params["period"]["end"] == PERIOD_END


def test_field_formats(big):
    _, _, rows = big
    for split, split_rows in rows.items():
        n_fields = recsys.N_FIELDS_TEST if split == "test" else recsys.N_FIELDS_LABELED
        assert {len(f) for f in split_rows} == {n_fields}
        columns = dict(zip(recsys.COLUMNS, zip(*split_rows)))
        for name in recsys.HEX_COLUMNS:
            assert all(HEX.fullmatch(x) for x in set(columns[name])), name
        for name in recsys.LIST_HEX_COLUMNS:
            assert all(HEX.fullmatch(x) for v in set(columns[name]) if v for x in v.split("\t")), name
        assert {m for v in set(columns["present_media"]) if v for m in v.split("\t")} == set(recsys.MEDIA_TYPES)
        assert set(columns["tweet_type"]) == set(recsys.TWEET_TYPES)
        for name in recsys.BOOL_COLUMNS:
            assert set(columns[name]) <= {"true", "false"}, name
        for name in recsys.INT_COLUMNS:
            assert all(x.isdigit() for x in set(columns[name])), name
        for name in ("a_account_creation", "b_account_creation"):
            created = np.array(columns[name], dtype=np.int64)
            assert created.min() >= ACCOUNT_CREATION_RANGE[0] and created.max() < ACCOUNT_CREATION_RANGE[1]
        for text in set(columns["text_tokens"]):
            tokens = text.split("\t")
            assert tokens[0] == "101" and tokens[-1] == "102" and all(t.isdigit() for t in tokens)
        assert all(a != b for a, b in zip(columns["a_user_id"], columns["b_user_id"]))
        assert all(
            len(links.split("\t")) == len(domains.split("\t"))
            for links, domains in zip(columns["present_links"], columns["present_domains"])
        )
        tweet_ts = np.array(columns["tweet_timestamp"], dtype=np.int64)
        assert tweet_ts.min() >= PERIOD_START and tweet_ts.max() < PERIOD_END
        for name in recsys.LABEL_COLUMNS[: n_fields - recsys.N_FIELDS_TEST]:
            positive = np.array([bool(x) for x in columns[name]])
            engaged = np.array([int(x) for x in columns[name] if x], dtype=np.int64)
            assert positive.any()
            assert np.all(engaged >= tweet_ts[positive]) and engaged.max() < PERIOD_END
            assert np.median(engaged - tweet_ts[positive]) < 3_600 < np.percentile(engaged - tweet_ts[positive], 99)


def test_split_time_order_and_unique_impressions(big):
    _, _, rows = big
    spans = [
        (min(int(f[COL["tweet_timestamp"]]) for f in rows[s]), max(int(f[COL["tweet_timestamp"]]) for f in rows[s]))
        for s in SPLITS
    ]
    assert spans[0][1] <= spans[1][0] and spans[1][1] <= spans[2][0]
    assert spans[0][1] < PERIOD_START + 21 * 86_400 <= spans[1][0]
    all_rows = [f for s in SPLITS for f in rows[s]]
    pairs = Counter((f[COL["tweet_id"]], f[COL["b_user_id"]]) for f in all_rows)
    assert max(pairs.values()) == 1
    per_tweet = Counter(f[COL["tweet_id"]] for f in all_rows)
    assert max(per_tweet.values()) > 20  # popular tweets are shown to many readers
    # Rows of a file are shuffled, not sorted by time.
    ts = np.array([int(f[COL["tweet_timestamp"]]) for f in rows["train"][:1000]])
    assert not (np.all(np.diff(ts) >= 0) or np.all(np.diff(ts) <= 0))


def test_label_rates(big):
    _, summary, rows = big
    positives = Counter()
    for split in ("train", "valid"):
        file_rates = {}
        for name, target in LABEL_TARGETS.items():
            count = sum(1 for f in rows[split] if f[COL[name]])
            positives[target] += count
            file_rates[target] = count / len(rows[split])
        assert file_rates == pytest.approx(summary["label_rates"][split])
    n_test = summary["rows"]["test"]
    for target, rate in TARGET_RATES.items():
        overall = (positives[target] + summary["label_rates"]["test"][target] * n_test) / BIG_ROWS
        assert abs(overall / rate - 1) <= 0.15, (target, overall)
    # Several engagements on one row happen, more often than if they were independent.
    train = rows["train"]
    like = np.array([bool(f[COL["like_timestamp"]]) for f in train])
    retweet = np.array([bool(f[COL["retweet_timestamp"]]) for f in train])
    assert (like & retweet).mean() > like.mean() * retweet.mean()


def test_text_and_content(big):
    _, _, rows = big
    lengths = np.array([f[COL["text_tokens"]].count("\t") + 1 for s in SPLITS for f in rows[s]])
    assert 40 <= lengths.mean() <= 60 and 35 <= np.median(lengths) <= 50 and lengths.max() <= 290
    tweets = {f[COL["tweet_id"]]: f for s in SPLITS for f in rows[s]}
    n = len(tweets)
    types = Counter(f[COL["tweet_type"]] for f in tweets.values())
    for name, share in {"TopLevel": 0.55, "Retweet": 0.25, "Reply": 0.15, "Quote": 0.05}.items():
        assert abs(types[name] / n - share) < 0.03
    media = Counter(m for f in tweets.values() for m in set(f[COL["present_media"]].split("\t")) if m)
    for name, share in {"Photo": 0.25, "Video": 0.10, "GIF": 0.02}.items():
        assert abs(media[name] / n - share) < 0.02
    assert abs(sum(bool(f[COL["present_links"]]) for f in tweets.values()) / n - 0.20) < 0.02
    tok = load_tokenizer(None)
    hash_id, at_id, rt_id = (str(tok.token_to_id(t)) for t in ("#", "@", "rt"))
    for f in tweets.values():
        tokens = f[COL["text_tokens"]].split("\t")
        tags = f[COL["hashtags"]]
        assert tokens.count(hash_id) == (len(tags.split("\t")) if tags else 0)
        if f[COL["tweet_type"]] == "Retweet":
            assert tokens[1:3] == [rt_id, at_id]
    languages = Counter(f[COL["language"]] for s in SPLITS for f in rows[s])
    assert languages.most_common(1)[0][0] == ENGLISH_LANGUAGE_ID
    assert 0.38 <= languages[ENGLISH_LANGUAGE_ID] / BIG_ROWS <= 0.52
    assert len(languages) >= 30
    # Readers mostly read one or two languages.
    by_reader = defaultdict(Counter)
    for f in rows["train"]:
        by_reader[f[COL["b_user_id"]]][f[COL["language"]]] += 1
    top2 = [sum(c for _, c in langs.most_common(2)) / sum(langs.values()) for langs in by_reader.values()]
    assert np.mean(top2) > 0.9
    # Heavy-tailed reader activity and author popularity.
    reader_counts = np.array(sorted(Counter(f[COL["b_user_id"]] for f in rows["train"]).values()))
    assert reader_counts[-1] > 20 * np.median(reader_counts)
    decoded = tok.decode([int(t) for t in next(f for f in tweets.values() if f[COL["present_links"]])[0].split("\t")])
    assert "https : / / t. co /" in decoded


def test_planted_topic_signal(big):
    """Held out in time, a reader likes tweets on the topics of their earlier likes far more often.

    Without the planted topic effect the two rates are within a few percent of each other (the
    impression mix alone does not change engagement rates).
    """
    _, _, rows = big
    vocabularies = topic_vocabularies(None, seed=BIG_SEED, topics=48)
    train = sorted(rows["train"], key=lambda f: int(f[COL["tweet_timestamp"]]))
    texts = {f[COL["tweet_id"]]: f[COL["text_tokens"]] for f in train}
    ids = list(texts)
    topics = topics_of_texts([np.array(texts[i].split("\t"), dtype=np.int64) for i in ids], vocabularies)
    assert (topics >= 0).mean() > 0.99
    topic_of = dict(zip(ids, topics.tolist()))
    history = defaultdict(list)
    for f in train:
        history[f[COL["b_user_id"]]].append((topic_of[f[COL["tweet_id"]]], bool(f[COL["like_timestamp"]])))
    outcome = {True: [], False: []}
    for events in history.values():
        half = len(events) // 2
        liked = Counter(topic for topic, like in events[:half] if like)
        if liked:
            top = {topic for topic, _ in liked.most_common(2)}
            for topic, like in events[half:]:
                outcome[topic in top].append(like)
    on_topic, off_topic = np.mean(outcome[True]), np.mean(outcome[False])
    assert min(len(outcome[True]), len(outcome[False])) > 5_000
    assert on_topic > 1.8 * off_topic, (on_topic, off_topic)


def test_deterministic_and_rows_per_file_independent(tmp_path):
    kwargs = dict(rows=20_000, seed=3, progress=False)
    generate_dataset(str(tmp_path / "a"), **kwargs)
    generate_dataset(str(tmp_path / "b"), **kwargs)
    assert sha256_tree(tmp_path / "a") == sha256_tree(tmp_path / "b")
    generate_dataset(str(tmp_path / "c"), rows_per_file=3_000, **kwargs)
    assert sorted(p.name for p in (tmp_path / "c" / "train").iterdir()) == [f"part-{i:05d}" for i in range(6)]
    for split in SPLITS:
        assert local_lines(tmp_path / "a", split) == local_lines(tmp_path / "c", split)
    generate_dataset(str(tmp_path / "d"), **{**kwargs, "seed": 4})
    assert local_lines(tmp_path / "a", "train") != local_lines(tmp_path / "d", "train")


@pytest.mark.parametrize("compression, suffix", [("gzip", ".gz"), ("bz2", ".bz2"), ("zstd", ".zst")])
def test_compression_roundtrip(compression, suffix):
    fs = fsspec.filesystem("memory")
    root = f"/gen-{compression}"
    kwargs = dict(rows=3_000, seed=5, progress=False)
    plain = generate_dataset(f"memory://{root}/plain", **kwargs)
    packed = generate_dataset(f"memory://{root}/packed", compression=compression, **kwargs)
    assert [f["path"] for f in packed["files"]] == [f["path"] + suffix for f in plain["files"]]
    for split in SPLITS:
        assert read_lines(fs, f"{root}/packed", split) == read_lines(fs, f"{root}/plain", split)
    # No timestamps in compressed headers: a second run gives the same bytes.
    again = generate_dataset(f"memory://{root}/again", compression=compression, **kwargs)
    for f in again["files"]:
        assert fs.cat(f"{root}/again/{f['path']}") == fs.cat(f"{root}/packed/{f['path']}")
    fs.rm(root, recursive=True)


def test_stale_parts_removed(tmp_path):
    generate_dataset(str(tmp_path), rows=2_000, rows_per_file=500, seed=1, progress=False)
    assert len(list((tmp_path / "train").glob("part-*"))) == 4
    generate_dataset(str(tmp_path), rows=2_000, seed=1, progress=False)
    assert [p.name for p in (tmp_path / "train").glob("part-*")] == ["part-00000"]


def test_mbert_tokenizer(tmp_path):
    summary = generate_dataset(str(tmp_path), rows=5_000, seed=2, tokenizer=str(MBERT_DIR), progress=False)
    assert Path(summary["params"]["tokenizer"]) == MBERT_DIR
    tok = load_tokenizer(str(MBERT_DIR))
    rt_id, at_id = str(tok.token_to_id("RT")), str(tok.token_to_id("@"))
    lengths = []
    for split in SPLITS:
        for line in local_lines(tmp_path, split):
            f = line.split(recsys.FIELD_SEP)
            tokens = [int(t) for t in f[COL["text_tokens"]].split("\t")]
            assert tokens[0] == recsys.MBERT_CLS and tokens[-1] == recsys.MBERT_SEP
            assert max(tokens) < tok.get_vocab_size()
            if f[COL["tweet_type"]] == "Retweet":
                assert f[COL["text_tokens"]].split("\t")[1:3] == [rt_id, at_id]
            lengths.append(len(tokens))
    assert 40 <= np.mean(lengths) <= 60 and max(lengths) <= 290
    vocabularies = topic_vocabularies(str(MBERT_DIR), seed=2)
    assert all(60 <= len(v) <= 200 for v in vocabularies)
    assert len(np.unique(np.concatenate(vocabularies))) == sum(len(v) for v in vocabularies)


def test_small_population_and_empty_splits(tmp_path):
    summary = generate_dataset(
        str(tmp_path), rows=500, users=10, seed=0, valid_fraction=0.0, test_fraction=0.2, progress=False
    )
    assert summary["rows"] == {"train": 400, "valid": 0, "test": 100}
    assert [f["split"] for f in summary["files"]] == ["train", "test"]
    lines = local_lines(tmp_path, "train") + local_lines(tmp_path, "test")
    assert len({(f[COL["tweet_id"]], f[COL["b_user_id"]]) for f in (x.split("\x01") for x in lines)}) == 500


def test_topics_of_texts():
    vocabularies = [np.array([10, 11, 12]), np.array([20, 21])]
    assert topics_of_texts([[101, 10, 20, 21, 102], [101, 12, 102], [101, 5, 102], []], vocabularies).tolist() == [
        1,
        0,
        -1,
        -1,
    ]


@pytest.mark.parametrize(
    "bad",
    [
        dict(rows=0),
        dict(rows=100, compression="lz4"),
        dict(rows=100, valid_fraction=0.6, test_fraction=0.5),
        dict(rows=100, users=5),
        dict(rows=100, seed=-1),
        dict(rows=100, rows_per_file=0),
    ],
)
def test_invalid_arguments(tmp_path, bad):
    with pytest.raises(ValueError):
        generate_dataset(str(tmp_path), progress=False, **bad)
