"""features stage: tabular features per ingest row (docs/features.md), computed with Dask.

Input: the ingest parts ``{split}/part-NNNNN.parquet`` (docs/data-format.md §4). Output: for every
ingest part a file of the same name with the same rows in the same order: ``row_id`` plus one
float32 column per feature of :func:`feature_names`, no nulls (§6).

The work is split by what a feature needs, so that only narrow frames travel through shuffles:

- *row-local* features (datetime parts, list lengths, log counts, account ages, flags) need only
  the row itself; the task that writes a part computes them straight from the ingest file;
- *categorical* features (Categorify codes, JoinGroupby counts, k-fold target encodings) come from
  integer statistics of the training split (:mod:`microparade.ops`), persisted on the cluster and
  merged back: low-cardinality keys by broadcast joins that leave every part's rows in its own
  partition, each high-cardinality key by a hash join of a narrow frame;
- *difference lags* need each reader's engagements over all splits in time order: a shuffle by
  ``b_user_id``, then a sort inside each partition.

Shuffled branches are range-partitioned back by part number (``set_index`` with one division per
part), so partition *i* of every branch holds exactly the rows of part *i*. One writer task per
part aligns them by ``row_id`` to the ingest file, writes the Parquet file and returns the part's
normalisation moments, which the client combines in part order: every output byte and number is
independent of the partitioning and of the number of workers.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...compute.progress import gather_in_order, wait_for
from ...config import SPLITS, FeaturesConfig
from ...recsys_format import TARGET_TIMESTAMP, TARGETS
from ...storage import join, read_parquet, read_parquet_schema, write_parquet
from . import ops

if TYPE_CHECKING:
    from ...engine.context import StageContext

#: Parquet row group size of the output files.
ROW_GROUP_ROWS = 128 * 1024
#: Floor of the normalisation standard deviations.
STD_FLOOR = 1e-6

# -- the feature set (docs/features.md lists the exact definition of each) -------------------
#: Row-local features, computed from the ingest row alone.
LOCAL_FEATURES: tuple[str, ...] = (
    "tweet_hour",
    "tweet_minute",
    "tweet_second",
    "tweet_dayofweek",
    "n_hashtags",
    "n_domains",
    "n_links",
    "n_media",
    "n_text_tokens",
    "a_follower_count_log1p",
    "a_following_count_log1p",
    "b_follower_count_log1p",
    "b_following_count_log1p",
    "a_account_age_days",
    "b_account_age_days",
    "a_is_verified",
    "b_is_verified",
    "b_follows_a",
)
#: Categorify codes kept as features (low cardinality); language and user ids are not (see docs).
CODE_COLUMNS: tuple[str, ...] = ("media", "tweet_type")
#: Keys of the k-fold target encodings; the single-column ones also get a JoinGroupby count.
TE_KEYS: tuple[tuple[str, ...], ...] = (
    ("media",),
    ("tweet_type",),
    ("language",),
    ("a_user_id",),
    ("b_user_id",),
    ("domains", "language", "b_follows_a", "tweet_type", "media", "a_is_verified"),
)
#: Keys whose statistics tables can be large (one row per user or per domain combination and
#: fold): their statistics are fitted into as many partitions as the training data has.
HIGH_CARDINALITY = frozenset({("a_user_id",), ("b_user_id",), TE_KEYS[-1]})
#: A statistics table with at most this many rows is merged by a broadcast join (one partition,
#: copied to every task; no shuffle); a larger one by a hash join. The choice never changes the
#: output, only the work: 500k rows are ~100 MB per worker.
BROADCAST_MAX_ROWS = 500_000
LAG_BY = "b_user_id"
LAG_ORDER = ("tweet_timestamp", "row_id", "split_code")
LAG_DIFF = ("b_follower_count", "b_following_count")
LAG_CHANGED = ("language",)
LAG_SHIFTS = (1, -1)

FIT_COL = "is_train"
FOLD_COL = "fold"


def count_name(key: tuple[str, ...]) -> str:
    return f"{ops.key_name(key)}_count"


def categorical_features() -> list[str]:
    """Features of the categorical branch, in output order."""
    names = [f"{c}_code" for c in CODE_COLUMNS]
    names += [count_name(k) for k in TE_KEYS if len(k) == 1]
    names += [ops.te_name(k, t) for k in TE_KEYS for t in TARGETS]
    return names


def lag_features() -> list[str]:
    return ops.lag_names(LAG_BY, LAG_DIFF, LAG_CHANGED, LAG_SHIFTS)


def feature_names() -> list[str]:
    """Every output feature column, in the fixed order of the files and the manifest."""
    return list(LOCAL_FEATURES) + categorical_features() + lag_features()


# -- input ---------------------------------------------------------------------------------
_PART_RE = re.compile(r"^(?P<split>[a-z]+)/part-\d+\.parquet$")


@dataclass(frozen=True)
class IngestPart:
    """One ingest output file: ``path`` relative to the ingest dir (``train/part-00000.parquet``)."""

    split: str
    path: str
    url: str


def ingest_parts(manifest) -> list[IngestPart]:
    """The data parts of an ingest manifest in (split, path) order; quarantine files excluded."""
    parts = []
    for f in manifest.files:
        m = _PART_RE.match(f["path"])
        if m and m["split"] in SPLITS:
            parts.append(IngestPart(m["split"], f["path"], manifest.url(f["path"])))
    return sorted(parts, key=lambda p: (SPLITS.index(p.split), p.path))


def _str(table: pa.Table, col: str) -> pa.Array:
    return pc.fill_null(table.column(col).combine_chunks().cast(pa.string()), "")


def _joined(table: pa.Table, col: str) -> pa.Array:
    """A list<string> column rendered as one string: items joined by ``_``; empty/null → ``""``."""
    return pc.fill_null(pc.binary_join(table.column(col).combine_chunks(), "_").cast(pa.string()), "")


def _bool(table: pa.Table, col: str) -> pa.Array:
    return pc.fill_null(table.column(col).combine_chunks().cast(pa.bool_()), False)


def _int(table: pa.Table, col: str) -> np.ndarray:
    return pc.fill_null(table.column(col).combine_chunks().cast(pa.int64()), 0).to_numpy()


#: Ingest columns read for each column of the distributed frames (see :func:`_derive_column`).
_SOURCES: dict[str, tuple[str, ...]] = {
    "file_no": (),
    "split_code": (),
    "is_train": (),
    "row_id": ("row_id",),
    "media": ("present_media",),
    "domains": ("present_domains",),
    **{
        c: (c,)
        for c in (
            "tweet_type",
            "language",
            "a_user_id",
            "b_user_id",
            "b_follows_a",
            "a_is_verified",
            "tweet_timestamp",
            "b_follower_count",
            "b_following_count",
        )
    },
    **{t: (TARGET_TIMESTAMP[t],) for t in TARGETS},
}


def _derive_column(name: str, t: pa.Table, file_no: int, split: str) -> pa.Array:
    """Column ``name`` of a distributed frame, from an ingest table and its part's number/split.

    Join keys are never null (``""``/false stand for missing values) because pandas and cuDF treat
    null keys differently; labels are 1 when the engagement's timestamp is present.
    """
    n = t.num_rows
    if name == "file_no":
        return pa.array(np.full(n, file_no, dtype=np.int32))
    if name == "split_code":
        return pa.array(np.full(n, SPLITS.index(split), dtype=np.int8))
    if name == FIT_COL:
        return pa.array(np.full(n, split == "train", dtype=np.bool_))
    if name in ("media", "domains"):
        return _joined(t, _SOURCES[name][0])
    if name in ("tweet_type", "language", "a_user_id", "b_user_id"):
        return _str(t, name)
    if name in ("b_follows_a", "a_is_verified"):
        return _bool(t, name)
    if name in ("row_id", "tweet_timestamp", "b_follower_count", "b_following_count"):
        return pa.array(_int(t, name))
    if name in TARGETS:
        return pc.is_valid(t.column(TARGET_TIMESTAMP[name]).combine_chunks()).cast(pa.int8())
    raise KeyError(f"unknown derived column {name!r}")


def _derive(t: pa.Table, columns: tuple[str, ...], file_no: int, split: str) -> pa.Table:
    return pa.table({c: _derive_column(c, t, file_no, split) for c in columns})


def _sources(columns: tuple[str, ...]) -> list[str]:
    return sorted({src for c in columns for src in _SOURCES[c]})


def _read_frame(item: tuple[int, str, str], *, columns: tuple[str, ...], backend: str, storage_options: dict[str, Any]):
    """One ingest part as a backend DataFrame of derived ``columns`` (one Dask partition)."""
    file_no, url, split = item
    table = read_parquet(url, storage_options, columns=_sources(columns))
    return ops.to_backend(_derive(table, columns, file_no, split), backend)


def _frame(
    parts: list[IngestPart],
    columns: tuple[str, ...],
    *,
    file_nos: list[int],
    backend: str,
    storage_options: dict[str, Any],
    schema: pa.Schema,
):
    """A Dask DataFrame with one partition per part, in order (partition i = ``parts[i]``)."""
    import dask.dataframe as dd

    meta = ops.to_backend(_derive(schema.empty_table().select(_sources(columns)), columns, 0, "train"), backend)
    items = [(i, p.url, p.split) for i, p in zip(file_nos, parts)]
    read = functools.partial(_read_frame, columns=columns, backend=backend, storage_options=storage_options)
    return dd.from_map(read, items, meta=meta, label="read-ingest", enforce_metadata=False)


# -- row-local features ----------------------------------------------------------------------
#: Ingest columns the row-local features (and the alignment check) read.
_LOCAL_INPUT = [
    "row_id",
    "tweet_timestamp",
    "hashtags",
    "present_domains",
    "present_links",
    "present_media",
    "text_tokens",
    "a_follower_count",
    "a_following_count",
    "b_follower_count",
    "b_following_count",
    "a_account_creation",
    "b_account_creation",
    "a_is_verified",
    "b_is_verified",
    "b_follows_a",
]


def local_features(t: pa.Table) -> dict[str, np.ndarray]:
    """The row-local features of an ingest table (float32 arrays in :data:`LOCAL_FEATURES` order)."""
    ts = _int(t, "tweet_timestamp")
    days = ts // 86400
    out: dict[str, np.ndarray] = {
        "tweet_hour": (ts // 3600) % 24,
        "tweet_minute": (ts // 60) % 60,
        "tweet_second": ts % 60,
        # 1970-01-01 was a Thursday: Monday = 0 … Sunday = 6.
        "tweet_dayofweek": (days + 3) % 7,
    }
    for name, col in (
        ("n_hashtags", "hashtags"),
        ("n_domains", "present_domains"),
        ("n_links", "present_links"),
        ("n_media", "present_media"),
        ("n_text_tokens", "text_tokens"),
    ):
        out[name] = pc.fill_null(pc.list_value_length(t.column(col).combine_chunks()), 0).to_numpy()
    for c in ("a_follower_count", "a_following_count", "b_follower_count", "b_following_count"):
        out[f"{c}_log1p"] = np.log1p(np.maximum(_int(t, c), 0).astype(np.float64))
    for u in ("a", "b"):
        out[f"{u}_account_age_days"] = (ts - _int(t, f"{u}_account_creation")) / 86400.0
    for c in ("a_is_verified", "b_is_verified", "b_follows_a"):
        out[c] = _bool(t, c).to_numpy(zero_copy_only=False)
    return {name: np.asarray(out[name], dtype=np.float32) for name in LOCAL_FEATURES}


# -- writing ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _WriteTask:
    part: IngestPart
    out_url: str
    storage_options: dict[str, Any]
    #: Names of the features each branch partition passed to the writer holds, in argument order.
    branches: tuple[tuple[str, tuple[str, ...]], ...]
    fit: bool


def _aligned(df, ids: np.ndarray, names: tuple[str, ...], what: str, path: str) -> dict[str, np.ndarray]:
    """The ``names`` columns of a branch partition, reordered to the ingest part's row order.

    The partition must hold exactly the part's rows (any order); anything else means the
    realignment went wrong, and is an error rather than silently misaligned features.
    """
    t = ops.to_arrow(df)
    got = t.column("row_id").to_numpy()
    if len(got) != len(ids):
        raise RuntimeError(f"{path}: the {what} branch has {len(got)} rows for the part's {len(ids)}")
    src = np.argsort(got, kind="stable")
    dst = np.argsort(ids, kind="stable")
    if not np.array_equal(got[src], ids[dst]):
        raise RuntimeError(f"{path}: the row_ids of the {what} branch differ from the ingest part's")
    out = {}
    for name in names:
        values = np.empty(len(ids), dtype=np.float32)
        values[dst] = t.column(name).to_numpy(zero_copy_only=False).astype(np.float32)[src]
        out[name] = values
    return out


def _write_part(task: _WriteTask, *branch_parts) -> dict[str, Any]:
    """Assemble and write one output part; return its file metadata and normalisation partials."""
    part = task.part
    ingest = read_parquet(part.url, task.storage_options, columns=_LOCAL_INPUT)
    ids = _int(ingest, "row_id")
    cols = local_features(ingest)
    for (what, branch_names), df in zip(task.branches, branch_parts):
        cols.update(_aligned(df, ids, branch_names, what, part.path))
    names = feature_names()
    for name in names:
        if not np.isfinite(cols[name]).all():
            raise RuntimeError(f"{part.path}: feature {name} has non-finite values")
    table = pa.table({"row_id": pa.array(ids, pa.int64()), **{n: pa.array(cols[n], pa.float32()) for n in names}})

    so = task.storage_options
    written = write_parquet(table, task.out_url, so, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    result: dict[str, Any] = {"path": part.path, "split": part.split, "rows": len(ids), **written.meta()}
    if task.fit and len(ids):
        x = np.stack([cols[n] for n in names], axis=1).astype(np.float64)
        mean = x.mean(axis=0)
        result["moments"] = (len(ids), mean, ((x - mean) ** 2).sum(axis=0))
    return result


def combine_moments(moments: list[tuple[int, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std from per-part ``(n, mean, M2)``, combined in list order (Chan et al.)."""
    n, mean, m2 = moments[0]
    mean, m2 = mean.copy(), m2.copy()
    for nb, mb, m2b in moments[1:]:
        tot = n + nb
        delta = mb - mean
        mean = mean + delta * (nb / tot)
        m2 = m2 + m2b + delta**2 * (n * nb / tot)
        n = tot
    return mean, np.maximum(np.sqrt(m2 / n), STD_FLOOR)


