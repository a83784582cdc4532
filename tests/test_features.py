"""The features stage and its Dask ops (src/microparade/ops.py, src/microparade/stages/features.py).

Op-level tests run on the synchronous Dask scheduler with hand-computed expectations; stage-level
tests run :func:`build_features` on a small in-process Dask cluster over ingest-format parts built
here, and the last test runs ``microparade run`` on generated data.
"""

from __future__ import annotations

import json
from pathlib import Path

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from microparade.config import FeaturesConfig
from microparade.recsys_format import TARGET_TIMESTAMP, TARGETS
from microparade.stages.features import ops
from microparade.stages.features import stage as F
from microparade.stages.ingest.parsing import SCHEMA

SYNC = {"scheduler": "sync"}


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _sorted(ddf) -> pd.DataFrame:
    return ddf.compute().sort_values("row_id").reset_index(drop=True)


def _hex(rng: np.random.Generator, k: int) -> np.ndarray:
    return np.array([f"{v:032X}" for v in rng.integers(0, 2**62, k)], dtype=object)


def _lists(rng: np.random.Generator, pool: np.ndarray, n: int, max_len: int, p_empty: float, value_type) -> pa.Array:
    lengths = np.where(rng.random(n) < p_empty, 0, rng.integers(1, max_len + 1, n))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = pa.array(rng.choice(pool, int(offsets[-1])).tolist(), value_type)
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def make_ingest(n: int, seed: int, *, labeled: bool = True, users: int = 40, authors: int = 25) -> pa.Table:
    """``n`` rows in the ingest schema (docs/data-format.md §4), ``row_id`` ascending."""
    rng = np.random.default_rng(seed)
    shared = np.random.default_rng(12345)  # same users/languages in every split
    langs, doms, tags = _hex(shared, 4), _hex(shared, 6), _hex(shared, 10)
    b_users, a_users = _hex(shared, users), _hex(shared, authors)
    t0 = 1_612_000_000
    ts = t0 + rng.integers(0, 86400 * 7, n)
    cols = {
        "row_id": np.sort(rng.choice(50 * n, n, replace=False)).astype(np.int64),
        "text_tokens": _lists(rng, np.arange(1000, 2000), n, 30, 0.0, pa.int32()),
        "hashtags": _lists(rng, tags, n, 3, 0.6, pa.string()),
        "tweet_id": _hex(rng, n),
        "present_media": _lists(rng, np.array(["Photo", "Video", "GIF"]), n, 2, 0.5, pa.string()),
        "present_links": _lists(rng, _hex(rng, 20), n, 2, 0.7, pa.string()),
        "present_domains": _lists(rng, doms, n, 2, 0.7, pa.string()),
        "tweet_type": rng.choice(["TopLevel", "Retweet", "Quote", "Reply"], n),
        "language": rng.choice(langs, n, p=[0.6, 0.2, 0.15, 0.05]),
        "tweet_timestamp": ts,
        "a_user_id": rng.choice(a_users, n),
        "a_follower_count": rng.integers(0, 100_000, n),
        "a_following_count": rng.integers(0, 5000, n),
        "a_is_verified": rng.random(n) < 0.1,
        "a_account_creation": t0 - rng.integers(0, 10**8, n),
        "b_user_id": rng.choice(b_users, n),
        "b_follower_count": rng.integers(0, 3000, n),
        "b_following_count": rng.integers(0, 3000, n),
        "b_is_verified": rng.random(n) < 0.05,
        "b_account_creation": t0 - rng.integers(0, 10**8, n),
        "b_follows_a": rng.random(n) < 0.4,
    }
    for target, rate in (("reply", 0.05), ("retweet", 0.1), ("quote", 0.03), ("like", 0.4)):
        hit = labeled & (rng.random(n) < rate)
        cols[TARGET_TIMESTAMP[target]] = pa.array(ts + 60, pa.int64(), mask=~hit)
    arrays = {f.name: c if isinstance(c := cols[f.name], pa.Array) else pa.array(c, f.type) for f in SCHEMA}
    return pa.table(arrays, schema=SCHEMA)


SPLIT_ROWS = {"train": 1200, "valid": 250, "test": 250}


@pytest.fixture(scope="module")
def ingest_tables() -> dict[str, pa.Table]:
    return {s: make_ingest(n, seed=i, labeled=s != "test") for i, (s, n) in enumerate(SPLIT_ROWS.items())}


