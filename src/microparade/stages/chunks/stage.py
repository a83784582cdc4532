"""chunks stage: join ingest + text + features per split, shuffle, write ~``target_mb`` Parquet chunks.

Every split is written as self-contained training examples (docs/data-format.md §7) in files
``{split}/chunk-NNNNN.parquet`` of about ``chunks.target_mb`` decimal MB each.

**Order.** The rows of every split are ordered by :func:`shuffle_keys` = ``splitmix64(row_id ^
seed)``. splitmix64 is a bijection of 64-bit integers, so distinct ``row_id``s get distinct keys and
the order is total: it depends on nothing but the rows and ``chunks.seed``, never on the number of
parts, Dask workers or task completion order. Valid and test are shuffled too (evaluation keys
predictions by ``row_id``); a uniform mix makes every chunk of a split alike, which is what lets one
bytes-per-row estimate size all of them.

**How (a two-pass external shuffle, no split ever in one process).**

1. *Map*, one Dask task per ingest part: read the part from the three inputs (joined by position
   after checking that their ``row_id`` columns agree), build the §7 columns, sort the rows by key
   (unless the split has a single group) and write them to ``_work/shuffle/{split}/part-NNNNN.arrows``
   as an uncompressed Arrow IPC stream with the record batches of each *group* (a fixed range of
   keys: the top ``group_bits`` bits) together, plus a little index of the byte offset where each
   group starts. The task returns its row count, label counts, rows per group and the rows whose
   key falls under a small threshold (a uniform random sample that is exactly the start of the
   shuffled split).
2. *Plan*, in the driver: the sample is encoded with the chunk writer's options at two sizes to
   fit ``bytes = a + b * rows`` (then ``b`` is re-measured at one chunk's size when the sample is
   larger); that gives the rows per chunk for ``target_mb``. The global rows per group give each
   chunk, a range of global ranks, the groups that hold it.
3. *Reduce*, one Dask task per chunk: read those groups' byte ranges from every part's fragment,
   sort by key, keep the chunk's rank range, write the chunk with pyarrow straight to the stage's
   staging URL while hashing it (:func:`~microparade.storage.write_parquet`).
4. *Check*: every chunk but a split's last must be within ±10 % of the target; otherwise the
   estimate is recalibrated on the written chunks and the split is cut again from the same
   fragments (a few attempts, then a clear error).

The splits overlap: every split's map tasks are submitted at once, and every split's first chunk
tasks before the driver waits for any chunk, so a split with fewer tasks than workers (one chunk,
one part) does not leave cores idle. Each split's output is computed exactly as if alone.

Memory: a map task holds one part (twice, while sorting); a reduce task holds one chunk plus the
parts of the at most two groups it shares with its neighbours (groups are about half a chunk).
The driver holds one part's group counts at a time, their running sum and the sample.
I/O: every row is written twice (fragment, chunk) and read twice; each reduce task makes two small
range reads per part (index, then data), so requests grow as parts x chunks — cheap on local and
parallel filesystems, the thing to watch with many thousands of parts on an object store. The
fragments are not compressed: zstd made them 2.2x smaller but cost ~0.7 s of CPU per 100k rows
to write and read back (about a quarter of the map and reduce work besides the chunks' own encoding),
while the bytes are scratch, written once and read once.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from ...compute.progress import gather_in_order
from ...config import SPLITS
from ...recsys_format import TARGET_TIMESTAMP, TARGETS
from ...storage import encode_parquet, read_parquet, read_range, write_parquet, write_url
from .contract import chunks_extra, upstream_extra

if TYPE_CHECKING:
    from distributed import Future

    from ...engine.context import StageContext

MB = 1_000_000
#: Every chunk but a split's last must be within this fraction of ``chunks.target_mb``.
SIZE_TOLERANCE = 0.10
#: Cut attempts per split before giving up on the size band.
MAX_CUT_ATTEMPTS = 4
#: At most 2**MAX_GROUP_BITS shuffle groups (their offsets index is 8 bytes per group per part).
MAX_GROUP_BITS = 20

INGEST_COLUMNS = ("row_id", "tweet_id", "b_user_id", "a_follower_count")
TEXT_COLUMNS = ("tokens", "hour", "hist_tokens", "hist_engagement", "hist_hour", "hist_mask", "hist_len")
_PART_RE = re.compile(r"^(?P<split>[^/]+)/part-\d+\.parquet$")
_U64 = np.uint64
_MASK64 = (1 << 64) - 1


def chunk_schema(n_features: int) -> pa.Schema:
    """The §7 schema of a chunk with ``n_features`` features (list children named as Parquet
    names them on read, so a written chunk reads back with exactly this schema)."""

    def lst(t: pa.DataType) -> pa.DataType:
        return pa.list_(pa.field("element", t))

    return pa.schema(
        [
            ("row_id", pa.int64()),
            ("tweet_id", pa.string()),
            ("b_user_id", pa.string()),
            ("a_follower_count", pa.int64()),
            *[(t, pa.int8()) for t in TARGETS],
            ("tokens", lst(pa.int32())),
            ("hour", pa.int8()),
            ("hist_tokens", lst(lst(pa.int32()))),
            ("hist_engagement", lst(pa.int8())),
            ("hist_hour", lst(pa.int8())),
            ("hist_mask", lst(pa.bool_())),
            ("hist_len", pa.int8()),
            ("features", pa.list_(pa.field("element", pa.float32()), n_features)),
        ]
    )


def shuffle_keys(row_id: np.ndarray, seed: int) -> np.ndarray:
    """``splitmix64(row_id ^ seed)`` as uint64: the sort key of the shuffled order.

    splitmix64's finaliser (add the golden-ratio constant, then xor-shift/multiply-by-odd rounds)
    is a bijection, so keys are unique whenever row_ids are.
    """
    z = np.asarray(row_id, dtype=np.int64).view(_U64) ^ _U64(seed & _MASK64)
    with np.errstate(over="ignore"):
        z = z + _U64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


def _group_of(keys: np.ndarray, bits: int) -> np.ndarray:
    if bits == 0:
        return np.zeros(len(keys), dtype=np.int64)
    return (keys >> _U64(64 - bits)).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# the chunk writer (tasks do their I/O through microparade.storage: URLs + storage options)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WriterOptions:
    """The chunk writer's settings; the size estimate encodes its sample with the same ones."""

    compression: str
    row_group_rows: int


