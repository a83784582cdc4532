"""ingest stage: raw RecSys 2021 files → validated, typed Parquet per split (+ quarantine).

Plan (driver): resolve each split's raw files (the generate stage's outputs, or ``data.raw.*``
URLs/globs/directories), sort them — a file's index in that list is part of ``row_id`` — and cut
them into blocks: an uncompressed file into ``ingest.blocksize`` byte ranges (a line belongs to the
block in which it *starts*), a compressed file into one block. Block ``k`` of the split (in
(file index, byte range) order) becomes ``{split}/part-{k:05d}.parquet``, so names and contents
depend on the data and ``ingest.blocksize`` only, never on the number of Dask workers.

Work (one Dask task per block, :func:`ingest_block`): stream the block's lines in pieces of at most
``blocksize`` bytes (so memory stays bounded even for a large compressed file), parse and validate
each piece with :func:`microparade.parsing.parse_block`, write valid rows straight to the output
part (zstd, row groups of ``ingest.row_group_size``, hashed while written) and the block's bad lines
to a scratch Parquet under ``_work``; return small statistics. A transient I/O error restarts the
block's part from its first line (:func:`microparade.storage.write_url`).

Finish (driver): prefix-sum the blocks' line counts into 1-based line numbers per file, merge the
scratch quarantine parts into ``quarantine/{split}.parquet``, record per-split counts in the
manifest and fail when a split's bad fraction exceeds ``ingest.max_bad_fraction``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from dask.utils import format_bytes, parse_bytes
from fsspec.utils import infer_compression

from ...compute.progress import gather_in_order
from ...config import SPLITS
from ...storage import filesystem, glob, read_parquet, url_size, write_parquet, write_url
from .parsing import QUARANTINE_BLOCK_SCHEMA, SCHEMA, field_counts, parse_block

if TYPE_CHECKING:
    from ...engine.context import StageContext

#: Schema of ``quarantine/{split}.parquet`` (docs/data-format.md §4).
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("file", pa.string()),
        pa.field("line", pa.int64()),
        pa.field("reason", pa.string()),
        pa.field("field", pa.string()),
        pa.field("raw", pa.binary()),
    ]
)

_SCAN = 1 << 16  # read size while looking for a line end


class IngestError(RuntimeError):
    """Bad ingest inputs: no files, a pattern matching nothing, too many malformed lines."""


@dataclass(frozen=True)
class BlockTask:
    """Everything a worker needs to ingest one block (small and picklable)."""

    split: str
    part: int
    file_index: int
    url: str
    #: Lines starting in ``[start, stop)`` (byte offsets of the decompressed stream) belong to the
    #: block; ``stop`` is None for a whole (compressed) file.
    start: int
    stop: int | None
    compression: str | None
    chunk_bytes: int
    counts: tuple[int, ...]
    row_group_size: int
    out_url: str
    quarantine_url: str
    storage_options: dict[str, Any]

    def describe(self) -> str:
        where = "" if self.stop is None else f" bytes {self.start}-{self.stop}"
        return f"{self.split} part {self.part:05d} ({self.url}{where})"


# ----------------------------------------------------------------------------------------------
# worker side
# ----------------------------------------------------------------------------------------------
def _first_line_start(f, start: int) -> int | None:
    """Offset of the first line starting at or after ``start`` (None: none before EOF)."""
    if start == 0:
        return 0
    f.seek(start - 1)
    pos = start - 1
    while True:
        piece = f.read(_SCAN)
        if not piece:
            return None
        i = piece.find(b"\n")
        if i >= 0:
            return pos + i + 1
        pos += len(piece)


def iter_line_pieces(f, pos: int, stop: int | None, chunk_bytes: int) -> Iterator[tuple[int, bytes]]:
    """Yield ``(offset, data)``: consecutive runs of whole lines read from ``f`` (positioned at the
    line start ``pos``), each about ``chunk_bytes`` long, covering every line that starts before
    ``stop`` (None: until EOF). The last line of a file may lack its ``\\n``.
    """
    buf = bytearray()  # amortised appends: decompressors may return short reads
    while True:
        limit = chunk_bytes if stop is None else min(chunk_bytes, stop - pos)
        # The piece ends at the first newline at index >= limit - 1: it then holds exactly the
        # lines starting before pos + limit.
        while True:
            nl = buf.find(b"\n", limit - 1) if len(buf) >= limit else -1
            if nl >= 0:
                break
            more = f.read(max(limit - len(buf), _SCAN))
            if not more:
                break
            buf += more
        if nl < 0:  # EOF: no line starts at or after pos + limit
            if buf:
                yield pos, bytes(buf)
            return
        yield pos, bytes(buf[: nl + 1])
        del buf[: nl + 1]
        pos += nl + 1
        if stop is not None and pos >= stop:
            return


@dataclass
class _BlockCounts:
    """What parsing one block found: line counts, bad lines per reason, the bad lines themselves."""

    lines: int = 0
    blank: int = 0
    rows_out: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    bad_tables: list[pa.Table] = field(default_factory=list)


def _parse_into(sink: IO[bytes], task: BlockTask) -> _BlockCounts:
    """Parse the block's lines, writing the valid rows to ``sink`` as one Parquet file."""
    fs, path = filesystem(task.url, task.storage_options)
    counts = _BlockCounts()
    with pq.ParquetWriter(sink, SCHEMA, compression="zstd") as writer:
        with fs.open(path, "rb", compression=task.compression) as f:
            first = _first_line_start(f, task.start)
            if first is None or (task.stop is not None and first >= task.stop):
                return counts
            if task.start:
                f.seek(first)
            for offset, data in iter_line_pieces(f, first, task.stop, task.chunk_bytes):
                parsed = parse_block(data, file_index=task.file_index, offset=offset, counts=task.counts)
                if parsed.table.num_rows:
                    writer.write_table(parsed.table, row_group_size=task.row_group_size)
                if parsed.quarantine.num_rows:
                    q = parsed.quarantine
                    counts.bad_tables.append(q.set_column(0, "line_index", pc.add(q.column(0), counts.lines)))
                    for r, n in parsed.reason_counts().items():
                        counts.reasons[r] = counts.reasons.get(r, 0) + n
                counts.lines += parsed.n_lines
                counts.blank += parsed.n_blank
                counts.rows_out += parsed.table.num_rows
    return counts


