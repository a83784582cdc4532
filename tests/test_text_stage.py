"""The text stage: cleaning, schema, row alignment with ingest, windows vs the Python reference,
determinism across workers/partitioning, the engagement-type prefix."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from microparade.config import build_config
from microparade.engine import run_pipeline
from microparade.recsys_format import TARGET_TIMESTAMP, TARGETS
from microparade.stages.text.clean import (
    clean_token_lists,
    get_tokenizer,
    prefix_table,
    special_tokens,
)
from microparade.stages.text.stage import OUTPUT_SCHEMA
from microparade.stages.text.windows import select_windows_python
from tests.helpers.paths import MBERT_VOCAB

MBERT = str(MBERT_VOCAB)
H = 4
MAX_LENGTH = 32


# --------------------------------------------------------------------------------------------
# cleaning on hand-made token sequences
# --------------------------------------------------------------------------------------------
def source_ids(spec: str, texts: list[str]) -> pa.Array:
    """What the challenge files hold: the source tokenizer's ids with [CLS] ... [SEP]."""
    tok = get_tokenizer(spec)
    return pa.array([tok.encode(t).ids for t in texts], type=pa.list_(pa.int32()))


def rows(values: np.ndarray, offsets: np.ndarray) -> list[list[int]]:
    return [values[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]


def minilm(text: str) -> list[int]:
    return get_tokenizer("minilm").encode(text, add_special_tokens=False).ids


TWEETS = [
    "RT @user_name: Hello https://t.co/AbC123xYz wow",
    "@bob hi @carol_9 check https://t.co/Zz9 and https://t.co/q1W2e3R4",
    "no RT @x here",
    "emoji [UNK] at the end https://t.co/",
    "",
    "I do not know, it's fine.",
]
# What each tweet must become (RT marker and '@' dropped, handles kept, links -> [LINK]).
CLEANED = [
    "user_name: hello [LINK] wow",
    "bob hi carol_9 check [LINK] and [LINK]",
    "no rt x here",
    "emoji [UNK] at the end [LINK]",
    "",
    "I do not know, it's fine.",  # decoding must not rewrite "do not" as "don't"
]


@pytest.mark.parametrize(
    "source,method",
    [("minilm", "tokens"), ("minilm", "text"), (MBERT, "text")],
    ids=["minilm-tokens", "minilm-text", "mbert-text"],
)
def test_cleaning_hand_made(source, method):
    values, offsets = clean_token_lists(source_ids(source, TWEETS), source, "minilm", 62, method)
    got = rows(values, offsets)
    # Literal ids of the first tweet (MiniLM vocabulary): user _ name : hello [ link ] wow.
    assert got[0] == [5310, 1035, 2171, 1024, 7592, 1031, 4957, 1033, 10166]
    assert got == [minilm(t) for t in CLEANED]
    flat = set(values.tolist())
    assert not flat & {101, 102}, "[CLS]/[SEP] must be dropped"
    assert minilm("@")[0] not in flat


def test_auto_method_and_truncation():
    long = " ".join(["word"] * 100) + " https://t.co/abc"
    for source in ("minilm", MBERT):
        values, offsets = clean_token_lists(source_ids(source, [long, "short"]), source, "minilm", 10)
        assert rows(values, offsets) == [minilm("word") * 10, minilm("short")]
    with pytest.raises(ValueError, match="one vocabulary"):
        clean_token_lists(source_ids(MBERT, ["x"]), MBERT, "minilm", 10, method="tokens")
    with pytest.raises(ValueError, match="token id 40000 is not in the source vocabulary"):
        clean_token_lists(pa.array([[101, 40000, 102]], pa.list_(pa.int32())), "minilm", "minilm", 10)


def test_special_tokens_and_prefix_table():
    assert special_tokens("minilm") == {"cls": 101, "sep": 102, "pad": 0, "unk": 100, "link": [1031, 4957, 1033]}
    table = prefix_table("minilm")
    assert table[0] == []
    assert table[1] == minilm("like:") == [2066, 1024]
    assert table[4] == minilm("reply:")
    assert table[1 | 2 | 8] == minilm("like retweet quote:")
    assert table[15] == minilm("like retweet reply quote:")


# --------------------------------------------------------------------------------------------
# the stage, end to end (generate -> ingest -> text)
# --------------------------------------------------------------------------------------------
def config(run_dir: Path, **over) -> dict:
    cfg = {
        "run_dir": str(run_dir),
        "data": {"generate": {"rows": 3000, "rows_per_file": 1000, "seed": 7}},
        "cluster": {"n_workers": 1, "dashboard": False, "memory_limit": "2GiB"},
        "history": {"size": H},
        "text": {"max_length": MAX_LENGTH},
    }
    for key, value in over.items():
        section, name = key.split("__")
        cfg.setdefault(section, {})[name] = value
    return cfg


def run(cfg: dict, seed_from: Path | None = None) -> Path:
    """Run up to text; reuse generate/ingest of ``seed_from`` (same config → they are skipped)."""
    run_dir = Path(cfg["run_dir"])
    if seed_from is not None:
        for stage in ("generate", "ingest"):
            shutil.copytree(seed_from / stage, run_dir / stage)
    outcome = run_pipeline(build_config(cfg), until="text")
    assert outcome["text"] == "ran"
    if seed_from is not None:
        assert outcome["generate"] == outcome["ingest"] == "skipped"
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("text")
    # a: one thread worker; b: three worker processes and six user partitions (same bytes);
    # c: mBERT source text (decode -> clean -> encode), centered windows, prefix.
    a = run(config(base / "a", cluster__processes=False))
    b = run(config(base / "b", cluster__n_workers=3, text__partition_rows=500), seed_from=a)
    c = run(
        config(
            base / "c",
            data__tokenizer=MBERT,
            history__prefix=True,
            history__window="centered",
            cluster__n_workers=2,
            cluster__processes=False,
        )
    )
    return {"a": a, "b": b, "c": c}


def manifest(run_dir: Path, stage: str) -> dict:
    import json

    return json.loads((run_dir / stage / "_MANIFEST.json").read_text())


def ingest_parts(run_dir: Path) -> list[str]:
    return sorted(f["path"] for f in manifest(run_dir, "ingest")["files"] if "/part-" in f["path"])


def test_files_mirror_ingest(runs):
    for run_dir in runs.values():
        parts = ingest_parts(run_dir)
        assert len(parts) == 5  # train 3, valid 1, test 1
        m = manifest(run_dir, "text")
        assert sorted(f["path"] for f in m["files"]) == parts
        for rel in parts:
            out = pq.read_table(run_dir / "text" / rel)
            assert out.schema.equals(OUTPUT_SCHEMA), rel
            ing = pq.read_table(run_dir / "ingest" / rel, columns=["row_id", "tweet_timestamp"])
            assert out.column("row_id").equals(ing.column("row_id")), f"{rel}: rows differ from ingest"
            assert pq.ParquetFile(run_dir / "text" / rel).metadata.row_group(0).column(0).compression == "ZSTD"
            hours = (ing.column("tweet_timestamp").to_numpy() // 3600) % 24
            assert out.column("hour").to_numpy().tolist() == hours.tolist()


def count_runs(lists: list[list[int]], pattern: list[int]) -> int:
    """Occurrences of the id sequence ``pattern`` in every list (via their text forms)."""

    def text(ids: list[int]) -> str:
        return "".join(f"<{i}>" for i in ids)

    needle = text(pattern)
    return sum(text(ids).count(needle) for ids in lists)


def test_candidate_tokens_cleaned(runs):
    for name, source in (("a", "minilm"), ("c", MBERT)):
        run_dir = runs[name]
        link_pattern = get_tokenizer(source).encode("https://t.co/", add_special_tokens=False).ids
        link = special_tokens("minilm")["link"]
        n_links_in = n_links_out = 0
        for rel in ingest_parts(run_dir):
            ing = pq.read_table(run_dir / "ingest" / rel, columns=["text_tokens"]).column("text_tokens")
            out = pq.read_table(run_dir / "text" / rel, columns=["tokens"]).column("tokens").to_pylist()
            for ids in out:
                assert 0 < len(ids) <= MAX_LENGTH - 2
                assert not {101, 102, minilm("@")[0]} & set(ids)
            # Every link of the source text becomes one [LINK] (counted before truncation).
            n_links_in += count_runs(ing.to_pylist(), link_pattern)
            n_links_out += count_runs(rows(*clean_token_lists(ing, source, "minilm", 10_000)), link)
            assert rows(*clean_token_lists(ing, source, "minilm", MAX_LENGTH - 2)) == out
        assert n_links_in > 50 and n_links_out == n_links_in
        extra = manifest(run_dir, "text")["extra"]
        assert extra["cleaning"] == ("tokens" if source == "minilm" else "text")


def load_log(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Ingest rows + text outputs of every split, in file order (split code = position in SPLITS)."""
    frames = []
    for rel in ingest_parts(run_dir):
        split = rel.split("/")[0]
        cols = ["row_id", "b_user_id", "tweet_id", "tweet_timestamp", *[TARGET_TIMESTAMP[t] for t in TARGETS]]
        ing = pq.read_table(run_dir / "ingest" / rel, columns=cols).to_pandas()
        out = pq.read_table(run_dir / "text" / rel).to_pandas()
        assert (ing["row_id"].to_numpy() == out["row_id"].to_numpy()).all()
        code = ("train", "valid", "test").index(split)
        frames.append(pd.concat([ing, out.drop(columns="row_id")], axis=1).assign(split=code))
    log = pd.concat(frames, ignore_index=True)
    stamps = log[[TARGET_TIMESTAMP[t] for t in TARGETS]]
    log["mask"] = sum(stamps[TARGET_TIMESTAMP[t]].notna().astype(int) * bit for t, bit in zip(TARGETS, (1, 2, 4, 8)))
    log["eng_time"] = stamps.min(axis=1)
    return log, log[(log["mask"] > 0) & (log["split"] < 2)]


@pytest.mark.parametrize("name,window,prefix", [("a", "past", False), ("c", "centered", True)])
def test_histories_match_python_reference(runs, name, window, prefix):
    log, engaged = load_log(runs[name])
    assert len(engaged) > 500 and log["split"].eq(2).sum() == 300
    eng = pd.DataFrame(
        {
            "user": engaged["b_user_id"].to_numpy(),
            "time": engaged["eng_time"].to_numpy().astype(np.int64),
            "tweet": engaged["tweet_id"].to_numpy(),
            "split": engaged["split"].to_numpy(),
            "row_id": engaged["row_id"].to_numpy(),
        }
    )
    targets = pd.DataFrame(
        {
            "user": log["b_user_id"].to_numpy(),
            "time": log["tweet_timestamp"].to_numpy(),
            "tweet": log["tweet_id"].to_numpy(),
            "split": log["split"].to_numpy(),
            "row_id": log["row_id"].to_numpy(),
        }
    )
    win = select_windows_python(eng, targets, H, window)
    table = prefix_table("minilm")
    e_tokens = [list(t) for t in engaged["tokens"]]
    e_mask, e_hour = engaged["mask"].to_numpy(), (engaged["eng_time"].to_numpy().astype(np.int64) // 3600) % 24
    n_full = 0
    for i, row in enumerate(win):
        valid = row[row >= 0]
        n = len(valid)
        n_full += n == H
        exp_tokens = [((table[e_mask[j]] if prefix else []) + e_tokens[j])[: MAX_LENGTH - 2] for j in valid] + [[]] * (
            H - n
        )
        got = log.iloc[i]
        assert [list(x) for x in got["hist_tokens"]] == exp_tokens, f"row {i}"
        assert list(got["hist_engagement"]) == [int(e_mask[j]) for j in valid] + [0] * (H - n)
        assert list(got["hist_hour"]) == [int(e_hour[j]) for j in valid] + [24] * (H - n)
        assert list(got["hist_mask"]) == [True] * n + [False] * (H - n)
        assert got["hist_len"] == n
    assert n_full > 100, "the synthetic data should fill some windows"
    hist = manifest(runs[name], "text")["extra"]["hist_len_hist"]
    for code, split in enumerate(("train", "valid", "test")):
        counts = np.bincount(log.loc[log["split"] == code, "hist_len"], minlength=H + 1)
        assert hist[split] == counts.tolist()


def test_prefix_is_prepended(runs):
    log, _ = load_log(runs["c"])
    table = prefix_table("minilm")
    checked = 0
    for items, masks, n in zip(log["hist_tokens"], log["hist_engagement"], log["hist_len"]):
        for item, mask in zip(items[:n], masks[:n]):
            assert mask > 0 and list(item[: len(table[mask])]) == table[mask]
            checked += 1
    assert checked > 1000


def test_same_bytes_whatever_workers_and_partitioning(runs):
    a, b = manifest(runs["a"], "text"), manifest(runs["b"], "text")
    assert a["extra"]["user_partitions"] == 1 and b["extra"]["user_partitions"] == 6
    assert {f["path"]: f["sha256"] for f in a["files"]} == {f["path"]: f["sha256"] for f in b["files"]}


def test_manifest_extra(runs):
    extra = manifest(runs["c"], "text")["extra"]
    assert extra["history"] == {"size": H, "window": "centered", "prefix": True, "sources": ["train", "valid"]}
    assert extra["max_length"] == MAX_LENGTH
    assert extra["encoder_tokenizer"] == "minilm"
    assert extra["special_tokens"] == special_tokens("minilm")
    assert sum(sum(v) for v in extra["hist_len_hist"].values()) == 3000