def encoded_size(table: pa.Table, opts: WriterOptions) -> int:
    """Bytes of ``table`` written exactly as a chunk is."""
    sink = pa.BufferOutputStream()
    encode_parquet(table, sink, compression=opts.compression, row_group_size=opts.row_group_rows)
    return sink.tell()


# ----------------------------------------------------------------------------------------------
# map: one ingest part -> one key-sorted fragment
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PartInput:
    split: str
    path: str  # "{split}/part-NNNNN.parquet", the same in the three inputs
    rows: int
    ingest_url: str
    text_url: str
    features_url: str
    fragment_url: str  # key-sorted Arrow IPC stream, one batch per group
    index_url: str  # little-endian int64 byte offsets of the groups in the fragment (G + 1)


def _first_mismatch(a: pa.Array, b: pa.Array) -> str:
    x, y = a.to_numpy(), b.to_numpy()
    i = int(np.flatnonzero(x != y)[0])
    return f"row {i}: {x[i]} vs {y[i]}"


def join_part(
    part: PartInput, schema: pa.Schema, feature_names: list[str], history_size: int, storage_options: dict[str, Any]
) -> pa.Table:
    """The §7 columns of one part (labels 0/1 from the timestamps), joined by position.

    Raises ``ValueError`` naming the file when the inputs are not row-aligned or malformed.
    """
    ing = read_parquet(part.ingest_url, storage_options, columns=[*INGEST_COLUMNS, *TARGET_TIMESTAMP.values()])
    txt = read_parquet(part.text_url, storage_options, columns=["row_id", *TEXT_COLUMNS])
    fea = read_parquet(part.features_url, storage_options, columns=["row_id", *feature_names])
    n = ing.num_rows
    if n != part.rows:
        raise ValueError(f"ingest {part.path} has {n} rows, its manifest says {part.rows}")
    rid = ing.column("row_id").combine_chunks()
    for name, t in (("text", txt), ("features", fea)):
        if t.num_rows != n:
            raise ValueError(f"{name} {part.path} has {t.num_rows} rows, ingest has {n}: not row-aligned")
        other = t.column("row_id").combine_chunks().cast(pa.int64())
        if not other.equals(rid):
            raise ValueError(
                f"{name} {part.path} is not row-aligned with ingest: row_id differs at {_first_mismatch(rid, other)}"
            )
    for col in ("hist_tokens", "hist_engagement", "hist_hour", "hist_mask"):
        lengths = pc.list_value_length(txt.column(col))
        mm = pc.min_max(lengths).as_py()
        if n and (lengths.null_count or mm["min"] != history_size or mm["max"] != history_size):
            raise ValueError(
                f"text {part.path}: column {col} must hold exactly history.size={history_size} slots in every row "
                f"(lengths {mm['min']}..{mm['max']}, {lengths.null_count} null)"
            )
    cols: dict[str, Any] = {c: ing.column(c) for c in INGEST_COLUMNS}
    for t in TARGETS:
        cols[t] = pc.is_valid(ing.column(TARGET_TIMESTAMP[t])).cast(pa.int8())
    for c in TEXT_COLUMNS:
        cols[c] = txt.column(c)
    mat = np.empty((n, len(feature_names)), dtype=np.float32)
    for j, name in enumerate(feature_names):
        col = fea.column(name)
        if col.null_count:
            raise ValueError(f"features {part.path}: column {name} has {col.null_count} null(s)")
        mat[:, j] = col.cast(pa.float32()).to_numpy()
    cols["features"] = pa.FixedSizeListArray.from_arrays(pa.array(mat.reshape(-1)), len(feature_names))
    table = pa.table(cols)
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"{part.path}: input columns do not convert to the chunk schema: {exc}") from exc