# -- the pipeline ----------------------------------------------------------------------------
def _te_outputs(key: tuple[str, ...]) -> tuple[str, ...]:
    names = [f"{key[0]}_code"] if len(key) == 1 and key[0] in CODE_COLUMNS else []
    names += [count_name(key)] if len(key) == 1 else []
    return tuple(names + [ops.te_name(key, t) for t in TARGETS])


@dataclass
class _Statistics:
    """The fitted statistics: one persisted table per key of :data:`TE_KEYS`, and their priors."""

    tables: list
    priors: dict[int, dict[str, float]]
    categories: dict[str, int]
    table_rows: dict[tuple[str, ...], int]


def _fit(client, fit, log: Callable[[str], None]) -> _Statistics:
    """Fit: integer label statistics per key and fold on the training rows, kept on the cluster."""
    tables = [
        ops.fit_target_encoding(
            fit,
            key,
            TARGETS,
            fit_col=FIT_COL,
            fold_col=FOLD_COL,
            split_out=fit.npartitions if key in HIGH_CARDINALITY else 1,
        )
        for key in TE_KEYS
    ]
    t0 = time.time()
    log(f"fitting the statistics of {len(TE_KEYS)} keys on {fit.npartitions} training part(s)")
    tables = client.persist(tables)
    wait_for(_futures_of(tables), "statistics", log)
    priors = ops.fold_means(tables[0], TARGETS, fold_col=FOLD_COL)
    counts = [(t[FOLD_COL] == -1).sum() for t in tables] + [t[FOLD_COL].size for t in tables]
    sizes = client.gather(client.compute(counts))
    categories = {ops.key_name(k): int(v) for k, v in zip(TE_KEYS, sizes)}
    table_rows = dict(zip(TE_KEYS, (int(v) for v in sizes[len(TE_KEYS) :])))
    log(f"statistics fitted in {time.time() - t0:.1f}s; global means {priors[-1]}; categories {categories}")
    return _Statistics(tables, priors, categories, table_rows)