def write_ingest(root, tables: dict[str, pa.Table], parts_per_split: dict[str, int]) -> list[F.IngestPart]:
    """Write each split's table as that many consecutive parts, as the ingest stage would."""
    parts = []
    for split, table in tables.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        k = parts_per_split[split]
        bounds = np.linspace(0, table.num_rows, k + 1).astype(int)
        for i in range(k):
            rel = f"{split}/part-{i:05d}.parquet"
            pq.write_table(table.slice(bounds[i], bounds[i + 1] - bounds[i]), root / rel)
            parts.append(F.IngestPart(split, rel, str(root / rel)))
    return parts


def read_outputs(out, parts: list[F.IngestPart]) -> dict[str, pd.DataFrame]:
    """Per split, the concatenated output frames of ``parts`` (in part order)."""
    frames: dict[str, list[pd.DataFrame]] = {}
    for p in parts:
        frames.setdefault(p.split, []).append(pq.read_table(out / p.path).to_pandas())
    return {s: pd.concat(f, ignore_index=True) for s, f in frames.items()}


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        with Client(cluster) as c:
            yield c


# ----------------------------------------------------------------------------------------------
# folds
# ----------------------------------------------------------------------------------------------
def test_splitmix64_reference_values_and_backends_agree():
    # First outputs of the reference SplitMix64 generator seeded with 0 and 1.
    z = ops.splitmix64(np.array([0, 1], dtype=np.uint64))
    assert [hex(int(v)) for v in z] == ["0xe220a8397b1dcdaf", "0x910a2dec89025cc1"]
    keys = np.arange(0, 2000, 7, dtype=np.int64) * 1_000_003
    want = ops.fold_of(keys, 5, 42)
    assert want.dtype == np.int8 and set(want) == {0, 1, 2, 3, 4}
    assert np.array_equal(ops.fold_of(pd.Series(keys), 5, 42).to_numpy(), want)
    one = dd.from_pandas(pd.DataFrame({"row_id": keys, "fit": True}), npartitions=1)
    many = dd.from_pandas(pd.DataFrame({"row_id": keys, "fit": True}), npartitions=8)
    with dask.config.set(SYNC):
        for ddf in (one, many):
            got = _sorted(ops.assign_folds(ddf, key="row_id", fit_col="fit", k=5, seed=42))
            assert np.array_equal(got["fold"].to_numpy(), want)
    assert not np.array_equal(ops.fold_of(keys, 5, 43), want), "the seed must change the folds"


# ----------------------------------------------------------------------------------------------
# target encoding
# ----------------------------------------------------------------------------------------------
def _te_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "row_id": np.arange(9, dtype=np.int64),
            "cat": pd.array(["a", "a", "a", "b", "b", "b", "a", "b", "c"], dtype="str"),
            "fit": [True] * 6 + [False] * 3,
            "fold": np.array([0, 0, 1, 0, 1, 1, -1, -1, -1], dtype=np.int8),
            "y": np.array([1, 0, 1, 1, 0, 0, 1, 1, 1], dtype=np.int8),
        }
    )


def _encode(pdf: pd.DataFrame, npartitions: int, smoothing: float = 2.0, split_out: int = 1) -> pd.DataFrame:
    ddf = dd.from_pandas(pdf, npartitions=npartitions)
    table = ops.fit_target_encoding(ddf, ["cat"], ["y"], fit_col="fit", split_out=split_out)
    priors = ops.fold_means(table, ["y"])
    enc = ops.target_encodings(table, ["cat"], {"like": "y"}, priors=priors, smoothing=smoothing, count_out="cat_count")
    out = ops.apply_target_encoding(ddf, enc, ["cat"], unseen={"like": priors[-1]["y"]}, ints=["cat_count"])
    return _sorted(out)


