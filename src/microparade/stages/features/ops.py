"""Backend-agnostic Dask re-implementations of the NVTabular ops the features stage needs.

The ops take and return lazy ``dask.dataframe`` collections and use only operations that both the
pandas and the cuDF Dask backends implement (groupby sums, merges, shuffles, ``sort_values``,
``shift``, ``where``, ``fillna``, integer arithmetic on Series), so one code path serves CPU and GPU
clusters. The only backend-specific lines are the two conversions to and from Arrow
(:func:`to_backend`, :func:`to_arrow`), where the cuDF branch is explicit.

Semantics (REFERENCE.md §4, with NVTabular's leaks fixed):

- :func:`fit_categories` / :func:`apply_categories` — Categorify: codes ``1..n`` in sorted category
  order of the fit rows; ``0`` is reserved for categories unseen at fit time.
- :func:`fit_target_encoding` / :func:`fold_means` / :func:`target_encodings` /
  :func:`apply_target_encoding` — k-fold target encoding ``(sum_y + p * prior) / (count + p)``
  and the JoinGroupby count of the same key. Fit
  rows get out-of-fold statistics and an out-of-fold prior (a row never sees its own fold, hence
  never its own label); other rows get the full fit statistics and the global mean; unseen
  categories get the global mean and a count of 0. Folds come from :func:`assign_folds`, a hash of
  a stable row key, so they do not depend on partitioning.
- :func:`difference_lag` — ``col - col.shift(s)`` within a partition key after a shuffle by that
  key and a sort by time; 0 where the key changes, with an indicator telling the two cases apart.

All statistics are integer sums, so every float the ops produce is computed from exact integers
and is bit-identical however the data is partitioned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ...hashing import splitmix64

BACKENDS = ("pandas", "cudf")

_MASK64 = (1 << 64) - 1


# ----------------------------------------------------------------------------------------------
# backend conversions (the only backend-specific code)
# ----------------------------------------------------------------------------------------------
def to_backend(table: pa.Table, backend: str):
    """An Arrow table as a DataFrame of ``backend`` (``pandas`` or ``cudf``)."""
    if backend == "cudf":
        try:
            import cudf
        except ImportError as exc:  # pragma: no cover - GPU installs only
            raise RuntimeError("the cuDF backend (cluster.gpu) needs cudf: install microparade[gpu]") from exc
        return cudf.DataFrame.from_arrow(table)
    if backend == "pandas":
        return table.to_pandas()
    raise ValueError(f"unknown DataFrame backend {backend!r}; expected one of {BACKENDS}")


def to_arrow(df) -> pa.Table:
    """A pandas or cuDF DataFrame as an Arrow table, without its index."""
    if type(df).__module__.startswith("cudf"):
        return df.to_arrow(preserve_index=False)
    return pa.Table.from_pandas(df, preserve_index=False)


# ----------------------------------------------------------------------------------------------
# folds
# ----------------------------------------------------------------------------------------------
def fold_of(key, k: int, seed: int):
    """Fold ``splitmix64(key ^ seed) % k`` of non-negative int64 keys (numpy or Series), as int8."""
    if not 2 <= k <= 127:
        raise ValueError(f"the number of folds must be in [2, 127], got {k}")
    z = splitmix64(key.astype("uint64") ^ np.uint64(seed & _MASK64))
    return (z % np.uint64(k)).astype("int8")


def _folds_partition(df, key: str, fit_col: str, k: int, seed: int, out: str):
    fold = fold_of(df[key], k, seed).where(df[fit_col], np.int8(-1)).astype("int8")
    return df.assign(**{out: fold})


def assign_folds(ddf, *, key: str, fit_col: str, k: int, seed: int, out: str = "fold"):
    """Add ``out``: the fold of each fit row (hash of its ``key``), -1 for every other row.

    The fold depends only on the row's stable key and the seed — never on partitioning, task
    order or worker count — so out-of-fold statistics are reproducible.
    """
    args = (key, fit_col, k, seed, out)
    return ddf.map_partitions(_folds_partition, *args, meta=_folds_partition(ddf._meta, *args))


# ----------------------------------------------------------------------------------------------
# Categorify
# ----------------------------------------------------------------------------------------------
def _code_partition(df, col: str, code: str):
    df = df.sort_values(col)
    return df.assign(**{code: df[col].notna().astype("int64").cumsum()})


def fit_categories(values, *, code: str = "code"):
    """The category table of a Dask Series of fit values: distinct values sorted, coded ``1..n``.

    ``values`` may hold repeats (e.g. the fit rows' column, or a statistics table's key column).
    Returns a one-partition Dask DataFrame ``[values.name, code]``: the distinct values are
    gathered into one partition and sorted there, so codes do not depend on partitioning. This
    suits the low-cardinality columns Categorify is used for (the category list must fit in one
    worker). Code 0 is left for unseen categories (see :func:`apply_categories`).
    """
    col = values.name
    cats = values.to_frame().drop_duplicates(split_out=1)
    return cats.map_partitions(_code_partition, col, code, meta=_code_partition(cats._meta, col, code))


def apply_categories(ddf, table, col: str, *, out: str, code: str = "code"):
    """Add ``out`` = the code of ``ddf[col]`` in ``table`` (from :func:`fit_categories`), 0 if unseen."""
    merged = ddf.merge(table.rename(columns={code: out}), on=col, how="left")
    return _finish_merge(merged, {out: 0}, ints=(out,))


def _fill_partition(df, fills: dict[str, Any], ints: tuple[str, ...]):
    out = {c: df[c].fillna(v) for c, v in fills.items()}
    for c in ints:
        out[c] = out[c].astype("int64")
    return df.assign(**out)


def _finish_merge(merged, fills: dict[str, Any], ints: tuple[str, ...] = ()):
    """Fill the columns a left merge left empty, in one partition-wise step.

    Doing this in a single ``map_partitions`` (rather than one ``assign`` per column that refers
    back to the merged frame) keeps the expression graph linear, which keeps Dask's optimiser
    fast on long chains of merges.
    """
    return merged.map_partitions(_fill_partition, fills, ints, meta=_fill_partition(merged._meta, fills, ints))


# ----------------------------------------------------------------------------------------------
# k-fold target encoding + JoinGroupby count
# ----------------------------------------------------------------------------------------------
def key_name(cols: Sequence[str]) -> str:
    """The NVTabular name of a (possibly multi-column) key: the columns joined by ``_``."""
    return "_".join(cols)


def _partial_stats(df, cols: list[str], labels: list[str], fit_col: str, fold_col: str):
    """Per-partition label sums and row counts per (category, fold) of the fit rows."""
    fit = df[df[fit_col]]
    fit = fit.assign(n=np.int64(1), **{f"s_{lab}": fit[lab].astype("int64") for lab in labels})
    return fit.groupby(cols + [fold_col])[_sums(labels)].sum().reset_index()


def _final_stats(df, cols: list[str], labels: list[str], fold_col: str):
    """Whole-category statistics from partial sums that hold every row of their categories."""
    from dask.dataframe.dispatch import concat

    sums = _sums(labels)
    per_fold = df.groupby(cols + [fold_col])[sums].sum().reset_index()
    totals = per_fold.groupby(cols)[sums].sum().reset_index()
    per_fold = per_fold.rename(columns={c: f"{c}_fold" for c in sums}).merge(totals, on=cols, how="inner")
    whole = totals.assign(**{fold_col: -1}, **{f"{c}_fold": 0 for c in sums})
    columns = cols + [fold_col] + sums + [f"{c}_fold" for c in sums]
    table = concat([per_fold[columns], whole[columns]])
    return table.assign(
        **{fold_col: table[fold_col].astype("int8")}, **{f"{c}_fold": table[f"{c}_fold"].astype("int64") for c in sums}
    )


def _sums(labels: Sequence[str]) -> list[str]:
    return ["n"] + [f"s_{lab}" for lab in labels]


def fit_target_encoding(
    ddf,
    cols: Sequence[str],
    labels: Sequence[str],
    *,
    fit_col: str,
    fold_col: str = "fold",
    split_out: int = 1,
):
    """Integer statistics of ``labels`` per category of ``cols`` (and per fold) on the fit rows.

    Returns a lazy Dask DataFrame with one row per (category, fold) seen in the fit rows plus one
    row per category with ``fold = -1``, and columns ``n`` (fit rows of the category), ``n_fold``
    (of those, rows in this fold; 0 for fold -1), ``s_{label}`` and ``s_{label}_fold`` (sums of the
    0/1 label, same split). Keeping integers makes every derived encoding exact.

    Each partition is first reduced to partial sums per (category, fold); the partial sums are
    then shuffled by category into ``split_out`` partitions (a plain concatenation when it is 1),
    so each output partition holds all folds of its categories and finishes them locally: one
    shuffle of pre-aggregated rows per key. With ``split_out = 1`` the table is one partition.
    """
    cols, labels = list(cols), list(labels)
    args = (cols, labels, fit_col, fold_col)
    partial = ddf.map_partitions(_partial_stats, *args, meta=_partial_stats(ddf._meta, *args))
    if split_out == 1:
        partial = partial.repartition(npartitions=1)
    else:
        partial = partial.shuffle(on=cols, npartitions=split_out)
    final_args = (cols, labels, fold_col)
    return partial.map_partitions(_final_stats, *final_args, meta=_final_stats(partial._meta, *final_args))


def fold_means(table, labels: Sequence[str], *, fold_col: str = "fold") -> dict[int, dict[str, float]]:
    """The priors of the encoding: positive rate of each label over the fit rows, per fold.

    Returns ``{-1: mean over all fit rows, f: mean over the fit rows outside fold f, ...}`` from a
    :func:`fit_target_encoding` table (a lazy Dask table is aggregated here; the result has one
    row per fold). A fit row's encoding uses the prior of its fold, so its own label reaches its
    encoding neither through the category statistics nor through the prior. Integer sums make the
    means exact and order-independent.
    """
    sums = [f"{c}_fold" for c in _sums(labels)]
    per_fold = table[table[fold_col] >= 0].groupby(fold_col)[sums].sum().reset_index()
    if hasattr(per_fold, "compute"):
        per_fold = per_fold.compute()
    rows = to_arrow(per_fold).to_pylist()
    total = {c: sum(int(r[c]) for r in rows) for c in sums}
    if total["n_fold"] == 0:
        raise ValueError("no fit rows: target encoding needs a non-empty training split")

    def mean(exclude: dict[str, Any] | None) -> dict[str, float]:
        n = total["n_fold"] - (int(exclude["n_fold"]) if exclude else 0)
        if n == 0:  # every fit row is in this fold (tiny data): fall back to the overall mean
            return mean(None)
        return {lab: (total[f"s_{lab}_fold"] - (int(exclude[f"s_{lab}_fold"]) if exclude else 0)) / n for lab in labels}

    out = {-1: mean(None)}
    out.update({int(r[fold_col]): mean(r) for r in sorted(rows, key=lambda r: int(r[fold_col]))})
    return out


def te_name(cols: Sequence[str], target: str) -> str:
    """``TE_{key}_{target}``, NVTabular's name of a target encoding."""
    return f"TE_{key_name(cols)}_{target}"