def ingest_block(task: BlockTask) -> dict[str, Any]:
    """Ingest one block (a Dask task): parse, write the part and the bad lines, return counts."""
    counts, written = write_url(task.out_url, lambda sink: _parse_into(sink, task), task.storage_options)
    first_bad = None
    if counts.bad_tables:
        bad = pa.concat_tables(counts.bad_tables)
        first_bad = {k: bad.column(k)[0].as_py() for k in ("line_index", "reason", "field")}
        write_parquet(bad, task.quarantine_url, task.storage_options, compression="zstd")
    rows_quarantined = sum(counts.reasons.values())
    rows_in = counts.lines - counts.blank
    if rows_in != counts.rows_out + rows_quarantined:  # pragma: no cover - parse_block invariant
        raise AssertionError(f"{task.describe()}: {rows_in} rows in != {counts.rows_out} out + {rows_quarantined} bad")
    return {
        "lines": counts.lines,
        "blank": counts.blank,
        "rows_in": rows_in,
        "rows_out": counts.rows_out,
        "reasons": counts.reasons,
        "first_bad": first_bad,
        **written.meta(),
    }


# ----------------------------------------------------------------------------------------------
# driver side
# ----------------------------------------------------------------------------------------------
def resolve_inputs(ctx: StageContext) -> dict[str, list[str]]:
    """Sorted source URLs per split (splits without files are left out)."""
    out: dict[str, list[str]] = {}
    if "generate" in ctx.inputs:
        gen = ctx.input("generate")
        for split in SPLITS:
            urls = sorted(gen.url(f["path"]) for f in gen.files if f["path"].startswith(f"{split}/"))
            if urls:
                out[split] = urls
        return out
    so = ctx.store.storage_options
    for split in SPLITS:
        found: set[str] = set()
        for pattern in getattr(ctx.cfg.data.raw, split):
            matches = glob(pattern, so)
            if not matches:
                raise IngestError(f"data.raw.{split}: {pattern!r} matches no file")
            found.update(matches)
        if found:
            out[split] = sorted(found)
    return out