def _write_fragment(sink: IO[bytes], *, table: pa.Table, schema: pa.Schema, bounds: np.ndarray) -> np.ndarray:
    """Write the group-sorted ``table`` as an IPC stream with the batches of each non-empty group (rows
    ``bounds[g]:bounds[g + 1]``) together; return where the groups' batches start, then where the last ends."""
    counts = np.diff(bounds)
    ends: list[int] = []
    stream = pa.PythonFile(sink, mode="w")
    with ipc.new_stream(stream, schema) as w:
        # An empty batch first makes the writer emit the schema, so every group's batches
        # start at a recorded offset and can be read back without it.
        w.write_batch(pa.RecordBatch.from_pylist([], schema=schema))
        start = stream.tell()
        for g in np.flatnonzero(counts):
            for batch in table.slice(int(bounds[g]), int(counts[g])).to_batches():
                w.write_batch(batch)
            ends.append(stream.tell())
    return np.asarray([start, *ends], dtype="<i8")


def map_part(
    part: PartInput,
    *,
    schema: pa.Schema,
    feature_names: list[str],
    history_size: int,
    seed: int,
    group_bits: int,
    sample_below: int,
    storage_options: dict[str, Any],
) -> dict[str, Any]:
    """Map task: write one part's rows as a fragment with the IPC batches of each group together
    (key-sorted when the split has several groups; the reduce sorts the rows it reads anyway).

    Returns ``rows``, ``positives`` (per target), ``counts`` (rows per group) and ``sample`` (the
    rows whose key is below ``sample_below``).
    """
    table = join_part(part, schema, feature_names, history_size, storage_options)
    keys = shuffle_keys(table.column("row_id").to_numpy(), seed)
    if group_bits:  # one group keeps the part's order: the reduce sorts its rows by key anyway
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        table = table.combine_chunks()  # take is ~2x faster on one chunk than on several
        table = table.take(order)
    n_groups = 1 << group_bits
    bounds = np.searchsorted(_group_of(keys, group_bits), np.arange(n_groups + 1), side="left")
    counts = np.diff(bounds).astype(np.int64)
    write = functools.partial(_write_fragment, table=table, schema=schema, bounds=bounds)
    positions, _ = write_url(part.fragment_url, write, storage_options)
    # offsets[g] = where group g starts = end of the last non-empty group before it.
    offsets = positions[np.concatenate([[0], np.cumsum(counts > 0)])]
    write_url(part.index_url, lambda f: f.write(offsets.astype("<i8").tobytes()), storage_options)
    sampled = np.flatnonzero(keys < _U64(sample_below)) if sample_below <= _MASK64 else np.arange(len(keys))
    return {
        "rows": table.num_rows,
        "positives": [int(pc.sum(table.column(t)).as_py() or 0) for t in TARGETS],
        "counts": counts,
        "sample": table.take(sampled),  # a copy: a slice would pin the whole part
    }


