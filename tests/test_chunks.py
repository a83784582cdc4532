"""Tests of the chunks stage (docs/data-format.md §7).

The upstream stages' outputs (ingest §4, text §5, features §6) are built here: tiny stand-in stage
modules write them from one in-memory dataset, and the real stage runner publishes them with real
manifests. The chunks stage under test is the real one, run through :func:`run_stage`.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from microparade.config import build_config
from microparade.engine import RunSession, StageError, read_manifest, run_stage
from microparade.engine.registry import STAGES, StageSpec
from microparade.recsys_format import COLUMNS, TARGET_TIMESTAMP, TARGETS
from microparade.stages.chunks.stage import (
    ChunkPlan,
    chunk_schema,
    plan_chunks,
    shuffle_keys,
)
from microparade.storage import Store

ROOT = Path(__file__).resolve().parents[1]
H = 6  # history.size of the fake text stage
FEATURES = ["a_follower_count_log", "te_like_b_user_id", "count_tweet_id", "lag_1", "hour_sin"]
SPLIT_ROWS = {"train": 4200, "valid": 900, "test": 600}
TARGET_MB = 0.4
SPECIAL = {"cls": 101, "sep": 102, "pad": 0, "unk": 100, "link": 1000}


# ----------------------------------------------------------------------------------------------
# a synthetic dataset in the upstream formats
# ----------------------------------------------------------------------------------------------
def _hex_ids(rng: np.random.Generator, n: int, pool: int) -> list[str]:
    ids = rng.integers(0, 2**63, size=(pool, 2))
    names = [f"{a:016X}{b:016X}" for a, b in ids]
    return [names[i] for i in rng.integers(0, pool, size=n)]


def _token_values(rng: np.random.Generator, n: int) -> np.ndarray:
    """Zipf-distributed MiniLM-range ids: compress like real text, not like noise."""
    return ((rng.zipf(1.25, size=n) - 1) % 27000 + 1996).astype(np.int32)


def _lengths(rng: np.random.Generator, n: int) -> np.ndarray:
    """Tweet lengths like the real data (mean ≈ 45 content tokens), cut at max_length - 2 = 62."""
    return np.clip(rng.normal(45, 18, size=n), 3, 62).astype(np.int32)


def make_split(split: str, n: int, seed: int, short_rows: int = 0) -> dict[str, pa.Table]:
    """Ingest (§4, every column), text (§5) and features (§6) tables of one split, row_id order.

    ``short_rows``: the rows that come first in the shuffled order (seed 0) get 3-token tweets and
    no history, so a size estimate made on them alone is far too low.
    """
    rng = np.random.default_rng(seed)
    labelled = split != "test"
    # row_id = (file_index << 40) | byte offset of the line; two raw files per split.
    file_index = (np.arange(n) >= n // 2).astype(np.int64)
    offsets = np.cumsum(rng.integers(400, 900, size=n)) - 400
    offsets -= np.where(file_index == 1, offsets[n // 2], 0)
    row_id = (file_index << 40) | offsets
    short = np.zeros(n, dtype=bool)
    short[np.argsort(shuffle_keys(row_id, 0))[:short_rows]] = True
    clen = np.where(short, 3, _lengths(rng, n))
    tokens = pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(clen)]).astype(np.int32)), pa.array(_token_values(rng, int(clen.sum())))
    )
    ts = rng.integers(1_612_396_800, 1_614_211_200, size=n)
    ing: dict[str, pa.Array] = {
        "text_tokens": tokens,
        "hashtags": pa.array([[]] * n, pa.list_(pa.string())),
        "tweet_id": pa.array(_hex_ids(rng, n, n // 3 + 1)),
        "present_media": pa.array([["Photo"] if x else [] for x in rng.random(n) < 0.3], pa.list_(pa.string())),
        "present_links": pa.array([[]] * n, pa.list_(pa.string())),
        "present_domains": pa.array([[]] * n, pa.list_(pa.string())),
        "tweet_type": pa.array(rng.choice(["TopLevel", "Retweet", "Quote", "Reply"], size=n)),
        "language": pa.array(["488B32D24BD4BB44172EB981C1BCA6FA"] * n),
        "tweet_timestamp": pa.array(ts),
        "a_user_id": pa.array(_hex_ids(rng, n, 300)),
        "a_follower_count": pa.array(rng.integers(0, 2_000_000, size=n)),
        "a_following_count": pa.array(rng.integers(0, 5000, size=n)),
        "a_is_verified": pa.array(rng.random(n) < 0.1),
        "a_account_creation": pa.array(ts - rng.integers(10**6, 10**8, size=n)),
        "b_user_id": pa.array(_hex_ids(rng, n, 500)),
        "b_follower_count": pa.array(rng.integers(0, 5000, size=n)),
        "b_following_count": pa.array(rng.integers(0, 5000, size=n)),
        "b_is_verified": pa.array(rng.random(n) < 0.01),
        "b_account_creation": pa.array(ts - rng.integers(10**6, 10**8, size=n)),
        "b_follows_a": pa.array(rng.random(n) < 0.4),
    }
    for t, rate in zip(("reply", "retweet", "quote", "like"), (0.03, 0.1, 0.01, 0.4)):
        hit = rng.random(n) < rate if labelled else np.zeros(n, bool)
        ing[TARGET_TIMESTAMP[t]] = pa.array(ts + 60, mask=~hit)
    ing["row_id"] = pa.array(row_id)
    ingest = pa.table({c: ing[c] for c in (*COLUMNS, "row_id")})

    k = np.where(short, 0, rng.binomial(H, 0.45, size=n))
    valid = np.arange(H)[None, :] < k[:, None]
    inner = np.where(valid, _lengths(rng, n * H).reshape(n, H), 0).reshape(-1)
    hist_tokens = pa.ListArray.from_arrays(
        pa.array(np.arange(0, n * H + 1, H, dtype=np.int32)),
        pa.ListArray.from_arrays(
            pa.array(np.concatenate([[0], np.cumsum(inner)]).astype(np.int32)),
            pa.array(_token_values(rng, int(inner.sum()))),
        ),
    )

    def per_slot(values: np.ndarray, t: pa.DataType) -> pa.Array:
        return pa.ListArray.from_arrays(
            pa.array(np.arange(0, n * H + 1, H, dtype=np.int32)), pa.array(values.reshape(-1), t)
        )

    text = pa.table(
        {
            "row_id": pa.array(row_id),
            "tokens": tokens,
            "hour": pa.array(((ts // 3600) % 24).astype(np.int8)),
            "hist_tokens": hist_tokens,
            "hist_engagement": per_slot(
                np.where(valid, rng.integers(1, 16, size=(n, H)), 0).astype(np.int8), pa.int8()
            ),
            "hist_hour": per_slot(np.where(valid, rng.integers(0, 24, size=(n, H)), 24).astype(np.int8), pa.int8()),
            "hist_mask": per_slot(valid, pa.bool_()),
            "hist_len": pa.array(k.astype(np.int8)),
        }
    )
    feats = {"row_id": pa.array(row_id)}
    for j, name in enumerate(FEATURES):
        feats[name] = pa.array((rng.normal(size=n) * (j + 1) + j).astype(np.float32))
    return {"ingest": ingest, "text": text, "features": pa.table(feats)}


@pytest.fixture(scope="module")
def dataset() -> dict[str, dict[str, pa.Table]]:
    return {s: make_split(s, n, seed=i) for i, (s, n) in enumerate(SPLIT_ROWS.items())}


# ----------------------------------------------------------------------------------------------
# stand-in upstream stages, published by the real runner
# ----------------------------------------------------------------------------------------------
_PENDING: dict[str, object] = {}


def _write_parts(ctx, name: str) -> None:
    """Write a split as ``layout[split]`` equal parts, or cut at the given row bounds (an
    ingest block may yield an empty part)."""
    data, layout = _PENDING["data"], _PENDING["layout"]
    for split, tables in data.items():
        table = tables[name]
        cut = layout[split]
        bounds = np.linspace(0, table.num_rows, cut + 1).astype(int) if isinstance(cut, int) else np.asarray(cut)
        for i in range(len(bounds) - 1):
            with ctx.open_out(f"{split}/part-{i:05d}.parquet") as f:
                pq.write_table(table.slice(bounds[i], bounds[i + 1] - bounds[i]), f, row_group_size=700)


def _fake_ingest(ctx) -> None:
    _write_parts(ctx, "ingest")
    quarantine = pa.table(
        {
            "file": pa.array([], pa.string()),
            "line": pa.array([], pa.int64()),
            "reason": pa.array([], pa.string()),
            "raw": pa.array([], pa.binary()),
        }
    )
    for split in _PENDING["data"]:
        with ctx.open_out(f"quarantine/{split}.parquet") as f:
            pq.write_table(quarantine, f)
    ctx.extra["splits"] = {
        s: {
            "rows_in": t["ingest"].num_rows,
            "rows_out": t["ingest"].num_rows,
            "rows_quarantined": 0,
            "quarantined_by_reason": {},
            "files": [],
        }
        for s, t in _PENDING["data"].items()
    }


def _fake_text(ctx) -> None:
    _write_parts(ctx, "text")
    ctx.extra.update(
        history={"size": H, "window": "past", "prefix": False, "sources": ["train", "valid"]},
        max_length=64,
        encoder_tokenizer="minilm",
        special_tokens=dict(SPECIAL),
        history_length_histogram={},
    )


def _fake_features(ctx) -> None:
    _write_parts(ctx, "features")
    data = _PENDING["data"]
    train = (data["train"] if "train" in data else next(iter(data.values())))["features"]
    x = np.stack([train.column(c).to_numpy() for c in FEATURES], axis=1).astype(np.float64)
    ctx.extra.update(
        feature_names=list(FEATURES),
        normalization={"mean": x.mean(0).tolist(), "std": np.maximum(x.std(0), 1e-6).tolist()},
    )


for _name, _fn in (("ingest", _fake_ingest), ("text", _fake_text), ("features", _fake_features)):
    _mod = types.ModuleType(f"_chunks_test_fake_{_name}")
    _mod.run = _fn
    sys.modules[_mod.__name__] = _mod

#: The registry's chunks stage, run directly by run_stage (the stand-ins are not in the registry).
CHUNKS_SPEC = next(s for s in STAGES if s.name == "chunks")
assert CHUNKS_SPEC.inputs == ("ingest", "text", "features")


def make_cfg(run_dir: str, *, workers: int = 2, processes: bool = False, **chunks):
    return build_config(
        {
            "run_dir": run_dir,
            "cluster": {
                "n_workers": workers,
                "threads_per_worker": 1,
                "processes": processes,
                "dashboard": False,
                "memory_limit": "2GiB",
            },
            "chunks": {"target_mb": TARGET_MB, **chunks},
        }
    )


def publish_inputs(cfg, data, layout: dict[str, int]) -> dict:
    store = Store(cfg.run_dir, cfg.storage_options)
    _PENDING.update(data=data, layout=layout)
    session = RunSession(cfg)
    try:
        out = {}
        for name in ("ingest", "text", "features"):
            spec = StageSpec(name, inputs=(), config_keys=(), module=f"_chunks_test_fake_{name}")
            out[name] = run_stage(cfg, spec, store, {}, session)
        return out
    finally:
        session.close()


def run_chunks(cfg, inputs) -> dict:
    """Run the real chunks stage; returns its parsed manifest."""
    store = Store(cfg.run_dir, cfg.storage_options)
    session = RunSession(cfg)
    try:
        return run_stage(cfg, CHUNKS_SPEC, store, inputs, session).data
    finally:
        session.close()


def read_chunks(store: Store, manifest: dict, split: str) -> list[pa.Table]:
    out = []
    for f in manifest["files"]:
        if f["split"] == split:
            with store.open(f"chunks/{f['path']}") as fh:
                out.append(pq.read_table(fh))
    return out


@pytest.fixture(scope="module")
def published(tmp_path_factory, dataset):
    """One local run: inputs in 3/2/1 parts, 2 worker processes."""
    run_dir = tmp_path_factory.mktemp("chunks") / "run"
    cfg = make_cfg(str(run_dir), processes=True)
    inputs = publish_inputs(cfg, dataset, {"train": 3, "valid": 2, "test": 1})
    manifest = run_chunks(cfg, inputs)
    return cfg, Store(cfg.run_dir), manifest


# ----------------------------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------------------------
def test_shuffle_key_is_splitmix64():
    # Published splitmix64 outputs: seeded 0, the first output is mix(0 + golden) = 0xE220A8397B1DCDAF;
    # seeded 1234567, the first output is 6457827717110365317.
    assert int(shuffle_keys(np.array([0]), 0)[0]) == 0xE220A8397B1DCDAF
    assert int(shuffle_keys(np.array([1234567]), 0)[0]) == 6457827717110365317
    # row_id ^ seed: seed 1234567 on row 0 is the same input.
    assert int(shuffle_keys(np.array([0]), 1234567)[0]) == 6457827717110365317


def test_plan_chunks_hand_computed():
    # groups hold 3, 0, 4, 2 rows -> global ranks 0-2 | - | 3-6 | 7-8; 4 rows per chunk.
    plans = plan_chunks(np.array([3, 0, 4, 2]), 4)
    assert plans == [ChunkPlan(0, 0, 2, 0, 4), ChunkPlan(1, 2, 3, 1, 5), ChunkPlan(2, 3, 3, 1, 2)]
    assert [p.rows for p in plans] == [4, 4, 1]


def test_schema_exactly_as_documented(published):
    cfg, store, manifest = published
    expected = [
        ("row_id", "int64"),
        ("tweet_id", "string"),
        ("b_user_id", "string"),
        ("a_follower_count", "int64"),
        ("like", "int8"),
        ("retweet", "int8"),
        ("reply", "int8"),
        ("quote", "int8"),
        ("tokens", "list<element: int32>"),
        ("hour", "int8"),
        ("hist_tokens", "list<element: list<element: int32>>"),
        ("hist_engagement", "list<element: int8>"),
        ("hist_hour", "list<element: int8>"),
        ("hist_mask", "list<element: bool>"),
        ("hist_len", "int8"),
        ("features", f"fixed_size_list<element: float>[{len(FEATURES)}]"),
    ]
    assert [(f.name, str(f.type)) for f in chunk_schema(len(FEATURES))] == expected
    for f in manifest["files"]:
        assert re.fullmatch(r"(train|valid|test)/chunk-\d{5}\.parquet", f["path"]), f["path"]
        with store.open(f"chunks/{f['path']}") as fh:
            pf = pq.ParquetFile(fh)
            got = pf.schema_arrow
            assert [(x.name, str(x.type)) for x in got] == expected
            md = pf.metadata
            assert md.num_rows == f["rows"]
            assert all(md.row_group(i).num_rows <= cfg.chunks.row_group_rows for i in range(md.num_row_groups))
            assert md.row_group(0).column(0).compression == "ZSTD"


def test_rows_join_and_labels(published, dataset):
    _, store, manifest = published
    extra = manifest["extra"]
    for split, n in SPLIT_ROWS.items():
        tables = read_chunks(store, manifest, split)
        got = pa.concat_tables(tables)
        # Row accounting: every ingest row exactly once.
        assert got.num_rows == n == extra["splits"][split]["rows"]
        assert sum(f["rows"] for f in manifest["files"] if f["split"] == split) == n
        assert extra["splits"][split]["chunks"] == len(tables)
        src = dataset[split]
        assert sorted(got.column("row_id").to_pylist()) == src["ingest"].column("row_id").to_pylist()
        # Join by row_id against the sources, for every column.
        pos = {r: i for i, r in enumerate(src["ingest"].column("row_id").to_pylist())}
        idx = np.array([pos[r] for r in got.column("row_id").to_pylist()])
        ing, txt, fea = (src[k].take(idx) for k in ("ingest", "text", "features"))
        for c in ("tweet_id", "b_user_id", "a_follower_count"):
            assert got.column(c).to_pylist() == ing.column(c).to_pylist()
        for c in ("tokens", "hour", "hist_tokens", "hist_engagement", "hist_hour", "hist_mask", "hist_len"):
            assert got.column(c).to_pylist() == txt.column(c).to_pylist(), c
        feats = np.asarray(got.column("features").combine_chunks().flatten()).reshape(-1, len(FEATURES))
        np.testing.assert_array_equal(feats, np.stack([fea.column(c).to_numpy() for c in FEATURES], axis=1))
        for t in TARGETS:
            ts = ing.column(TARGET_TIMESTAMP[t])
            if split == "test":
                assert got.column(t).null_count == n
            else:
                assert got.column(t).null_count == 0
                assert got.column(t).to_pylist() == [int(v is not None) for v in ts.to_pylist()]
        rates = extra["splits"][split]["label_rates"]
        if split == "test":
            assert rates is None
        else:
            for t in TARGETS:
                assert rates[t] == pytest.approx(src["ingest"].column(TARGET_TIMESTAMP[t]).is_valid().to_numpy().mean())


def test_manifest_extra(published, dataset):
    _, _, manifest = published
    extra = manifest["extra"]
    train = dataset["train"]["features"]
    x = np.stack([train.column(c).to_numpy() for c in FEATURES], axis=1).astype(np.float64)
    assert extra["schema_version"] == 1
    assert extra["feature_names"] == FEATURES
    assert extra["normalization"]["mean"] == pytest.approx(x.mean(0).tolist())
    assert extra["history_size"] == H and extra["max_length"] == 64
    assert extra["encoder_tokenizer"] == "minilm" and extra["special_tokens"] == SPECIAL
    assert extra["target_mb"] == TARGET_MB
    assert extra["shuffle"] == {"key": "splitmix64(row_id ^ seed)", "seed": 0}
    sizes = [f["bytes"] / 1e6 for f in manifest["files"]]
    assert extra["chunk_mb"] == {
        "min": round(min(sizes), 4),
        "max": round(max(sizes), 4),
        "mean": round(float(np.mean(sizes)), 4),
    }
    assert set(extra["splits"]) == set(SPLIT_ROWS)
    # The manifest's files are the real bytes.
    assert manifest["rows"] == sum(SPLIT_ROWS.values())


def test_chunk_sizes_within_band(published):
    _, store, manifest = published
    target = TARGET_MB * 1e6
    for split in SPLIT_ROWS:
        files = [f for f in manifest["files"] if f["split"] == split]
        for f in files:
            assert store.size(f"chunks/{f['path']}") == f["bytes"]
            assert hashlib.sha256(store.read_bytes(f"chunks/{f['path']}")).hexdigest() == f["sha256"]
        for f in files[:-1]:
            assert abs(f["bytes"] - target) <= 0.1 * target, (split, f)
        assert files[-1]["bytes"] <= 1.1 * target
    train = [f for f in manifest["files"] if f["split"] == "train"]
    assert len(train) >= 4  # several full chunks are checked, not just a last one


def test_every_split_shuffled_by_key(published, dataset):
    _, store, manifest = published
    for split in SPLIT_ROWS:
        rid = pa.concat_tables(read_chunks(store, manifest, split)).column("row_id").to_numpy()
        src = dataset[split]["ingest"].column("row_id").to_numpy()
        assert sorted(rid.tolist()) == src.tolist()  # a permutation of the input rows
        assert not np.array_equal(rid, src)  # not in row_id order
        keys = shuffle_keys(rid, 0)
        assert np.all(keys[1:] > keys[:-1])  # ascending key across consecutive chunks


def test_deterministic_across_runs_workers_and_parts(published, dataset, tmp_path):
    _, _, first = published
    cfg = make_cfg(str(tmp_path / "run"), workers=1, processes=False)
    inputs = publish_inputs(cfg, dataset, {"train": 5, "valid": 1, "test": [0, 0, 250, 600]})
    second = run_chunks(cfg, inputs)

    def strip(m):
        return [(f["path"], f["rows"], f["bytes"], f["sha256"], f["split"]) for f in m["files"]]

    assert strip(second) == strip(first)
    a, b = published[1], Store(cfg.run_dir)
    for f in first["files"]:
        assert a.read_bytes(f"chunks/{f['path']}") == b.read_bytes(f"chunks/{f['path']}")
    assert {k: v for k, v in second["extra"].items()} == first["extra"]


def test_seed_changes_the_order(published, dataset, tmp_path):
    _, store, first = published
    cfg = make_cfg(f"memory://chunks-seed-{tmp_path.name}", workers=2, seed=7)
    inputs = publish_inputs(cfg, dataset, {"train": 3, "valid": 2, "test": 1})
    manifest = run_chunks(cfg, inputs)
    mem = Store(cfg.run_dir)
    a = pa.concat_tables(read_chunks(store, first, "train")).column("row_id").to_numpy()
    b = pa.concat_tables(read_chunks(mem, manifest, "train")).column("row_id").to_numpy()
    assert sorted(a.tolist()) == sorted(b.tolist()) and not np.array_equal(a, b)
    assert np.all(np.diff(shuffle_keys(b, 7).astype(np.float64)) > 0)
    # memory:// run_dir: published, nothing left but the chunks (shuffle fragments under _work gone)
    # and the released lease.
    assert manifest["extra"]["shuffle"]["seed"] == 7
    published_files = ["_MANIFEST.json", "_lease/00000001.json", *(f["path"] for f in manifest["files"])]
    assert mem.walk_files("chunks") == sorted(published_files)


def test_doc_snippet_runs(published, monkeypatch):
    """The reading snippet of docs/data-format.md §7 runs as written against a real run dir."""
    cfg, store, manifest = published
    doc = (ROOT / "docs" / "data-format.md").read_text()
    section = doc[doc.index("## 7. `chunks`") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(Path(cfg.run_dir).parent)
    ns: dict = {}
    exec(compile(code, "data-format.md §7", "exec"), ns)
    t, x = ns["t"], ns["x"]
    first = manifest["files"][0]
    assert t.num_rows == first["rows"]
    raw = np.asarray(t.column("features").combine_chunks().flatten()).reshape(-1, len(FEATURES))
    norm = manifest["extra"]["normalization"]
    np.testing.assert_allclose(x, (raw - np.array(norm["mean"])) / np.array(norm["std"]), rtol=1e-6)


def test_recut_when_the_estimate_misses(tmp_path):
    """A sample of atypically small rows underestimates the chunk size: the first cut is too big,
    the stage recalibrates on the written chunks and cuts again, within the band."""
    data = {"train": make_split("train", 3000, seed=5, short_rows=40)}
    cfg = make_cfg(f"memory://chunks-recut-{tmp_path.name}", workers=2, sample_rows=20)
    manifest = run_chunks(cfg, publish_inputs(cfg, data, {"train": 2}))
    info = manifest["extra"]["splits"]["train"]
    assert info["cut_attempts"] == 2
    files = [f for f in manifest["files"] if f["split"] == "train"]
    assert len(files) == info["chunks"] >= 3 and sum(f["rows"] for f in files) == 3000
    for f in files[:-1]:
        assert abs(f["bytes"] - TARGET_MB * 1e6) <= 0.1 * TARGET_MB * 1e6
    # No chunk of the first cut is left over.
    store = Store(cfg.run_dir)
    assert sorted(f for f in store.walk_files("chunks") if f.endswith(".parquet")) == [f["path"] for f in files]


def test_target_below_one_row_fails_clearly(dataset, tmp_path):
    cfg = make_cfg(f"memory://chunks-tiny-{tmp_path.name}", workers=1, target_mb=0.001)
    inputs = publish_inputs(cfg, {"valid": dataset["valid"]}, {"valid": 1})
    with pytest.raises(StageError, match=r"valid: chunks.target_mb=0.001 is below the smallest chunk"):
        run_chunks(cfg, inputs)


def test_misaligned_text_fails_clearly(dataset, tmp_path):
    bad = {s: dict(t) for s, t in dataset.items()}
    text = bad["valid"]["text"]
    order = np.arange(text.num_rows)
    order[[10, 11]] = order[[11, 10]]
    bad["valid"]["text"] = text.take(order)
    cfg = make_cfg(str(tmp_path / "run"), workers=1)
    inputs = publish_inputs(cfg, bad, {"train": 1, "valid": 1, "test": 1})
    with pytest.raises(
        StageError, match=r"text valid/part-00000\.parquet is not row-aligned with ingest: row_id differs at row 10"
    ):
        run_chunks(cfg, inputs)
    assert read_manifest(Store(cfg.run_dir), "chunks") is None


_PIPELINE = ("generate", "ingest", "text", "features", "chunks")


@pytest.mark.slow
def test_end_to_end_cli(tmp_path, cli):
    """generate -> ingest -> text -> features -> chunks through ``microparade run``."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"run_dir: {tmp_path / 'run'}\n"
        "data: {generate: {rows: 3000, seed: 1}}\n"
        "cluster: {n_workers: 2, dashboard: false}\n"
        "history: {size: 4}\n"
        "chunks: {target_mb: 0.1}\n"
    )
    cli("run", str(cfg), "--until", "chunks", timeout=600)
    run = tmp_path / "run"
    m = json.loads((run / "chunks" / "_MANIFEST.json").read_text())
    ingest = json.loads((run / "ingest" / "_MANIFEST.json").read_text())
    for split, info in m["extra"]["splits"].items():
        parts = [f for f in ingest["files"] if re.fullmatch(rf"{split}/part-\d+\.parquet", f["path"])]
        assert info["rows"] == sum(f["rows"] for f in parts)
        files = [f for f in m["files"] if f["split"] == split]
        assert sum(f["rows"] for f in files) == info["rows"]
        for f in files[:-1]:
            assert abs(f["bytes"] - 0.1e6) <= 0.1 * 0.1e6
        t = pa.concat_tables(pq.read_table(run / "chunks" / f["path"]) for f in files)
        assert t.schema.equals(chunk_schema(len(m["extra"]["feature_names"])))
        src = pa.concat_tables(pq.read_table(run / "ingest" / f["path"], columns=["row_id"]) for f in parts)
        assert sorted(t.column("row_id").to_pylist()) == sorted(src.column("row_id").to_pylist())
    assert m["extra"]["history_size"] == 4
    assert m["extra"]["splits"]["train"]["chunks"] >= 2
    assert m["extra"]["splits"]["train"]["label_rates"]["like"] > 0