def test_target_encoding_hand_computed():
    # Fit rows: a = (fold 0: y 1, 0; fold 1: y 1), b = (fold 0: y 1; fold 1: y 0, 0).
    # Priors: overall 3/6; outside fold 0 (rows 2, 4, 5) 1/3; outside fold 1 (rows 0, 1, 3) 2/3.
    # p = 2: a/fold 0 -> (2-1 + 2*(1/3))/(3-2 + 2) = 5/9;  a/fold 1 -> (2-1 + 2*(2/3))/(3-1 + 2) = 7/12;
    #        b/fold 0 -> (1-1 + 2*(1/3))/(3-1 + 2) = 1/6;  b/fold 1 -> (1-0 + 2*(2/3))/(3-2 + 2) = 7/9;
    # non-fit a -> (2 + 2*0.5)/(3 + 2) = 0.6, b -> (1 + 1)/(3 + 2) = 0.4, unseen c -> 0.5.
    with dask.config.set(SYNC):
        for npartitions, split_out in ((1, 1), (4, 1), (4, 3)):
            got = _encode(_te_frame(), npartitions, split_out=split_out)
            assert got["TE_cat_like"].tolist() == pytest.approx(
                [5 / 9, 5 / 9, 7 / 12, 1 / 6, 7 / 9, 7 / 9, 0.6, 0.4, 0.5], rel=0, abs=1e-15
            )
            assert got["cat_count"].tolist() == [3, 3, 3, 3, 3, 3, 3, 3, 0]
        # p = 0, a's fit rows all in fold 0: no out-of-fold rows -> the prior of fold 0, i.e. the
        # mean of rows 4, 5 = 0; b/fold 0 sees rows 4, 5 (0, 0) -> 0; b/fold 1 sees row 3 -> 1.
        one_fold = _te_frame().assign(fold=np.array([0, 0, 0, 0, 1, 1, -1, -1, -1], dtype=np.int8))
        got = _encode(one_fold, 2, smoothing=0.0)
        assert got["TE_cat_like"].tolist()[:6] == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]


def test_fold_priors_hand_computed():
    with dask.config.set(SYNC):
        table = ops.fit_target_encoding(dd.from_pandas(_te_frame(), npartitions=2), ["cat"], ["y"], fit_col="fit")
        assert ops.fold_means(table, ["y"]) == {-1: {"y": 0.5}, 0: {"y": 1 / 3}, 1: {"y": 2 / 3}}


def _random_te_frame(n: int = 600, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "row_id": rng.choice(10**9, n, replace=False).astype(np.int64),
            "cat": pd.array(rng.choice([f"c{i}" for i in range(12)], n), dtype="str"),
            "fit": rng.random(n) < 0.7,
            "y": (rng.random(n) < 0.3).astype(np.int8),
        }
    )


def _encode_hashed(pdf: pd.DataFrame, npartitions: int) -> pd.DataFrame:
    ddf = ops.assign_folds(dd.from_pandas(pdf, npartitions=npartitions), key="row_id", fit_col="fit", k=5, seed=7)
    table = ops.fit_target_encoding(ddf, ["cat"], ["y"], fit_col="fit", split_out=3)
    priors = ops.fold_means(table, ["y"])
    enc = ops.target_encodings(table, ["cat"], {"like": "y"}, priors=priors, smoothing=20.0)
    return _sorted(ops.apply_target_encoding(ddf, enc, ["cat"], unseen={"like": priors[-1]["y"]}))


def test_own_label_never_contributes_to_own_encoding():
    pdf = _random_te_frame()
    with dask.config.set(SYNC):
        before = _encode_hashed(pdf, 4)
        row = before[before["fit"]].iloc[17]
        flipped = pdf.copy()
        flipped.loc[flipped["row_id"] == row["row_id"], "y"] = 1 - int(row["y"])
        after = _encode_hashed(flipped, 4)
    te_b, te_a = before.set_index("row_id")["TE_cat_like"], after.set_index("row_id")["TE_cat_like"]
    same_cat = before[before["cat"] == row["cat"]]
    same_fold = same_cat[same_cat["fit"] & (same_cat["fold"] == row["fold"])]["row_id"]
    other_fold = same_cat[same_cat["fit"] & (same_cat["fold"] != row["fold"])]["row_id"]
    outside = same_cat[~same_cat["fit"]]["row_id"]
    assert len(same_fold) > 1 and len(other_fold) > 0 and len(outside) > 0
    assert (te_a[same_fold] == te_b[same_fold]).all(), "rows of the flipped row's fold (itself included) must not move"
    assert (te_a[other_fold] != te_b[other_fold]).all(), "rows of other folds see the flipped label"
    assert (te_a[outside] != te_b[outside]).all(), "non-fit rows use the full fit statistics"
    # Nothing in a fold depends on that fold's labels: the prior is out-of-fold too.
    whole_fold = before[before["fit"] & (before["fold"] == row["fold"])]["row_id"]
    assert (te_a[whole_fold] == te_b[whole_fold]).all()