# ----------------------------------------------------------------------------------------------
# reduce: groups [g0, g1] of every fragment -> one chunk
# ----------------------------------------------------------------------------------------------
def _read_groups(
    part: PartInput, g0: int, g1: int, schema: pa.Schema, storage_options: dict[str, Any]
) -> list[pa.RecordBatch]:
    """The record batches of groups ``g0..g1`` of one part's fragment (two range reads)."""
    offsets = np.frombuffer(read_range(part.index_url, 8 * g0, 8 * (g1 + 2), storage_options), dtype="<i8")
    start, end = int(offsets[0]), int(offsets[-1])
    if end <= start:
        return []
    reader = pa.BufferReader(read_range(part.fragment_url, start, end, storage_options))
    batches = []
    while reader.tell() < end - start:
        batches.append(ipc.read_record_batch(ipc.read_message(reader), schema))
    return batches


def finalize(table: pa.Table, labels_known: bool) -> pa.Table:
    """Null the labels of a split without any (test): unknown, not negative."""
    if labels_known:
        return table
    for t in TARGETS:
        i = table.schema.get_field_index(t)
        table = table.set_column(i, table.schema.field(i), pa.nulls(table.num_rows, pa.int8()))
    return table


def write_chunk(
    parts: list[PartInput],
    g0: int,
    g1: int,
    lo: int,
    hi: int,
    out_url: str,
    *,
    schema: pa.Schema,
    seed: int,
    labels_known: bool,
    opts: WriterOptions,
    storage_options: dict[str, Any],
) -> dict[str, Any]:
    """Reduce task: ranks ``[lo, hi)`` (counted from the first row of group ``g0``) of the
    key-sorted rows of groups ``g0..g1`` of all fragments, written as one chunk."""
    # One chunk (take is ~2x faster on it); the buffers read from the fragments can go at once.
    table = pa.Table.from_batches(
        [b for p in parts for b in _read_groups(p, g0, g1, schema, storage_options)], schema=schema
    ).combine_chunks()
    keys = shuffle_keys(table.column("row_id").to_numpy(), seed)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    if len(sorted_keys) > 1 and np.any(sorted_keys[1:] == sorted_keys[:-1]):
        raise ValueError(f"duplicate row_id in the rows of {out_url}: row_id must be unique per split")
    if hi > len(order):
        raise ValueError(f"{out_url}: groups {g0}..{g1} hold {len(order)} rows, fewer than the planned {hi}")
    table = finalize(table.take(order[lo:hi]), labels_known)
    written = write_parquet(
        table, out_url, storage_options, compression=opts.compression, row_group_size=opts.row_group_rows
    )
    return {"rows": table.num_rows, **written.meta()}


# ----------------------------------------------------------------------------------------------
# planning
# ----------------------------------------------------------------------------------------------
def fit_size_model(sample: pa.Table, opts: WriterOptions) -> tuple[float, float]:
    """``(a, b)`` with encoded bytes ≈ ``a + b * rows``, from the sample encoded at two sizes.

    ``a`` (footer, schema, per-file overhead) matters for small targets, ``b`` for big ones.
    """
    n = sample.num_rows
    if n == 0:
        raise ValueError("cannot estimate chunk sizes from an empty sample")
    full = encoded_size(sample, opts)
    half_n = n // 2
    if half_n < 16:
        return 0.0, full / n
    half = encoded_size(sample.slice(0, half_n), opts)
    b = (full - half) / (n - half_n)
    a = half - b * half_n
    if b <= 0 or a < 0:  # degenerate sample: fall back to a proportional model
        return 0.0, full / n
    return a, b


def rows_for(target_bytes: float, a: float, b: float) -> int:
    return max(1, int(round((target_bytes - a) / b)))


