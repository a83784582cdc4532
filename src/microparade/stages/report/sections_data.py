"""The Data section: rows, label rates and quarantine per split, history lengths, chunk sizes, all
from the generate, ingest, text and chunks manifests."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...engine.manifest import Manifest
from ...recsys_format import TARGETS
from .common import NOT_RUN, files_by_split, ordered
from .render import Block, Figure, Paragraph, Section, Table, grouped_bars, histogram

_DATA_STAGES = ("generate", "ingest", "text", "chunks")


def _extra(m: Manifest | None, key: str) -> dict[str, Any]:
    """A dict entry of a manifest's ``extra``; empty when the stage did not run or has none."""
    return (m.extra.get(key) or {}) if m is not None else {}


def data_sections(manifests: dict[str, Manifest | None]) -> list[Section]:
    """The Data section, then (when any split is known) the history and chunk subsections."""
    gen, ing, txt, chk = (manifests.get(s) for s in _DATA_STAGES)
    gen_rows, ing_splits = _extra(gen, "rows"), _extra(ing, "splits")
    chk_splits, hist = _extra(chk, "splits"), _extra(txt, "hist_len_hist")
    sec = Section("data", "Data")
    splits = ordered(set(gen_rows) | set(ing_splits) | set(chk_splits) | set(hist))
    not_run = [s for s in _DATA_STAGES if manifests.get(s) is None]
    if not_run:
        sec.add(Paragraph(f"{', '.join(not_run)}: {NOT_RUN}; their columns show '-'.", kind="note"))
    if not splits:
        sec.add(Paragraph("No data statistics: none of generate, ingest, text, chunks published any.", kind="note"))
        return [sec]
    rows = []
    for s in splits:
        ig, ck = ing_splits.get(s, {}), chk_splits.get(s, {})
        rows.append(
            [
                s,
                gen_rows.get(s),
                ig.get("rows_in"),
                ig.get("rows_out"),
                ig.get("rows_quarantined"),
                ck.get("rows"),
                ck.get("chunks"),
            ]
        )
    sec.add(
        Table(
            ["split", "generated", "ingest in", "ingest out", "quarantined", "chunk rows", "chunks"],
            rows,
            caption="rows per split",
        )
    )
    sec.add(*_label_rate_blocks(splits, chk_splits, _extra(gen, "label_rates")))
    if ing is not None:
        sec.add(_quarantine_block(splits, ing_splits))
    return [sec, _history_section(txt, hist), _chunks_section(chk)]


def _label_rate_blocks(splits: list[str], chk_splits: dict[str, Any], gen_rates: dict[str, Any]) -> list[Block]:
    """Positive rates per split: the chunks' where known, else the generator's."""
    rate_rows = []
    for s in splits:
        rates, source = (chk_splits.get(s) or {}).get("label_rates"), "chunks"
        if not rates:
            rates, source = gen_rates.get(s), "generate"
        if rates:
            rate_rows.append([s, source] + [rates.get(t) for t in TARGETS])
    if not rate_rows:
        return []
    return [Table(["split", "source"] + list(TARGETS), rate_rows, caption="label (positive) rates per split")]


def _quarantine_block(splits: list[str], ing_splits: dict[str, Any]) -> Block:
    """The lines ingest quarantined, by split and reason."""
    q_rows = [
        [s, reason, n]
        for s in splits
        for reason, n in sorted((ing_splits.get(s, {}).get("quarantined_by_reason") or {}).items())
    ]
    if not q_rows:
        return Paragraph("Ingest quarantined no lines.")
    return Table(["split", "reason", "rows"], q_rows, caption="ingest quarantine (malformed lines) by reason")


def _history_section(txt: Manifest | None, hist: dict[str, list[int]]) -> Section:
    """Rows by number of valid history slots, per split (the text manifest's ``hist_len_hist``)."""
    hsec = Section("data-history", "History lengths", level=3)
    if txt is None or not hist:
        return hsec.add(
            Paragraph(f"text: {NOT_RUN}." if txt is None else "The text manifest has no hist_len_hist.", kind="note")
        )
    settings = txt.extra.get("history") or {}
    if settings:
        hsec.add(Paragraph("History settings: " + ", ".join(f"{k}={v}" for k, v in sorted(settings.items())) + "."))
    size = max(len(v) for v in hist.values()) - 1
    h_rows, shares = [], {}
    for s in ordered(hist):
        counts = np.zeros(size + 1, dtype=np.int64)
        counts[: len(hist[s])] = hist[s]
        n = int(counts.sum())
        mean = float((counts * np.arange(size + 1)).sum() / n) if n else None
        h_rows.append([s, n, mean, (counts[0] / n) if n else None, *counts.tolist()])
        shares[s] = (counts / n).tolist() if n else [None] * (size + 1)
    slots = [str(k) for k in range(size + 1)]
    chart = grouped_bars(
        slots, shares, title="history length distribution", xlabel="valid history slots", ylabel="share of rows"
    )
    return hsec.add(
        Table(
            ["split", "rows", "mean valid slots", "share empty"] + slots,
            h_rows,
            caption="rows by number of valid history slots (0..H)",
        ),
        Figure("data_history_lengths", chart, caption="Share of rows per number of valid history slots, per split."),
    )


def _chunks_section(chk: Manifest | None) -> Section:
    """Rows and megabytes per chunk, per split, from the chunks manifest's file list."""
    csec = Section("data-chunks", "Chunks", level=3)
    if chk is None:
        return csec.add(Paragraph(f"chunks: {NOT_RUN}.", kind="note"))
    by_split = files_by_split(chk, ".parquet")
    c_rows, sizes = [], {}
    for s in ordered(by_split):
        r = np.array([int(f.get("rows") or 0) for f in by_split[s]])
        mb = np.array([f["bytes"] / 1e6 for f in by_split[s]])
        median = float(np.median(r))
        c_rows.append(
            [
                s,
                len(r),
                int(r.min()),
                int(median) if median.is_integer() else median,
                int(r.max()),
                float(mb.min()),
                float(np.median(mb)),
                float(mb.max()),
                float(mb.sum()),
            ]
        )
        sizes[s] = mb.tolist()
    if not c_rows:
        return csec.add(Paragraph("The chunks manifest lists no Parquet chunks.", kind="note"))
    target = chk.extra.get("target_mb")
    columns = ["split", "chunks", "rows min", "rows median", "rows max", "MB min", "MB median", "MB max", "MB total"]
    chart = histogram(sizes, title="chunk size distribution", xlabel="MB per chunk", ylabel="chunks")
    return csec.add(
        Table(columns, c_rows, caption="chunk sizes" + (f" (target {target} MB)" if target else "")),
        Figure("data_chunk_sizes", chart, caption="Chunk sizes (MB) per split, from the chunks manifest."),
    )