def _encodings_partition(table, cols, labels, priors, smoothing, fold_col, count_out, carry):
    rest_n = table["n"] - table["n_fold"]
    denom = (rest_n + smoothing).astype("float64")
    ok = denom > 0
    out = {}
    for target, lab in labels.items():
        prior = table["n"] * 0.0 + priors[-1][lab]
        for fold, means in priors.items():
            if fold >= 0:
                prior = prior.where(table[fold_col] != fold, means[lab])
        rest_s = table[f"s_{lab}"] - table[f"s_{lab}_fold"]
        te = (rest_s + smoothing * prior) / denom.where(ok, 1.0)
        out[te_name(cols, target)] = te.where(ok, prior).astype("float64")
    if count_out is not None:
        out[count_out] = table["n"]
    return table.assign(**out)[list(cols) + [fold_col] + list(out) + list(carry)]


def target_encodings(
    table,
    cols: Sequence[str],
    labels: Mapping[str, str],
    *,
    priors: Mapping[int, Mapping[str, float]],
    smoothing: float,
    fold_col: str = "fold",
    count_out: str | None = None,
    carry: Sequence[str] = (),
):
    """The lookup table of a key's encodings, from its :func:`fit_target_encoding` statistics.

    One row per (category, fold) with ``TE_{key}_{target}`` (float64) for each ``target -> label``:
    ``TE = (S - S_f + p * m_f) / (N - N_f + p)`` where ``S``/``N`` are the label sum and row count
    of the category over all fit rows, ``S_f``/``N_f`` the same restricted to fold ``f`` and
    ``m_f`` the fold's prior (:func:`fold_means`). The fold -1 rows have ``S_f = N_f = 0`` and the
    overall mean: full fit statistics. An empty denominator (``p = 0`` with no out-of-fold rows)
    gives the prior. ``count_out`` adds the JoinGroupby count ``N``; ``carry`` keeps extra integer
    columns of ``table`` (e.g. Categorify codes joined onto it). Evaluating the formula here, once
    per category and fold, keeps the per-row work to one merge (:func:`apply_target_encoding`).
    """
    priors = {int(f): dict(m) for f, m in priors.items()}
    args = (list(cols), dict(labels), priors, float(smoothing), fold_col, count_out, tuple(carry))
    return table.map_partitions(_encodings_partition, *args, meta=_encodings_partition(table._meta, *args))