def estimate_rows_per_chunk(sample: pa.Table, target_bytes: float, opts: WriterOptions) -> tuple[int, float, float]:
    """Rows per chunk for ``target_bytes``, and the size model ``(a, b)`` behind it.

    When the sample holds more rows than a chunk, the first guess is encoded as it would be written
    and ``b`` is corrected at that size: small chunks compress differently (fewer repeated ids for
    the dictionaries, one row group) from the whole sample.
    """
    a, b = fit_size_model(sample, opts)
    r = rows_for(target_bytes, a, b)
    if r < sample.num_rows:
        at_r = encoded_size(sample.slice(0, r), opts)
        if at_r > a:
            b = (at_r - a) / r
            r = rows_for(target_bytes, a, b)
    return r, a, b


@dataclass(frozen=True)
class ChunkPlan:
    index: int
    g0: int
    g1: int
    lo: int
    hi: int

    @property
    def rows(self) -> int:
        return self.hi - self.lo


def plan_chunks(group_counts: np.ndarray, rows_per_chunk: int) -> list[ChunkPlan]:
    """Cut the key-ordered split into consecutive rank ranges of ``rows_per_chunk`` (last: the
    rest), each located by the groups that hold it."""
    cum = np.concatenate([[0], np.cumsum(group_counts)])
    n = int(cum[-1])
    plans = []
    for c, start in enumerate(range(0, n, rows_per_chunk)):
        end = min(n, start + rows_per_chunk)
        g0 = int(np.searchsorted(cum, start, side="right") - 1)
        g1 = int(np.searchsorted(cum, end - 1, side="right") - 1)
        base = int(cum[g0])
        plans.append(ChunkPlan(c, g0, g1, start - base, end - base))
    return plans


def group_bits_for(rows: int, approx_rows_per_chunk: float) -> int:
    """Bits of key prefix per group so that a group holds about half a chunk."""
    want = max(1.0, 2.0 * rows / max(approx_rows_per_chunk, 1.0))
    return min(MAX_GROUP_BITS, max(0, math.ceil(math.log2(want))))


def _size_summary(sizes: list[int]) -> dict[str, float] | None:
    if not sizes:
        return None
    mb = np.asarray(sizes, dtype=np.float64) / MB
    return {"min": round(float(mb.min()), 4), "max": round(float(mb.max()), 4), "mean": round(float(mb.mean()), 4)}


# ----------------------------------------------------------------------------------------------
# the stage
# ----------------------------------------------------------------------------------------------
def _split_parts(ctx: StageContext) -> dict[str, list[PartInput]]:
    """Ingest parts per split, checked against the text and features manifests (same files,
    same row counts), in file-name (= row_id) order."""
    ingest, text, features = ctx.input("ingest"), ctx.input("text"), ctx.input("features")
    by_path = {name: {f["path"]: f for f in m.files} for name, m in (("text", text), ("features", features))}
    out: dict[str, list[PartInput]] = {}
    seen: set[str] = set()
    for f in sorted(ingest.files, key=lambda f: f["path"]):
        m = _PART_RE.match(f["path"])
        if not m or m["split"] not in SPLITS:
            continue
        split, path = m["split"], f["path"]
        seen.add(path)
        for name in ("text", "features"):
            other = by_path[name].get(path)
            if other is None:
                raise ValueError(f"{name} has no {path}: it must mirror every ingest part (docs/data-format.md §5)")
            if other.get("rows") != f.get("rows"):
                raise ValueError(
                    f"{name} {path} has {other.get('rows')} rows, ingest has {f.get('rows')}: not row-aligned"
                )
        stem = path.rsplit("/", 1)[1][: -len(".parquet")]
        out.setdefault(split, []).append(
            PartInput(
                split=split,
                path=path,
                rows=int(f["rows"]),
                ingest_url=ingest.url(path),
                text_url=text.url(path),
                features_url=features.url(path),
                fragment_url=ctx.work_url(f"shuffle/{split}/{stem}.arrows"),
                index_url=ctx.work_url(f"shuffle/{split}/{stem}.index"),
            )
        )
    for name, paths in by_path.items():
        extra = sorted(p for p in paths if (m := _PART_RE.match(p)) and m["split"] in SPLITS and p not in seen)
        if extra:
            raise ValueError(f"{name} has {extra[0]} (and {len(extra) - 1} more) that ingest does not have")
    return {s: out[s] for s in SPLITS if s in out}