def _encoding_branches(
    client,
    stats: _Statistics,
    frame,
    with_folds,
    n: int,
    cfg: FeaturesConfig,
    broadcast_max_rows: int,
    log: Callable[[str], None],
) -> list[tuple[str, tuple[str, ...], Any]]:
    """Transform: the categorical features of every row, as branches with one partition per part.

    Each key's encodings (with its count, and its Categorify code where kept) are evaluated once
    per (category, fold) and persisted. Small tables become one partition each: their merges are
    broadcast joins that keep every part's rows in its own partition, so they share one frame and
    need no shuffle. Each large table is a hash join of a narrow frame, then range-partitioned
    back to one partition per part.
    """
    labels = {t: t for t in TARGETS}
    broadcast = {k: k not in HIGH_CARDINALITY or stats.table_rows[k] <= broadcast_max_rows for k in TE_KEYS}
    encodings = []
    for key, table in zip(TE_KEYS, stats.tables):
        carry = []
        if len(key) == 1 and key[0] in CODE_COLUMNS:
            col = key[0]
            cats = ops.fit_categories(table[table[FOLD_COL] == -1][col])
            table = ops.apply_categories(table, cats, col, out=f"{col}_code")
            carry.append(f"{col}_code")
        enc = ops.target_encodings(
            table,
            key,
            labels,
            priors=stats.priors,
            smoothing=cfg.te_smoothing,
            fold_col=FOLD_COL,
            count_out=count_name(key) if len(key) == 1 else None,
            carry=carry,
        )
        encodings.append(enc.repartition(npartitions=1) if broadcast[key] else enc)
    encodings = client.persist(encodings)

    def encode(ddf, key, enc):
        ints = [c for c in _te_outputs(key) if not c.startswith("TE_")]
        return ops.apply_target_encoding(ddf, enc, key, unseen=stats.priors[-1], fold_col=FOLD_COL, ints=ints)

    branches = []
    small = [(k, e) for k, e in zip(TE_KEYS, encodings) if broadcast[k]]
    large = [(k, e) for k, e in zip(TE_KEYS, encodings) if not broadcast[k]]
    ddf = with_folds(frame(("row_id", FIT_COL, *dict.fromkeys(c for k, _ in small for c in k))))
    for key, enc in small:
        ddf = encode(ddf, key, enc)
    names = tuple(c for k, _ in small for c in _te_outputs(k))
    branches.append(("broadcast-encoding", names, ddf[["row_id", *names]]))
    for key, enc in large:
        ddf = encode(with_folds(frame(("file_no", "row_id", FIT_COL, *key))), key, enc)
        names = _te_outputs(key)
        branches.append((ops.key_name(key), names, _by_part(ddf[["file_no", "row_id", *names]], n)))
    log(f"merging {len(small)} encoding table(s) by broadcast, {len(large)} by hash join")
    return branches