def test_non_fit_rows_use_full_statistics_and_unseen_gets_global_mean():
    pdf = _random_te_frame()
    pdf.loc[pdf.index[:5], "cat"] = "never-fitted"
    pdf.loc[pdf.index[:5], "fit"] = False
    with dask.config.set(SYNC):
        got = _encode_hashed(pdf, 3)
    fit = pdf[pdf["fit"]]
    mean = fit["y"].mean()
    stats = fit.groupby("cat")["y"].agg(["sum", "count"])
    expected = (stats["sum"] + 20.0 * mean) / (stats["count"] + 20.0)
    rest = got[~got["fit"]]
    seen = rest[rest["cat"] != "never-fitted"]
    np.testing.assert_allclose(seen["TE_cat_like"].to_numpy(), expected[seen["cat"]].to_numpy(), rtol=0, atol=1e-15)
    assert (rest[rest["cat"] == "never-fitted"]["TE_cat_like"] == mean).all()


def test_categorify_sorted_codes_unseen_zero():
    pdf = pd.DataFrame(
        {
            "row_id": np.arange(7, dtype=np.int64),
            "media": pd.array(["Photo", "", "GIF", "Photo_Photo", "", "Video", "GIF_GIF"], dtype="str"),
            "fit": [True, True, True, True, True, False, False],
        }
    )
    with dask.config.set(SYNC):
        for npartitions in (1, 3):
            ddf = dd.from_pandas(pdf, npartitions=npartitions)
            cats = ops.fit_categories(ddf[ddf["fit"]]["media"])
            got = _sorted(ops.apply_categories(ddf, cats, "media", out="media_code"))
            # Sorted fit categories: "" -> 1, "GIF" -> 2, "Photo" -> 3, "Photo_Photo" -> 4.
            assert got["media_code"].tolist() == [3, 1, 2, 4, 1, 0, 0]


# ----------------------------------------------------------------------------------------------
# difference lag
# ----------------------------------------------------------------------------------------------
def test_difference_lag_hand_built_sequence_shuffled_input():
    # User u: t=10 (100, "en"), t=20 (130, "en"), t=20 (125, "fr", larger row_id), t=40 (90, "fr").
    # User v: a single engagement. Rows are given out of order, over several partitions.
    pdf = pd.DataFrame(
        {
            "row_id": np.array([4, 2, 9, 1, 7], dtype=np.int64),
            "split_code": np.array([0, 0, 1, 0, 0], dtype=np.int8),
            "user": pd.array(["u", "u", "u", "v", "u"], dtype="str"),
            "ts": np.array([40, 20, 20, 30, 10], dtype=np.int64),
            "followers": np.array([90, 130, 125, 7, 100], dtype=np.int64),
            "lang": pd.array(["fr", "en", "fr", "en", "en"], dtype="str"),
        }
    )
    expected = {  # by row_id, in u's time order 7, 2, 9, 4; then v's row 1
        "followers_difference_lag_1": {7: 0.0, 2: 30.0, 9: -5.0, 4: -35.0, 1: 0.0},
        "lang_difference_lag_1": {7: 0.0, 2: 0.0, 9: 1.0, 4: 0.0, 1: 0.0},
        "user_has_lag_1": {7: 0.0, 2: 1.0, 9: 1.0, 4: 1.0, 1: 0.0},
        "followers_difference_lag_-1": {7: -30.0, 2: 5.0, 9: 35.0, 4: 0.0, 1: 0.0},
        "lang_difference_lag_-1": {7: 0.0, 2: 1.0, 9: 0.0, 4: 0.0, 1: 0.0},
        "user_has_lag_-1": {7: 1.0, 2: 1.0, 9: 1.0, 4: 0.0, 1: 0.0},
    }
    assert ops.lag_names("user", ["followers"], ["lang"], [1, -1]) == list(expected)
    with dask.config.set(SYNC):
        for npartitions in (1, 3):
            got = ops.difference_lag(
                dd.from_pandas(pdf, npartitions=npartitions),
                by="user",
                order=["ts", "row_id", "split_code"],
                diff_cols=["followers"],
                changed_cols=["lang"],
                shifts=[1, -1],
            )
            got = _sorted(got).set_index("row_id")
            for col, want in expected.items():
                assert got[col].to_dict() == want, col