def _manifest_context(ctx: StageContext) -> dict[str, Any]:
    """What the chunks manifest copies from the text and features manifests (validated)."""
    return upstream_extra(ctx.input("text"), ctx.input("features"))


@dataclass(frozen=True)
class _SplitMap:
    """What the map tasks of one split report, summed over its parts."""

    rows: int
    positives: np.ndarray  # rows with each label set, in TARGETS order
    counts: np.ndarray  # rows per shuffle group
    sample: pa.Table  # the rows whose key is below the sample threshold (any order)


def _group_bits(ctx: StageContext, split: str, n_rows: int) -> int:
    """Shuffle-group bits of a split. Groups only bound the reduce tasks' memory; a rough bytes/row
    from the upstream file sizes is enough to size them (the output never depends on it)."""
    upstream = [f for name in ("text", "features") for f in ctx.input(name).files if f["path"].startswith(f"{split}/")]
    rough_bpr = sum(int(f["bytes"]) for f in upstream) / max(n_rows, 1) + 64
    return group_bits_for(n_rows, ctx.cfg.chunks.target_mb * MB / rough_bpr)


def _submit_maps(
    ctx: StageContext, split: str, parts: list[PartInput], meta: dict[str, Any], schema: pa.Schema
) -> list[Future[dict[str, Any]]]:
    """Start one map task per part of a split (:func:`map_part`); results in part order."""
    cfg = ctx.cfg.chunks
    n_expected = sum(p.rows for p in parts)
    bits = _group_bits(ctx, split, n_expected)
    sample_below = (cfg.sample_rows << 64) // max(n_expected, 1)
    ctx.log("%s: %d rows in %d part(s); map into %d shuffle group(s)", split, n_expected, len(parts), 1 << bits)
    client = ctx.client()
    return [
        client.submit(
            map_part,
            p,
            schema=schema,
            feature_names=meta["feature_names"],
            history_size=meta["history_size"],
            seed=cfg.seed,
            group_bits=bits,
            sample_below=sample_below,
            storage_options=ctx.store.storage_options,
            pure=False,
        )
        for p in parts
    ]


def _map_split(
    ctx: StageContext, split: str, parts: list[PartInput], futures: list[Future[dict[str, Any]]]
) -> _SplitMap:
    """The summed results of a split's map tasks; checks that every row was read."""
    n_expected = sum(p.rows for p in parts)
    results = gather_in_order(futures, f"{split} map", ctx.log)
    counts = np.zeros(len(results[0]["counts"]), dtype=np.int64)
    positives = np.zeros(len(TARGETS), dtype=np.int64)
    for res in results:
        counts += res["counts"]
        positives += np.asarray(res["positives"], dtype=np.int64)
    rows = sum(r["rows"] for r in results)
    if rows != n_expected or int(counts.sum()) != rows:
        raise RuntimeError(f"{split}: ingest lists {n_expected} rows but the map read {rows}")
    return _SplitMap(rows, positives, counts, pa.concat_tables([r["sample"] for r in results]))


def _first_rows_per_chunk(
    ctx: StageContext, split: str, mapped: _SplitMap, labels_known: bool, opts: WriterOptions
) -> int:
    """Rows per chunk from the size model of the split's sample, shuffled and finalised like a chunk."""
    cfg = ctx.cfg.chunks
    target = cfg.target_mb * MB
    sample = mapped.sample
    sample = finalize(sample.take(np.argsort(shuffle_keys(sample.column("row_id").to_numpy(), cfg.seed))), labels_known)
    r, a, b = estimate_rows_per_chunk(sample, target, opts)
    if mapped.rows > 1 and a + b > (1 + SIZE_TOLERANCE) * target:
        raise ValueError(
            f"{split}: chunks.target_mb={cfg.target_mb} is below the smallest chunk this data makes "
            f"(one row: ~{(a + b) / MB:.4f} MB of Parquet footer, schema and data); raise chunks.target_mb"
        )
    ctx.log(
        "%s: size model %.0f + %.1f bytes/row from %d sampled rows -> %d rows per chunk",
        split,
        a,
        b,
        sample.num_rows,
        r,
    )
    return r