def _lag_branch(frame, n: int) -> tuple[str, tuple[str, ...], Any]:
    """Difference lags over all splits, per reader, in time order; one partition per part."""
    lag = frame(("file_no", "split_code", "row_id", LAG_BY, "tweet_timestamp", *LAG_DIFF, *LAG_CHANGED))
    lag = ops.difference_lag(
        lag, by=LAG_BY, order=LAG_ORDER, diff_cols=LAG_DIFF, changed_cols=LAG_CHANGED, shifts=LAG_SHIFTS
    )
    names = tuple(lag_features())
    return "difference-lag", names, _by_part(lag[["file_no", "row_id", *names]], n)


def _by_part(ddf, n: int):
    """Range-partition by part number: partition i holds exactly the rows of part i."""
    return ddf.set_index("file_no", divisions=list(range(n + 1)))


def build_features(
    client,
    parts: list[IngestPart],
    out_url: str,
    cfg: FeaturesConfig,
    *,
    storage_options: dict[str, Any] | None = None,
    backend: str = "pandas",
    broadcast_max_rows: int = BROADCAST_MAX_ROWS,
    log: Callable[[str], None] = lambda msg: None,
) -> dict[str, Any]:
    """Compute the features of ``parts`` on the Dask cluster of ``client`` and write them.

    Writes ``{out_url}/{part.path}`` for every part. Returns ``{"files": [per-file metadata],
    "extra": {manifest extra}}``. ``broadcast_max_rows`` picks the join strategy of each
    statistics table (see :data:`BROADCAST_MAX_ROWS`); it does not change the output.
    """
    storage_options = dict(storage_options or {})
    train = [i for i, p in enumerate(parts) if p.split == "train"]
    if not train:
        raise ValueError("the features stage needs a training split: the ingest outputs have no train/ parts")
    n = len(parts)
    schema = _read_schema(parts[0].url, storage_options)

    def frame(columns: tuple[str, ...], subset: list[int] | None = None):
        idx = list(range(n)) if subset is None else subset
        return _frame(
            [parts[i] for i in idx],
            columns,
            file_nos=idx,
            backend=backend,
            storage_options=storage_options,
            schema=schema,
        )

    def with_folds(ddf):
        return ops.assign_folds(ddf, key="row_id", fit_col=FIT_COL, k=cfg.te_folds, seed=cfg.seed, out=FOLD_COL)

    key_cols = tuple(dict.fromkeys(c for key in TE_KEYS for c in key))
    stats = _fit(client, with_folds(frame(("row_id", FIT_COL, *key_cols, *TARGETS), train)), log)
    branches = _encoding_branches(client, stats, frame, with_folds, n, cfg, broadcast_max_rows, log)
    categories, means = stats.categories, stats.priors[-1]
    del stats  # the encodings are persisted; the statistics tables can go
    branches.append(_lag_branch(frame, n))
    for what, _, ddf in branches:
        if ddf.npartitions != n:  # pragma: no cover - guards the partition-per-part invariant
            raise RuntimeError(f"the {what} branch has {ddf.npartitions} partitions for {n} parts")

    t0 = time.time()
    log(f"computing {len(feature_names())} features and writing {n} part(s)")
    results = _write_parts(client, parts, branches, out_url, storage_options, log)
    elapsed = time.time() - t0
    mean, std = combine_moments([r.pop("moments") for r in results if "moments" in r])
    rows = {s: sum(r["rows"] for r in results if r["split"] == s) for s in SPLITS if any(p.split == s for p in parts)}
    names = feature_names()
    extra = {
        "feature_names": names,
        "normalization": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        "te": categories,
        "global_mean": {t: means[t] for t in TARGETS},
        "te_folds": cfg.te_folds,
        "te_smoothing": cfg.te_smoothing,
        "seed": cfg.seed,
        "rows": rows,
        "backend": backend,
    }
    log(f"wrote {n} part(s), {sum(rows.values()):,} rows x {len(names)} features in {elapsed:.1f}s")
    return {"files": results, "extra": extra}