def plan_blocks(ctx: StageContext, inputs: dict[str, list[str]], blocksize: int) -> list[BlockTask]:
    """One task per block, in (split, file index, byte range) order; parts numbered per split."""
    cfg = ctx.cfg.ingest
    so = ctx.store.storage_options
    tasks: list[BlockTask] = []
    for split, urls in inputs.items():
        part = 0
        for file_index, url in enumerate(urls):
            compression = infer_compression(url)
            ranges: list[tuple[int, int | None]] = [(0, None)]
            if compression is None:
                size = url_size(url, so)
                ranges = [(s, min(s + blocksize, size)) for s in range(0, max(size, 1), blocksize)]
            for start, stop in ranges:
                tasks.append(
                    BlockTask(
                        split=split,
                        part=part,
                        file_index=file_index,
                        url=url,
                        start=start,
                        stop=stop,
                        compression=compression,
                        chunk_bytes=blocksize,
                        counts=field_counts(split),
                        row_group_size=cfg.row_group_size,
                        out_url=ctx.out_url(f"{split}/part-{part:05d}.parquet"),
                        quarantine_url=ctx.work_url(f"quarantine/{split}/part-{part:05d}.parquet"),
                        storage_options=so,
                    )
                )
                part += 1
    return tasks


def _execute(ctx: StageContext, tasks: list[BlockTask]) -> list[dict[str, Any]]:
    """Run the block tasks on the run's Dask cluster; results in task order."""
    client = ctx.client()
    run_id = uuid.uuid4().hex[:8]
    futures = client.map(
        ingest_block, tasks, key=[f"ingest-{t.split}-{t.part:05d}-{run_id}" for t in tasks], pure=False
    )

    def failed(i: int, exc: Exception) -> Exception:
        return IngestError(f"ingest of {tasks[i].describe()} failed: {type(exc).__name__}: {exc}")

    return gather_in_order(
        futures, "blocks", ctx.log, amount=lambda r: int(r["rows_in"]), unit="lines", wrap_error=failed
    )


def _merge_quarantine(
    sink: IO[bytes], tasks: list[BlockTask], results: list[dict[str, Any]], row_group_size: int
) -> int:
    """Write the blocks' bad lines to ``sink`` with 1-based line numbers (lines before a block in its
    file = prefix sum of earlier blocks' line counts); return how many."""
    rows = 0
    lines_before = 0
    prev_file = -1
    writer = None
    try:
        for task, res in zip(tasks, results):
            if task.file_index != prev_file:
                prev_file, lines_before = task.file_index, 0
            if res["first_bad"] is not None:
                bad = read_parquet(task.quarantine_url, task.storage_options, schema=QUARANTINE_BLOCK_SCHEMA)
                table = pa.Table.from_arrays(
                    [
                        pa.array([task.url] * bad.num_rows, pa.string()),
                        pc.add(bad.column("line_index"), lines_before + 1),
                        bad.column("reason"),
                        bad.column("field"),
                        bad.column("raw"),
                    ],
                    schema=QUARANTINE_SCHEMA,
                )
                if writer is None:
                    writer = pq.ParquetWriter(sink, QUARANTINE_SCHEMA, compression="zstd")
                writer.write_table(table, row_group_size=row_group_size)
                rows += table.num_rows
            lines_before += res["lines"]
    finally:
        if writer is not None:
            writer.close()
    return rows


def _write_quarantine(ctx: StageContext, split: str, tasks: list[BlockTask], results: list[dict[str, Any]]) -> int:
    """Merge the split's per-block bad lines into ``quarantine/{split}.parquet``; return how many."""
    rel = f"quarantine/{split}.parquet"
    rows, written = write_url(
        ctx.out_url(rel),
        lambda sink: _merge_quarantine(sink, tasks, results, ctx.cfg.ingest.row_group_size),
        ctx.store.storage_options,
    )
    ctx.file_meta[rel] = {"rows": rows, **written.meta(), "split": split}
    return rows


def _first_bad(tasks: list[BlockTask], results: list[dict[str, Any]]) -> str:
    lines_before, prev_file = 0, -1
    for task, res in zip(tasks, results):
        if task.file_index != prev_file:
            prev_file, lines_before = task.file_index, 0
        fb = res["first_bad"]
        if fb is not None:
            field = f" in {fb['field']}" if fb["field"] else ""
            return f"{task.url} line {lines_before + fb['line_index'] + 1}: {fb['reason']}{field}"
        lines_before += res["lines"]
    return "-"