def apply_target_encoding(
    ddf,
    encodings,
    cols: Sequence[str],
    *,
    unseen: Mapping[str, float],
    fold_col: str = "fold",
    ints: Sequence[str] = (),
):
    """Merge a :func:`target_encodings` table into ``ddf`` on the key columns and the fold.

    ``ddf[fold_col]`` must be the row's fold for fit rows and -1 for all others (as
    :func:`assign_folds` makes it), so fit rows get their out-of-fold encoding — their own label
    is always left out — and other rows the full fit statistics. ``unseen`` maps each target to
    the value of its encoding for categories absent from the fit rows (the overall mean,
    ``fold_means(...)[-1]``); the integer columns ``ints`` (count, codes) are 0 for them. One merge
    per key: a broadcast join when ``encodings`` is one partition, a hash join otherwise.
    """
    cols = list(cols)
    merged = ddf.merge(encodings, on=cols + [fold_col], how="left")
    fills: dict[str, Any] = {te_name(cols, t): float(v) for t, v in unseen.items()}
    fills.update({c: 0 for c in ints})
    return _finish_merge(merged, fills, tuple(ints))


# ----------------------------------------------------------------------------------------------
# DifferenceLag
# ----------------------------------------------------------------------------------------------
def lag_names(by: str, diff_cols: Sequence[str], changed_cols: Sequence[str], shifts: Sequence[int]) -> list[str]:
    """Output columns of :func:`difference_lag`, in order."""
    names = []
    for s in shifts:
        names += [f"{c}_difference_lag_{s}" for c in (*diff_cols, *changed_cols)]
        names.append(f"{by}_has_lag_{s}")
    return names