# ----------------------------------------------------------------------------------------------
# the stage
# ----------------------------------------------------------------------------------------------
def test_feature_list_is_fixed_and_documented():
    names = F.feature_names()
    assert len(names) == len(set(names)) == 57
    text = (Path(__file__).resolve().parents[1] / "docs" / "features.md").read_text()
    for name in names:
        assert f"`{name}`" in text, f"{name} is not documented in docs/features.md"


@pytest.fixture(scope="module")
def stage_runs(tmp_path_factory, ingest_tables, client):
    """The stage over the same rows as one part per split (every statistics table merged by
    broadcast) and as 8/2/1 parts (the user and combination tables merged by hash joins)."""
    runs = {}
    cfg = FeaturesConfig()
    for name, layout, broadcast_max_rows in (
        ("one", {"train": 1, "valid": 1, "test": 1}, F.BROADCAST_MAX_ROWS),
        ("many", {"train": 8, "valid": 2, "test": 1}, 0),
    ):
        root = tmp_path_factory.mktemp(name)
        parts = write_ingest(root / "ingest", ingest_tables, layout)
        result = F.build_features(client, parts, str(root / "features"), cfg, broadcast_max_rows=broadcast_max_rows)
        runs[name] = (root, parts, result)
    return runs


def test_stage_rows_aligned_float32_no_nulls(stage_runs):
    root, parts, result = stage_runs["many"]
    names = F.feature_names()
    assert [f["path"] for f in result["files"]] == [p.path for p in parts]
    for p, meta in zip(parts, result["files"]):
        out = pq.read_table(root / "features" / p.path)
        assert out.schema.names == ["row_id", *names]
        assert all(out.schema.field(n).type == pa.float32() for n in names)
        ingest_ids = pq.read_table(p.url, columns=["row_id"]).column("row_id").to_pylist()
        assert out.column("row_id").to_pylist() == ingest_ids
        assert meta["rows"] == len(ingest_ids)
        assert all(out.column(n).null_count == 0 for n in names)
        assert np.isfinite(np.stack([out.column(n).to_numpy() for n in names])).all()
        assert pq.ParquetFile(root / "features" / p.path).metadata.row_group(0).column(1).compression == "ZSTD"
    extra = result["extra"]
    assert extra["feature_names"] == names
    assert len(extra["normalization"]["mean"]) == len(extra["normalization"]["std"]) == len(names)
    assert min(extra["normalization"]["std"]) >= 1e-6
    assert extra["rows"] == SPLIT_ROWS
    assert extra["te"]["tweet_type"] == 4 and extra["te"]["language"] == 4
    # Normalisation statistics are those of the training rows.
    train = read_outputs(root / "features", parts)["train"][names].to_numpy(np.float64)
    np.testing.assert_allclose(extra["normalization"]["mean"], train.mean(axis=0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(extra["normalization"]["std"], np.maximum(train.std(axis=0), 1e-6), rtol=1e-6, atol=1e-9)


def test_stage_identical_for_one_and_eight_partitions(stage_runs):
    (root1, parts1, res1), (root8, parts8, res8) = stage_runs["one"], stage_runs["many"]
    one, many = read_outputs(root1 / "features", parts1), read_outputs(root8 / "features", parts8)
    for split in SPLIT_ROWS:
        pd.testing.assert_frame_equal(one[split], many[split], check_exact=True)
    for key in ("feature_names", "te", "global_mean", "rows"):
        assert res1["extra"][key] == res8["extra"][key]
    np.testing.assert_allclose(
        res1["extra"]["normalization"]["mean"], res8["extra"]["normalization"]["mean"], rtol=1e-12
    )


def test_stage_deterministic_bytes_whatever_the_worker_count(stage_runs, tmp_path):
    from distributed import Client, LocalCluster

    root, parts, result = stage_runs["one"]
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        with Client(cluster) as single:
            again = F.build_features(single, parts, str(tmp_path / "features"), FeaturesConfig())
    assert [f["sha256"] for f in again["files"]] == [f["sha256"] for f in result["files"]]
    assert json.dumps(again["extra"], sort_keys=True) == json.dumps(result["extra"], sort_keys=True)


def test_stage_matches_direct_pandas_computation(stage_runs, ingest_tables):
    root, parts, result = stage_runs["many"]
    out = read_outputs(root / "features", parts)
    frames = {s: t.to_pandas() for s, t in ingest_tables.items()}
    train = frames["train"]
    # Target encoding of a validation row: full-training statistics of its language.
    like = train[TARGET_TIMESTAMP["like"]].notna()
    mean = like.mean()
    assert result["extra"]["global_mean"]["like"] == mean
    stats = like.groupby(train["language"]).agg(["sum", "count"])
    te = (stats["sum"] + 20.0 * mean) / (stats["count"] + 20.0)
    valid = frames["valid"]
    np.testing.assert_array_equal(
        out["valid"]["TE_language_like"].to_numpy(), te[valid["language"]].to_numpy().astype(np.float32)
    )
    counts = train.groupby("b_user_id").size()
    np.testing.assert_array_equal(
        out["test"]["b_user_id_count"].to_numpy(),
        counts.reindex(frames["test"]["b_user_id"]).fillna(0).to_numpy().astype(np.float32),
    )
    # Difference lag over all splits, per reader, in (timestamp, row_id, split) order.
    both = pd.concat([f.assign(split_code=i) for i, f in enumerate(frames.values())], ignore_index=True)
    both = both.sort_values(["b_user_id", "tweet_timestamp", "row_id", "split_code"])
    prev = both.groupby("b_user_id")["b_follower_count"].shift(1)
    both["lag"] = (both["b_follower_count"] - prev).fillna(0.0)
    lag = both.set_index(["split_code", "row_id"])["lag"]
    for i, split in enumerate(SPLIT_ROWS):
        want = lag.loc[i].reindex(out[split]["row_id"]).to_numpy().astype(np.float32)
        np.testing.assert_array_equal(out[split]["b_follower_count_difference_lag_1"].to_numpy(), want)
    # Row-local features.
    ts = frames["test"]["tweet_timestamp"]
    np.testing.assert_array_equal(
        out["test"]["tweet_hour"].to_numpy(), ((ts // 3600) % 24).to_numpy().astype(np.float32)
    )
    np.testing.assert_array_equal(
        out["test"]["tweet_dayofweek"].to_numpy(),
        pd.to_datetime(ts, unit="s").dt.day_of_week.to_numpy().astype(np.float32),
    )


def test_stage_requires_training_split(tmp_path, ingest_tables, client):
    parts = write_ingest(tmp_path / "ingest", {"valid": ingest_tables["valid"]}, {"valid": 1})
    with pytest.raises(ValueError, match="needs a training split"):
        F.build_features(client, parts, str(tmp_path / "features"), FeaturesConfig())


def test_microparade_run_end_to_end(tmp_path, cli):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"run_dir: {tmp_path / 'run'}\n"
        "data: {generate: {rows: 1500, rows_per_file: 1000}}\n"
        "cluster: {n_workers: 2, processes: false, dashboard: false}\n"
        "features: {te_folds: 4, seed: 3}\n"
    )
    cli("run", str(cfg), "--until", "ingest")
    cli("run", str(cfg), "--only", "features")
    run = tmp_path / "run"
    ingest = json.loads((run / "ingest" / "_MANIFEST.json").read_text())
    manifest = json.loads((run / "features" / "_MANIFEST.json").read_text())
    names = manifest["extra"]["feature_names"]
    assert names == F.feature_names()
    data = [f for f in ingest["files"] if "/part-" in f["path"]]
    assert sorted(f["path"] for f in manifest["files"]) == sorted(f["path"] for f in data)
    for f in data:
        out = pq.read_table(run / "features" / f["path"])
        ids = pq.read_table(run / "ingest" / f["path"], columns=["row_id"]).column("row_id")
        assert out.column("row_id").equals(ids)
        assert sum(out.column(n).null_count for n in names) == 0
    extra = manifest["extra"]
    assert extra["te_folds"] == 4 and extra["seed"] == 3
    assert set(extra["global_mean"]) == set(TARGETS)
    assert len(extra["normalization"]["std"]) == len(names)