def _blocksize(text: str) -> int:
    try:
        blocksize = int(parse_bytes(text))
    except (ValueError, TypeError) as exc:
        raise IngestError(f"ingest.blocksize {text!r} is not a size: {exc}") from None
    if blocksize < 1024:
        raise IngestError(f"ingest.blocksize {text!r} is below 1 KiB")
    return blocksize


def _split_summary(
    ctx: StageContext, split: str, urls: list[str], tasks: list[BlockTask], results: list[dict[str, Any]]
) -> tuple[dict[str, Any], str | None]:
    """One split's file metadata, counts and quarantine; returns its summary and, when too many
    of its lines are malformed, the complaint."""
    for t, r in zip(tasks, results):
        ctx.file_meta[f"{split}/part-{t.part:05d}.parquet"] = {
            "rows": r["rows_out"],
            "bytes": r["bytes"],
            "sha256": r["sha256"],
            "split": split,
            "source": t.url,
        }
    rows_in = sum(r["rows_in"] for r in results)
    rows_out = sum(r["rows_out"] for r in results)
    by_reason: dict[str, int] = {}
    for r in results:
        for k, n in r["reasons"].items():
            by_reason[k] = by_reason.get(k, 0) + n
    rows_bad = sum(by_reason.values())
    assert rows_in == rows_out + rows_bad, f"{split}: rows_in {rows_in} != {rows_out} out + {rows_bad} quarantined"
    if rows_bad:
        written = _write_quarantine(ctx, split, tasks, results)
        assert written == rows_bad, f"{split}: wrote {written} quarantined lines, counted {rows_bad}"
    summary = {
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_quarantined": rows_bad,
        "quarantined_by_reason": dict(sorted(by_reason.items())),
        "blank_lines": sum(r["blank"] for r in results),
        "parts": len(tasks),
        "files": urls,
    }
    shown = (f"{rows_in:,}", f"{rows_out:,}", f"{rows_bad:,}", dict(sorted(by_reason.items())) or "")
    ctx.log("%s: %s rows in, %s out, %s quarantined %s", split, *shown)
    fraction = rows_bad / rows_in if rows_in else 0.0
    limit = ctx.cfg.ingest.max_bad_fraction
    if fraction <= limit:
        return summary, None
    return summary, (
        f"split {split}: {rows_bad:,} of {rows_in:,} lines malformed ({fraction:.2%}) > "
        f"ingest.max_bad_fraction={limit}; first: {_first_bad(tasks, results)}; "
        f"all bad lines: {ctx.out_url(f'quarantine/{split}.parquet')}"
    )


def run(ctx: StageContext) -> None:
    blocksize = _blocksize(ctx.cfg.ingest.blocksize)
    inputs = resolve_inputs(ctx)
    if not inputs:
        raise IngestError("no raw input files: set data.raw.{train,valid,test} or data.generate")
    ctx.store.rm(f"{ctx.work_rel}/quarantine")  # bad lines of an earlier, failed attempt
    tasks = plan_blocks(ctx, inputs, blocksize)
    ctx.log(
        "%s in %d file(s) -> %d block(s) of <= %s",
        ", ".join(f"{s}: {len(u)}" for s, u in inputs.items()),
        sum(len(u) for u in inputs.values()),
        len(tasks),
        format_bytes(blocksize),
    )
    ctx.client()  # start the cluster before timing
    started = time.monotonic()
    results = _execute(ctx, tasks)
    elapsed = time.monotonic() - started

    splits: dict[str, Any] = {}
    too_bad: list[str] = []
    for split, urls in inputs.items():
        idx = [i for i, t in enumerate(tasks) if t.split == split]
        splits[split], complaint = _split_summary(ctx, split, urls, [tasks[i] for i in idx], [results[i] for i in idx])
        if complaint:
            too_bad.append(complaint)
    total = sum(s["rows_in"] for s in splits.values())
    ctx.log("%s lines in %.1f s (%s lines/s)", f"{total:,}", elapsed, f"{total / max(elapsed, 1e-9):,.0f}")
    if too_bad:
        raise IngestError("too many malformed lines:\n" + "\n".join(too_bad))
    ctx.extra["splits"] = splits
    ctx.total_rows = sum(s["rows_out"] for s in splits.values())  # quarantine rows are not data rows
    ctx.extra["blocksize"] = blocksize
    ctx.extra["field_counts"] = {s: list(field_counts(s)) for s in splits}