def _lag_partition(df, by: str, order: list[str], diff_cols: list[str], changed_cols: list[str], shifts: list[int]):
    """Sort one partition (holding whole ``by`` groups) and add the lag columns; pandas or cuDF."""
    df = df.sort_values([by] + order)
    out = {}
    for s in shifts:
        same = (df[by] == df[by].shift(s)).fillna(False).astype("bool")
        for c in diff_cols:
            diff = (df[c] - df[c].shift(s)).astype("float64")
            out[f"{c}_difference_lag_{s}"] = diff.where(same, 0.0).fillna(0.0)
        for c in changed_cols:
            changed = (df[c] != df[c].shift(s)).fillna(True).astype("bool") & same
            out[f"{c}_difference_lag_{s}"] = changed.astype("float64")
        out[f"{by}_has_lag_{s}"] = same.astype("float64")
    return df.assign(**out)


def difference_lag(
    ddf,
    *,
    by: str,
    order: Sequence[str],
    diff_cols: Sequence[str] = (),
    changed_cols: Sequence[str] = (),
    shifts: Sequence[int] = (1, -1),
):
    """DifferenceLag within ``by`` groups ordered by ``order`` (which must make the order total).

    Adds, for each shift ``s``: ``{c}_difference_lag_{s} = c - c.shift(s)`` for ``diff_cols``;
    ``{c}_difference_lag_{s} = 1.0 if c != c.shift(s) else 0.0`` for ``changed_cols`` (categorical
    columns, whose differences would be meaningless); and ``{by}_has_lag_{s}`` = 1.0 when the row
    at distance ``s`` belongs to the same group. Where it does not (the group's first row for
    ``s = 1``, its last for ``s = -1``) the lag values are 0.0 instead of null. The data is
    shuffled by ``by`` so each group sits whole in one partition, then each partition is sorted;
    memory stays bounded by partition size (and the largest group).
    """
    diff_cols, changed_cols, shifts = list(diff_cols), list(changed_cols), [int(s) for s in shifts]
    if 0 in shifts:
        raise ValueError("a difference lag shift of 0 is always 0")
    args = (by, list(order), diff_cols, changed_cols, shifts)
    shuffled = ddf.shuffle(on=by)
    meta = _lag_partition(shuffled._meta, *args)
    return shuffled.map_partitions(_lag_partition, *args, meta=meta)