def _write_parts(
    client: Any,
    parts: list[IngestPart],
    branches: list[tuple[str, tuple[str, ...], Any]],
    out_url: str,
    storage_options: dict[str, Any],
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """One writer task per ingest part, fed the part's partition of every branch; results in part order."""
    import dask

    write = dask.delayed(_write_part, pure=True)
    specs = tuple((what, names) for what, names, _ in branches)
    per_branch = [ddf.to_delayed() for _, _, ddf in branches]
    tasks = [
        write(
            _WriteTask(p, join(out_url, p.path), storage_options, specs, p.split == "train"),
            *(d[i] for d in per_branch),
        )
        for i, p in enumerate(parts)
    ]
    return gather_in_order(client.compute(tasks), "parts written", log)


def _read_schema(url: str, storage_options: dict[str, Any]) -> pa.Schema:
    """The schema of an ingest part, checked to hold every column the features read."""
    schema = read_parquet_schema(url, storage_options)
    missing = sorted((set(_LOCAL_INPUT) | set(_sources(tuple(_SOURCES)))) - set(schema.names))
    if missing:
        raise ValueError(f"{url} lacks the ingest columns {missing} (docs/data-format.md §4)")
    return schema


def _futures_of(collections) -> list:
    from distributed import futures_of

    return [f for c in collections for f in futures_of(c)]


def run(ctx: StageContext) -> None:
    parts = ingest_parts(ctx.input("ingest"))
    if not parts:
        raise ValueError("the ingest stage published no data parts")
    backend = "cudf" if ctx.cfg.cluster.gpu else "pandas"
    result = build_features(
        ctx.client(),
        parts,
        ctx.out_url(),
        ctx.cfg.features,
        storage_options=ctx.store.storage_options,
        backend=backend,
        log=ctx.log,
    )
    for f in result["files"]:
        ctx.file_meta[f["path"]] = {k: f[k] for k in ("rows", "bytes", "sha256", "split")}
    ctx.extra.update(result["extra"])