def _next_rows_per_chunk(measured: list[tuple[int, float]], target: float) -> int:
    """Rows per chunk for the next cut, from the ``(rows per chunk, mean chunk size)`` of the cuts so
    far: a secant through the last two points once there are two, else proportional scaling. (Keeping
    the sample's overhead term can stall when it is off: small chunks compress differently from the
    sample.) Never the last cut's value again; may be 0 when no cut can work."""
    r, mean = measured[-1]
    proportional = max(1, int(round(r * target / mean)))
    r_new = proportional
    if len(measured) >= 2 and measured[-2][0] != r:
        r0, s0 = measured[-2]
        slope = (mean - s0) / (r - r0)
        r_new = max(1, int(round(r + (target - mean) / slope))) if slope > 0 else proportional
    if r_new == r:
        r_new = r + (1 if mean < target else -1)
    return r_new


@dataclass
class _Cut:
    """One split being cut into chunks: its map summary, the reduce task's settings and the chunk
    tasks of the current attempt (``rows_per_chunk`` rows each, the last the rest)."""

    split: str
    mapped: _SplitMap
    labels_known: bool
    write: Callable[..., dict[str, Any]]  # write_chunk with the split's settings
    parts_on_workers: Future[list[PartInput]] | None
    rows_per_chunk: int = 0
    plans: list[ChunkPlan] = field(default_factory=list)
    futures: list[Future[dict[str, Any]]] = field(default_factory=list)
    attempt: int = 0


def _submit_chunks(ctx: StageContext, cut: _Cut, rows_per_chunk: int) -> None:
    """Plan the split at ``rows_per_chunk`` and start one reduce task (:func:`write_chunk`) per chunk."""
    client = ctx.client()
    cut.rows_per_chunk, cut.attempt = rows_per_chunk, cut.attempt + 1
    cut.plans = plan_chunks(cut.mapped.counts, rows_per_chunk)
    cut.futures = [
        client.submit(
            cut.write,
            cut.parts_on_workers,
            p.g0,
            p.g1,
            p.lo,
            p.hi,
            ctx.out_url(f"{cut.split}/chunk-{p.index:05d}.parquet"),
            pure=False,
        )
        for p in cut.plans
    ]


def _written(ctx: StageContext, cut: _Cut) -> list[dict[str, Any]]:
    """The results of the current attempt's chunk tasks, checked against the plan."""
    written = gather_in_order(cut.futures, f"{cut.split} chunks (attempt {cut.attempt})", ctx.log)
    for p, w in zip(cut.plans, written):
        if w["rows"] != p.rows:
            raise RuntimeError(f"{cut.split} chunk {p.index}: wrote {w['rows']} rows, planned {p.rows}")
    return written


def _start_cut(
    ctx: StageContext, split: str, parts: list[PartInput], maps: list[Future[dict[str, Any]]], schema: pa.Schema
) -> _Cut:
    """Collect a split's map results, size its chunks from the sample and start writing them."""
    cfg = ctx.cfg.chunks
    opts = WriterOptions(cfg.compression, cfg.row_group_rows)
    mapped = _map_split(ctx, split, parts, maps)
    labels_known = bool(mapped.positives.sum() > 0)
    if not labels_known:
        ctx.log("%s: no label timestamp set in any row -> labels are unknown (null)", split)
    write = functools.partial(
        write_chunk,
        schema=schema,
        seed=cfg.seed,
        labels_known=labels_known,
        opts=opts,
        storage_options=ctx.store.storage_options,
    )
    if mapped.rows == 0:
        return _Cut(split, mapped, labels_known, write, None)
    r = _first_rows_per_chunk(ctx, split, mapped, labels_known, opts)
    # Every reduce task reads every part's fragment: ship the list to each worker once, as a task's
    # result rather than scattered data, which Dask cannot recompute when the worker holding it dies.
    cut = _Cut(split, mapped, labels_known, write, ctx.client().submit(list, parts, pure=False))
    _submit_chunks(ctx, cut, r)
    return cut


