"""text stage: cleaned candidate text, per-user engagement histories, history windows.

Reads the ingest parts ``{split}/part-NNNNN.parquet`` and writes, for every one of them, a file of
the same name with the same rows in the same order (docs/data-format.md §5).

Pipeline (Dask; the number of partitions depends on the data and the config only, never on the
number of workers, and every step's output is sorted by keys, so the files are byte-identical
whatever the cluster):

1. **clean** — one task per ingest part: decode/clean/re-tokenise ``text_tokens``
   (:mod:`microparade.textclean`, batch calls into the Rust tokenizers), compute each row's
   engagement bit mask and time (sources only), and write two scratch files under ``_work/``:
   the key columns and the cleaned tokens (Arrow IPC, uncompressed: each is read back whole by
   later steps, so neither pays Parquet's encoding nor reads columns it does not need).
2. **windows** — the small key columns (user, tweet, timestamps, mask; about 150 bytes a row, no
   tokens) of all parts are shuffled by user into ``ceil(rows / text.partition_rows)`` partitions;
   in each, :func:`microparade.stages.text.windows.select_windows` picks every row's window (numpy, no loop
   over rows) and emits one *reference* ``(target part, target row, slot) → (engagement part,
   engagement row)`` per valid slot; rows carry their position in their part, so steps 3 and 4 index
   their part directly (and check the ``row_id`` there) instead of searching for it.
3. **gather** — references are range-partitioned by the engagement's part (one partition per part
   via ``set_index`` with explicit divisions); each partition reads that part's cleaned tokens and
   attaches the item tokens (with the engagement-type prefix when ``history.prefix``).
4. **assemble** — items are range-partitioned by the target's part; each partition reads its
   part's candidate tokens, places items by ``(row_id, slot)`` and writes the output file.

Memory bound per task: steps 1 and 4 hold one ingest part (plus its ``history.size`` items per
row); step 3 holds the references into one part; step 2 holds one user partition of key columns:
about ``text.partition_rows`` rows plus the rows of the heaviest user hashed there (a user's rows
cannot be split across partitions). Step 2 costs ~110 B a row of keys plus, at H = 10, ~0.6 KB a
row of window arrays and output references (measured: a 1-million-row partition of a single
user peaks 0.7 GB above its keys), so a 4 GiB worker takes a user with ~5 million rows. Token
lists never travel with the user shuffle: a power-law user costs key columns, not text.

Token lists cross the step 3→4 shuffle as ``binary`` (little-endian bytes of the narrowest integer
type that holds the encoder's ids, :func:`~microparade.stages.text.clean.id_dtype`: uint16 for
MiniLM's 30,522 ids, which halves the bytes of the largest shuffle) because the P2P shuffle of
pandas 3 cannot rebuild ``list<int32>`` Arrow columns; with a cuDF backend list columns
shuffle natively and this detour would go. Hot paths are numpy on arrays taken from the partition
frame (cupy offers the same calls).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ...compute.progress import gather_in_order
from ...config import SPLITS
from ...recsys_format import TARGET_TIMESTAMP, TARGETS
from ...storage import filesystem, read_parquet, retry, write_parquet, write_url
from .clean import (
    ENGAGEMENT_BITS,
    TOKEN_LIST,
    binary_to_ragged,
    clean_token_lists,
    cleaning_method,
    concat_ragged,
    encoder_tokenizer_spec,
    id_dtype,
    list_parts,
    make_list_array,
    prefix_table,
    ragged_to_binary,
    source_tokenizer_spec,
    special_tokens,
    take_ragged,
    truncate_ragged,
)
from .windows import select_windows

if TYPE_CHECKING:
    from ...engine.context import StageContext

#: Rows per Parquet row group of the output (each row holds H token lists).
ROW_GROUP_ROWS = 16_384
#: Hour value of padding slots.
NO_HOUR = 24

OUTPUT_SCHEMA = pa.schema(
    [
        ("row_id", pa.int64()),
        ("tokens", pa.list_(pa.int32())),
        ("hour", pa.int8()),
        ("hist_tokens", pa.list_(pa.list_(pa.int32()))),
        ("hist_engagement", pa.list_(pa.int8())),
        ("hist_hour", pa.list_(pa.int8())),
        ("hist_mask", pa.list_(pa.bool_())),
        ("hist_len", pa.int8()),
    ]
)

_INGEST_COLUMNS = ["row_id", "b_user_id", "tweet_id", "tweet_timestamp", "text_tokens"]
_KEY_META = pd.DataFrame(
    {
        "fidx": pd.Series(dtype="int32"),
        "pos": pd.Series(dtype="int32"),
        "split": pd.Series(dtype="int8"),
        "row_id": pd.Series(dtype="int64"),
        "user": pd.Series(dtype="str"),
        "tweet": pd.Series(dtype="str"),
        "time": pd.Series(dtype="int64"),
        "eng_time": pd.Series(dtype="int64"),
        "eng_mask": pd.Series(dtype="int8"),
    }
)
_REF_META = pd.DataFrame(
    {
        "t_fidx": pd.Series(dtype="int32"),
        "t_row_id": pd.Series(dtype="int64"),
        "t_pos": pd.Series(dtype="int32"),
        "slot": pd.Series(dtype="int8"),
        "e_fidx": pd.Series(dtype="int32"),
        "e_row_id": pd.Series(dtype="int64"),
        "e_pos": pd.Series(dtype="int32"),
    }
)
_ITEM_META = pd.DataFrame(
    {
        "t_fidx": pd.Series(dtype="int32"),
        "t_row_id": pd.Series(dtype="int64"),
        "t_pos": pd.Series(dtype="int32"),
        "slot": pd.Series(dtype="int8"),
        "e_mask": pd.Series(dtype="int8"),
        "e_hour": pd.Series(dtype="int8"),
        "item": pd.Series(dtype=pd.ArrowDtype(pa.binary())),
    }
)


@dataclass(frozen=True)
class Part:
    """One ingest part and where its scratch and output files go."""

    fidx: int  # index over all parts of all splits, in (split, path) order
    split: str
    rel: str  # "{split}/part-NNNNN.parquet": the same name in ingest and text
    in_url: str
    work_url: str  # scratch prefix: the keys and the tokens files are next to it
    out_url: str
    is_source: bool

    @property
    def keys_url(self) -> str:
        """Scratch file of the key columns (user, tweet, timestamps, engagement)."""
        return f"{self.work_url}-keys.arrow"

    @property
    def tokens_url(self) -> str:
        """Scratch file of the cleaned candidate tokens."""
        return f"{self.work_url}-tokens.arrow"


@dataclass(frozen=True)
class Params:
    """Everything the worker-side functions need (small, pickled with each task)."""

    source: str
    encoder: str
    method: str
    max_content: int
    size: int
    window: str
    prefix: bool
    item_dtype: str  # how item token ids travel through the gather → assemble shuffle (id_dtype)
    storage_options: dict


# --------------------------------------------------------------------------------------------
# I/O helpers
# --------------------------------------------------------------------------------------------
def _write_table(table: pa.Table, url: str, storage_options: dict[str, Any]) -> None:
    """Write an output file (zstd, :data:`ROW_GROUP_ROWS` rows per row group)."""
    write_parquet(table, url, storage_options, compression="zstd", row_group_size=ROW_GROUP_ROWS)


def _write_scratch(table: pa.Table, url: str, storage_options: dict[str, Any]) -> None:
    """Write a scratch file: Arrow IPC, uncompressed (read back whole, never published)."""

    def encode(sink: Any) -> None:
        with pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)

    write_url(url, encode, storage_options)


def _read_scratch(url: str, storage_options: dict[str, Any]) -> pa.Table:
    """A scratch file written by :func:`_write_scratch`."""
    fs, path = filesystem(url, storage_options)

    def attempt() -> pa.Table:
        with fs.open(path, "rb") as f:
            return pa.ipc.open_file(f).read_all()

    return retry(attempt, what=f"read {url}")


def _int_array(table: pa.Table, col: str, dtype=np.int64) -> np.ndarray:
    return np.asarray(table.column(col).to_numpy(), dtype=dtype)


# --------------------------------------------------------------------------------------------
# 1. clean
# --------------------------------------------------------------------------------------------
def engagement_columns(table: pa.Table) -> tuple[np.ndarray, pa.Array]:
    """Engagement bit mask (like 1, retweet 2, reply 4, quote 8) and time (earliest label, or null)."""
    mask = np.zeros(table.num_rows, dtype=np.int8)
    stamps = []
    for target in TARGETS:
        col = table.column(TARGET_TIMESTAMP[target])
        mask |= np.where(pc.is_valid(col).to_numpy(zero_copy_only=False), ENGAGEMENT_BITS[target], 0).astype(np.int8)
        stamps.append(col)
    eng_time = pc.min_element_wise(*stamps, skip_nulls=True).combine_chunks()
    return mask, eng_time.cast(pa.int64())


def clean_part(part: Part, params: Params) -> dict:
    """Step 1 for one ingest part: cleaned tokens + engagement columns → a scratch file."""
    label_cols = [TARGET_TIMESTAMP[t] for t in TARGETS]
    table = read_parquet(part.in_url, params.storage_options, columns=_INGEST_COLUMNS + label_cols)
    row_id = _int_array(table, "row_id")
    if len(row_id) > 1 and not np.all(np.diff(row_id) > 0):
        raise ValueError(f"{part.in_url}: row_id is not strictly increasing (ingest contract, data-format §4)")
    if part.is_source:
        mask, eng_time = engagement_columns(table)
    else:
        mask, eng_time = np.zeros(table.num_rows, np.int8), pa.nulls(table.num_rows, pa.int64())
    values, offsets = clean_token_lists(
        table.column("text_tokens"), params.source, params.encoder, params.max_content, params.method
    )
    keys = pa.table(
        {
            "row_id": table.column("row_id").cast(pa.int64()),
            "b_user_id": table.column("b_user_id").cast(pa.string()),
            "tweet_id": table.column("tweet_id").cast(pa.string()),
            "tweet_timestamp": table.column("tweet_timestamp").cast(pa.int64()),
            "eng_time": eng_time,
            "eng_mask": pa.array(mask, pa.int8()),
        }
    )
    _write_scratch(keys, part.keys_url, params.storage_options)
    _write_scratch(pa.table({"tokens": make_list_array(values, offsets)}), part.tokens_url, params.storage_options)
    return {"fidx": part.fidx, "rows": table.num_rows, "engagements": int((mask > 0).sum())}


# --------------------------------------------------------------------------------------------
# 2. windows
# --------------------------------------------------------------------------------------------
def read_keys(part: Part, storage_options: dict) -> pd.DataFrame:
    """Key columns of one scratch part (no tokens): what the user shuffle carries."""
    t = _read_scratch(part.keys_url, storage_options)
    n = t.num_rows
    return pd.DataFrame(
        {
            "fidx": np.full(n, part.fidx, dtype=np.int32),
            "pos": np.arange(n, dtype=np.int32),
            "split": np.full(n, SPLITS.index(part.split), dtype=np.int8),
            "row_id": _int_array(t, "row_id"),
            "user": pd.Series(t.column("b_user_id").to_pandas(), dtype="str"),
            "tweet": pd.Series(t.column("tweet_id").to_pandas(), dtype="str"),
            "time": _int_array(t, "tweet_timestamp"),
            "eng_time": np.asarray(pc.fill_null(t.column("eng_time"), 0).to_numpy(), dtype=np.int64),
            "eng_mask": _int_array(t, "eng_mask", np.int8),
        }
    )


def window_refs(df: pd.DataFrame, size: int, window: str) -> pd.DataFrame:
    """Step 2 for one user partition: one reference row per valid history slot."""
    eng = df[df["eng_mask"].to_numpy() > 0]
    e = eng[["user", "eng_time", "tweet", "split", "row_id"]].rename(columns={"eng_time": "time"})
    t = df[["user", "time", "tweet", "split", "row_id"]]
    win = select_windows(e, t, size, window)
    n_valid = (win >= 0).sum(axis=1)
    t_idx = np.repeat(np.arange(len(df), dtype=np.int32), n_valid)
    slot = (np.arange(len(t_idx)) - np.repeat(np.cumsum(n_valid) - n_valid, n_valid)).astype(np.int8)
    e_idx = win[win >= 0]  # row-major: by target, then slot (valid slots come first)
    del win
    return pd.DataFrame(
        {
            "t_fidx": df["fidx"].to_numpy()[t_idx],
            "t_row_id": df["row_id"].to_numpy()[t_idx],
            "t_pos": df["pos"].to_numpy()[t_idx],
            "slot": slot,
            "e_fidx": eng["fidx"].to_numpy()[e_idx],
            "e_row_id": eng["row_id"].to_numpy()[e_idx],
            "e_pos": eng["pos"].to_numpy()[e_idx],
        }
    )


# --------------------------------------------------------------------------------------------
# 3. gather
# --------------------------------------------------------------------------------------------
def _positions(row_ids: np.ndarray, pos: np.ndarray, wanted: np.ndarray, where: str) -> np.ndarray:
    """``pos`` (row positions carried with the references) as int64, checked against ``wanted`` row ids."""
    pos = pos.astype(np.int64)
    ok = (pos >= 0) & (pos < len(row_ids))
    ok[ok] = row_ids[pos[ok]] == wanted[ok]
    if not ok.all():
        raise RuntimeError(f"{where}: {int((~ok).sum())} referenced row_id(s) missing, e.g. {wanted[~ok][:3].tolist()}")
    return pos


def gather_items(refs: pd.DataFrame, parts: list[Part], params: Params, partition_info=None) -> pd.DataFrame:
    """Step 3 for the references into one engagement part: attach the item tokens."""
    if len(refs) == 0:
        return _ITEM_META.copy()
    part = parts[partition_info["number"]]
    fidx = refs.index.to_numpy()
    if not np.all(fidx == part.fidx):
        raise RuntimeError(f"gather partition {part.fidx} received references into parts {np.unique(fidx).tolist()}")
    w = _read_scratch(part.keys_url, params.storage_options)
    pos = _positions(_int_array(w, "row_id"), refs["e_pos"].to_numpy(), refs["e_row_id"].to_numpy(), part.keys_url)
    tokens = list_parts(_read_scratch(part.tokens_url, params.storage_options).column("tokens"))
    # Binary values (the ids' bytes) take as one copy each; list arrays take item by item.
    items = ragged_to_binary(*tokens, params.item_dtype).take(pa.array(pos))
    mask = _int_array(w, "eng_mask", np.int8)[pos]
    hour = (np.asarray(pc.fill_null(w.column("eng_time"), 0).to_numpy(), np.int64)[pos] // 3600 % 24).astype(np.int8)
    if params.prefix:
        table = prefix_table(params.encoder)
        p_off = np.concatenate([[0], np.cumsum([len(p) for p in table])])
        p_vals = np.array([i for p in table for i in p], dtype=np.int32)
        pv, po = take_ragged(p_vals, p_off, mask.astype(np.int64))
        values, offsets = concat_ragged(pv, po, *binary_to_ragged(items, params.item_dtype))
        items = ragged_to_binary(*truncate_ragged(values, offsets, params.max_content), params.item_dtype)
    return pd.DataFrame(
        {
            "t_fidx": refs["t_fidx"].to_numpy(),
            "t_row_id": refs["t_row_id"].to_numpy(),
            "t_pos": refs["t_pos"].to_numpy(),
            "slot": refs["slot"].to_numpy(),
            "e_mask": mask,
            "e_hour": hour,
            "item": pd.Series(pd.arrays.ArrowExtensionArray(items)),
        }
    )


# --------------------------------------------------------------------------------------------
# 4. assemble
# --------------------------------------------------------------------------------------------
def _hist_columns(size: int) -> list[str]:
    """Columns of the per-part summary: rows with 0..size valid history slots."""
    return [f"h{k}" for k in range(size + 1)]


def _fixed_lists(values: pa.Array, n: int, size: int) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(np.arange(0, n * size + 1, size, dtype=np.int32)), values)


def assemble_part(items: pd.DataFrame, parts: list[Part], params: Params, partition_info=None) -> pd.DataFrame:
    """Step 4 for one target part: place the items by (row_id, slot), write the output file."""
    part = parts[partition_info["number"]]
    h = params.size
    if len(items) and not np.all(items.index.to_numpy() == part.fidx):
        raise RuntimeError(f"assemble partition {part.fidx} received items of other parts")
    w = _read_scratch(part.keys_url, params.storage_options)
    n = w.num_rows
    row_ids = _int_array(w, "row_id")

    slot = items["slot"].to_numpy().astype(np.int64)
    tix = _positions(row_ids, items["t_pos"].to_numpy(), items["t_row_id"].to_numpy(), part.keys_url)
    order = np.lexsort((slot, tix))
    tix, slot = tix[order], slot[order]
    hist_len = np.bincount(tix, minlength=n)
    if not np.all(slot < hist_len[tix]):
        raise RuntimeError(f"{part.rel}: history slots are not contiguous from 0")
    item_pos = tix * h + slot
    if len(item_pos) > 1 and not np.all(np.diff(item_pos) > 0):
        raise RuntimeError(f"{part.rel}: duplicate history slots")
    i_vals, i_off = binary_to_ragged(pc.take(pa.array(items["item"].array), order), params.item_dtype)

    lengths = np.zeros(n * h, dtype=np.int64)
    lengths[item_pos] = np.diff(i_off)
    inner = make_list_array(i_vals, np.concatenate([[0], np.cumsum(lengths)]))
    eng = np.zeros(n * h, dtype=np.int8)
    eng[item_pos] = items["e_mask"].to_numpy()[order]
    hours = np.full(n * h, NO_HOUR, dtype=np.int8)
    hours[item_pos] = items["e_hour"].to_numpy()[order]
    valid = (np.arange(h)[None, :] < hist_len[:, None]).ravel()

    ts = _int_array(w, "tweet_timestamp")
    table = pa.Table.from_arrays(
        [
            pa.array(row_ids, pa.int64()),
            _read_scratch(part.tokens_url, params.storage_options).column("tokens").combine_chunks().cast(TOKEN_LIST),
            pa.array((ts // 3600 % 24).astype(np.int8), pa.int8()),
            _fixed_lists(inner, n, h),
            _fixed_lists(pa.array(eng, pa.int8()), n, h),
            _fixed_lists(pa.array(hours, pa.int8()), n, h),
            _fixed_lists(pa.array(valid, pa.bool_()), n, h),
            pa.array(hist_len.astype(np.int8), pa.int8()),
        ],
        schema=OUTPUT_SCHEMA,
    )
    _write_table(table, part.out_url, params.storage_options)
    summary = {"fidx": [part.fidx], "rows": [n]}
    summary.update({col: [int(c)] for col, c in zip(_hist_columns(h), np.bincount(hist_len, minlength=h + 1))})
    return pd.DataFrame(summary)


# --------------------------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------------------------
def list_parts_of(ctx: StageContext) -> list[Part]:
    """The ingest parts (``{split}/part-*.parquet``, quarantine excluded) in (split, path) order."""
    ingest = ctx.input("ingest")
    sources = set(ctx.cfg.history.sources)
    parts: list[Part] = []
    for split in SPLITS:
        rels = sorted(
            f["path"] for f in ingest.files if f["path"].startswith(f"{split}/part-") and f["path"].endswith(".parquet")
        )
        for rel in rels:
            parts.append(
                Part(
                    fidx=len(parts),
                    split=split,
                    rel=rel,
                    in_url=ingest.url(rel),
                    work_url=ctx.work_url(f"clean/{rel.removesuffix('.parquet')}"),
                    out_url=ctx.out_url(rel),
                    is_source=split in sources,
                )
            )
    if not parts:
        raise RuntimeError("the ingest stage published no {split}/part-*.parquet files")
    return parts


def _params(ctx: StageContext) -> Params:
    """The worker-side settings: tokenizers, cleaning method, history window."""
    cfg = ctx.cfg
    source = source_tokenizer_spec(cfg.data.tokenizer)
    encoder = encoder_tokenizer_spec(cfg.model.encoder)
    return Params(
        source=source,
        encoder=encoder,
        method=cleaning_method(source, encoder),
        max_content=cfg.text.max_length - 2,
        size=cfg.history.size,
        window=cfg.history.window,
        prefix=cfg.history.prefix,
        item_dtype=id_dtype(encoder),
        storage_options=dict(ctx.store.storage_options),
    )


def _windows_and_assemble(ctx: StageContext, parts: list[Part], params: Params, n_user_parts: int) -> pd.DataFrame:
    """Steps 2-4 (windows, gather, assemble; partition i of steps 3 and 4 is part i): the output
    files are written; returns their summary (rows, history-length counts), indexed by ``fidx``."""
    import dask.dataframe as dd

    keys = dd.from_map(
        read_keys,
        parts,
        storage_options=params.storage_options,
        meta=_KEY_META,
        label="text-keys",
        enforce_metadata=False,
    )
    refs = keys.shuffle(on="user", npartitions=n_user_parts).map_partitions(
        window_refs, params.size, params.window, meta=_REF_META
    )
    divisions = list(range(len(parts))) + [len(parts) - 1]
    items = refs.set_index("e_fidx", divisions=divisions).map_partitions(gather_items, parts, params, meta=_ITEM_META)
    stats_meta = pd.DataFrame({c: pd.Series(dtype="int64") for c in ["fidx", "rows", *_hist_columns(params.size)]})
    stats = items.set_index("t_fidx", divisions=divisions).map_partitions(assemble_part, parts, params, meta=stats_meta)
    frames = gather_in_order(ctx.client().compute(stats.to_delayed()), "windows + assemble", ctx.log)
    summary = pd.concat(frames).set_index("fidx").sort_index()
    if summary.index.tolist() != [p.fidx for p in parts]:
        raise RuntimeError(f"assembled {len(summary)} of {len(parts)} parts")
    return summary


def _record_files(
    ctx: StageContext, parts: list[Part], cleaned: list[dict[str, Any]], summary: pd.DataFrame, size: int
) -> dict[str, Any]:
    """Check every output's row count against ingest, record it in ``ctx.file_meta``; return the
    per-split manifest statistics (history-length histogram, rows, engagements)."""
    hist: dict[str, np.ndarray] = {}
    rows_by_split: dict[str, int] = {}
    engagements: dict[str, int] = {}
    for part, r in zip(parts, cleaned):
        rows = int(summary.at[part.fidx, "rows"])
        if rows != r["rows"]:
            raise RuntimeError(f"{part.rel}: wrote {rows} rows but ingest has {r['rows']}")
        ctx.file_meta[part.rel] = {"rows": rows, "split": part.split}
        counts = summary.loc[part.fidx, _hist_columns(size)].to_numpy(dtype=np.int64)
        hist[part.split] = hist.get(part.split, 0) + counts
        rows_by_split[part.split] = rows_by_split.get(part.split, 0) + rows
        engagements[part.split] = engagements.get(part.split, 0) + r["engagements"]
    return {
        "hist_len_hist": {split: counts.tolist() for split, counts in hist.items()},
        "rows": rows_by_split,
        "engagements": engagements,
    }


def run(ctx: StageContext) -> None:
    cfg = ctx.cfg
    started = time.time()
    client = ctx.client()
    parts = list_parts_of(ctx)
    params = _params(ctx)
    ctx.log(
        "%d part(s), source tokenizer %s, encoder tokenizer %s, cleaning by %s",
        len(parts),
        params.source,
        params.encoder,
        params.method,
    )

    # 1. clean (one task per part)
    cleaned = gather_in_order(client.map(clean_part, parts, params=params, pure=False), "clean", ctx.log)
    total = sum(r["rows"] for r in cleaned)
    n_user_parts = max(1, math.ceil(total / cfg.text.partition_rows))
    ctx.log(
        "clean done: %d rows, %d engagements; windows over %d user partition(s)",
        total,
        sum(r["engagements"] for r in cleaned),
        n_user_parts,
    )
    summary = _windows_and_assemble(ctx, parts, params, n_user_parts)

    # 5. manifest
    per_split = _record_files(ctx, parts, cleaned, summary, params.size)
    elapsed = time.time() - started
    ctx.extra.update(
        history=cfg.section("history"),
        max_length=cfg.text.max_length,
        encoder_tokenizer=params.encoder,
        source_tokenizer=params.source,
        cleaning=params.method,
        special_tokens=special_tokens(params.encoder),
        **per_split,
        user_partitions=n_user_parts,
    )
    ctx.log("done: %d rows in %.1fs (%.0f rows/s)", total, elapsed, total / max(elapsed, 1e-9))