def _finish_cut(ctx: StageContext, cut: _Cut) -> dict[str, Any]:
    """Wait for a split's chunks, re-cutting until every chunk but the last fits the size band."""
    cfg = ctx.cfg.chunks
    target = cfg.target_mb * MB
    split, mapped = cut.split, cut.mapped
    result: dict[str, Any] = {"rows": mapped.rows, "positives": mapped.positives, "labels_known": cut.labels_known}
    if not cut.futures:
        return {**result, "chunks": [], "rows_per_chunk": 0, "cut_attempts": 0}
    measured: list[tuple[int, float]] = []
    while True:
        written, r = _written(ctx, cut), cut.rows_per_chunk
        full = [w["bytes"] for w in written[:-1]]
        bad = [i for i, s in enumerate(full) if abs(s - target) > SIZE_TOLERANCE * target]
        if not bad:
            break
        measured.append((r, float(np.mean(full))))
        r_new = _next_rows_per_chunk(measured, target)
        sizes = _size_summary(full)
        if cut.attempt == MAX_CUT_ATTEMPTS or r_new < 1:
            raise RuntimeError(
                f"{split}: {len(bad)} of {len(full)} chunks are outside {cfg.target_mb} MB ±{SIZE_TOLERANCE:.0%} "
                f"with {r} rows per chunk (sizes {sizes} MB); rows vary too much in size for chunks this "
                f"small: raise chunks.target_mb"
            )
        ctx.log(
            "%s: %d chunk(s) outside the size band (%s MB); re-cutting at %d rows per chunk",
            split,
            len(bad),
            sizes,
            r_new,
        )
        for p in cut.plans:
            ctx.store.rm_file(f"{ctx.staging_rel}/{split}/chunk-{p.index:05d}.parquet")
        _submit_chunks(ctx, cut, r_new)
    total = sum(w["rows"] for w in written)
    if total != mapped.rows:
        raise RuntimeError(f"{split}: the chunks hold {total} rows, ingest has {mapped.rows}")
    return {**result, "chunks": written, "rows_per_chunk": r, "cut_attempts": cut.attempt}


def run(ctx: StageContext) -> None:
    cfg = ctx.cfg.chunks
    meta = _manifest_context(ctx)
    schema = chunk_schema(len(meta["feature_names"]))
    splits = _split_parts(ctx)
    if not splits:
        raise ValueError("ingest published no split parts ({split}/part-NNNNN.parquet)")
    # Fragments of an earlier failed attempt may come from other inputs or settings.
    ctx.store.rm(f"{ctx.work_rel}/shuffle")
    splits_extra: dict[str, Any] = {}
    all_sizes: list[int] = []
    # Every split's maps are submitted at once, and every split's first chunk tasks before any is
    # awaited: the cores stay busy across splits (a split alone may have fewer tasks than workers).
    maps = {split: _submit_maps(ctx, split, parts, meta, schema) for split, parts in splits.items()}
    cuts = [_start_cut(ctx, split, parts, maps.pop(split), schema) for split, parts in splits.items()]
    for cut in cuts:
        split = cut.split
        res = _finish_cut(ctx, cut)
        sizes = []
        for i, w in enumerate(res["chunks"]):
            rel = f"{split}/chunk-{i:05d}.parquet"
            ctx.file_meta[rel] = {"rows": w["rows"], "bytes": w["bytes"], "sha256": w["sha256"], "split": split}
            sizes.append(w["bytes"])
        all_sizes += sizes
        n = res["rows"]
        rates = (
            {t: float(res["positives"][i]) / n for i, t in enumerate(TARGETS)} if res["labels_known"] and n else None
        )
        splits_extra[split] = {
            "rows": n,
            "chunks": len(res["chunks"]),
            "label_rates": rates,
            "rows_per_chunk": res["rows_per_chunk"],
            "cut_attempts": res["cut_attempts"],
            "chunk_mb": _size_summary(sizes[:-1]),
            "last_chunk_mb": round(sizes[-1] / MB, 4) if sizes else None,
        }
        ctx.log(
            "%s: %d rows -> %d chunk(s), %s MB (last %s MB)",
            split,
            n,
            len(sizes),
            splits_extra[split]["chunk_mb"],
            splits_extra[split]["last_chunk_mb"],
        )
        ctx.store.rm(f"{ctx.work_rel}/shuffle/{split}")
    ctx.extra.update(
        chunks_extra(meta, splits_extra, ctx.file_meta, ctx.store.url(ctx.name)),
        shuffle={"key": "splitmix64(row_id ^ seed)", "seed": cfg.seed},
        target_mb=cfg.target_mb,
        chunk_mb=_size_summary(all_sizes),
    )
