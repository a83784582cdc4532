"""Vectorised parser and validator for RecSys 2021 raw lines (no Dask needed).

:func:`parse_block` turns a byte block of whole lines into a typed Arrow table (the ingest schema of
docs/data-format.md §4) plus a table of quarantined lines with a reason code. Everything that
touches every byte runs in numpy or Arrow compute kernels over the whole block:

1. numpy finds line starts (``\\n``), field separators (``\\x01``), ``\\r\\n`` endings and non-ASCII
   bytes for the whole block at once (:func:`_split_lines`, :func:`_ascii_copy`);
2. the block is turned into *one* Arrow string in which line terminators are also ``\\x01``, split
   once with ``split_pattern``; field ``j`` of line ``i`` is then element ``field_start[i] + j`` of
   that flat array, so each column is a single ``take`` (:func:`_flat_fields`);
3. each column is validated with one anchored RE2 regex (``match_substring_regex``); the first
   failing field in file order names the reason of a line (:func:`_check_fields`);
4. valid rows are converted with Arrow casts, lists via ``split_pattern`` on tabs (:func:`_typed_table`).

Every valid field value is ASCII (digits, upper-case hex, fixed words), so a line with a byte
>= 0x80 can never be valid. Before step 2 such bytes are replaced by ``?`` (which no field accepts),
which makes the block pure ASCII — a valid Arrow string without a UTF-8 validation pass — and keeps
the reason of a line that is valid UTF-8 but not ASCII at its first offending field. Only those rare
lines are decoded in Python, to tell ``bad_utf8`` apart.

Line rules: lines end with ``\\n`` (a ``\\r`` just before it, or at the end of the data, is
dropped); the empty string after a final ``\\n`` is not a line; empty lines are counted as lines
(for line numbers) but are not rows (neither output nor quarantined).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...recsys_format import (
    BOOL_COLUMNS,
    COLUMNS,
    HEX_COLUMNS,
    INT_COLUMNS,
    LIST_HEX_COLUMNS,
    LIST_MEDIA_COLUMNS,
    LIST_TOKEN_COLUMNS,
    MEDIA_TYPES,
    N_FIELDS_LABELED,
    N_FIELDS_TEST,
    OPTIONAL_INT_COLUMNS,
    TWEET_TYPES,
)

#: ``row_id = (file_index << ROW_ID_SHIFT) | byte_offset``: offsets below 1 TiB, < 2**23 files.
ROW_ID_SHIFT = 40
MAX_FILE_INDEX = (1 << (63 - ROW_ID_SHIFT)) - 1
#: Bytes of a quarantined line kept in the quarantine file.
RAW_PREFIX_BYTES = 1000

# Quarantine reason codes (documented in docs/data-format.md §4), in check order.
BAD_UTF8 = "bad_utf8"  # the line is not valid UTF-8
FIELD_COUNT = "field_count"  # wrong number of \x01-separated fields for the split
BAD_TOKEN = "bad_token"  # text_tokens: not a tab list of integers 0..999999999
BAD_HEX_ID = "bad_hex_id"  # an id (or an item of hashtags/links/domains) is not 32 upper-case hex
BAD_MEDIA = "bad_media"  # present_media item not Photo/Video/GIF
BAD_TWEET_TYPE = "bad_tweet_type"  # not TopLevel/Retweet/Quote/Reply
BAD_INTEGER = "bad_integer"  # count/timestamp not a non-negative integer of <= 18 digits
BAD_BOOLEAN = "bad_boolean"  # not exactly true/false
REASONS: tuple[str, ...] = (
    BAD_UTF8,
    FIELD_COUNT,
    BAD_TOKEN,
    BAD_HEX_ID,
    BAD_MEDIA,
    BAD_TWEET_TYPE,
    BAD_INTEGER,
    BAD_BOOLEAN,
)
_CODE = {r: i + 1 for i, r in enumerate(REASONS)}  # 0 = valid

_HEX = "[0-9A-F]{32}"
_TOKEN = "[0-9]{1,9}"
_MEDIA = "(?:" + "|".join(MEDIA_TYPES) + ")"


def _tab_list(item: str) -> str:
    return f"^(?:{item}(?:\t{item})*)?$"


#: Per column: (anchored RE2 pattern, reason when it does not match).
_RULES: dict[str, tuple[str, str]] = {}
for _c in LIST_TOKEN_COLUMNS:
    _RULES[_c] = (_tab_list(_TOKEN), BAD_TOKEN)
for _c in LIST_HEX_COLUMNS:
    _RULES[_c] = (_tab_list(_HEX), BAD_HEX_ID)
for _c in LIST_MEDIA_COLUMNS:
    _RULES[_c] = (_tab_list(_MEDIA), BAD_MEDIA)
for _c in HEX_COLUMNS:
    _RULES[_c] = (f"^{_HEX}$", BAD_HEX_ID)
for _c in INT_COLUMNS:
    _RULES[_c] = ("^[0-9]{1,18}$", BAD_INTEGER)
for _c in OPTIONAL_INT_COLUMNS:
    _RULES[_c] = ("^[0-9]{0,18}$", BAD_INTEGER)
for _c in BOOL_COLUMNS:
    _RULES[_c] = ("^(?:true|false)$", BAD_BOOLEAN)
_RULES["tweet_type"] = ("^(?:" + "|".join(TWEET_TYPES) + ")$", BAD_TWEET_TYPE)
assert set(_RULES) == set(COLUMNS), "every raw column needs a validation rule"


def _arrow_type(column: str) -> pa.DataType:
    if column in LIST_TOKEN_COLUMNS:
        return pa.list_(pa.int32())
    if column in LIST_HEX_COLUMNS or column in LIST_MEDIA_COLUMNS:
        return pa.list_(pa.string())
    if column in INT_COLUMNS or column in OPTIONAL_INT_COLUMNS:
        return pa.int64()
    if column in BOOL_COLUMNS:
        return pa.bool_()
    return pa.string()


#: Schema of every ingest part (docs/data-format.md §4): ``row_id`` then the 24 columns.
SCHEMA = pa.schema([pa.field("row_id", pa.int64())] + [pa.field(c, _arrow_type(c)) for c in COLUMNS])

#: Schema of the per-block quarantine table returned by :func:`parse_block`.
QUARANTINE_BLOCK_SCHEMA = pa.schema(
    [
        pa.field("line_index", pa.int64()),  # 0-based line index within the block
        pa.field("reason", pa.string()),
        pa.field("field", pa.string()),  # column that failed; null for bad_utf8 / field_count
        pa.field("raw", pa.binary()),
    ]
)


def field_counts(split: str) -> tuple[int, ...]:
    """Accepted fields per line: 24 for train/valid; 24 or 20 (no labels) for test, per line."""
    return (N_FIELDS_LABELED, N_FIELDS_TEST) if split == "test" else (N_FIELDS_LABELED,)


@dataclass
class ParsedBlock:
    """Result of :func:`parse_block`."""

    #: Valid rows in line order, :data:`SCHEMA`.
    table: pa.Table
    #: Quarantined lines in line order, :data:`QUARANTINE_BLOCK_SCHEMA`.
    quarantine: pa.Table
    #: Lines in the block, empty ones included (what line numbers count).
    n_lines: int
    #: Empty lines (not rows).
    n_blank: int

    @property
    def rows_in(self) -> int:
        return self.n_lines - self.n_blank

    def reason_counts(self) -> dict[str, int]:
        if self.quarantine.num_rows == 0:
            return {}
        vc = pc.value_counts(self.quarantine.column("reason")).to_pylist()
        return {d["values"]: int(d["counts"]) for d in sorted(vc, key=lambda d: d["values"])}


def parse_block(
    data: bytes,
    *,
    file_index: int,
    offset: int,
    counts: Collection[int] = (N_FIELDS_LABELED,),
) -> ParsedBlock:
    """Parse and validate a block of whole lines.

    ``data`` must start at a line start; its last line may lack the ``\\n``. ``offset`` is the byte
    offset of ``data[0]`` in the (decompressed) file, ``file_index`` the file's index in its split's
    sorted file list: together they make ``row_id``. ``counts`` are the accepted field counts
    (see :func:`field_counts`); label columns of 20-field lines are null.
    """
    counts = _check_arguments(data, file_index, offset, counts)
    buf = np.frombuffer(data, dtype=np.uint8)
    lines = _split_lines(buf)
    ascii_buf, bad_utf8 = _ascii_copy(data, buf, lines)
    flat, field_start = _flat_fields(ascii_buf, lines)

    # A line's reason is the first check it fails, in REASONS order; blank lines are not rows.
    code = np.zeros(lines.count, dtype=np.int8)
    field_of = np.full(lines.count, -1, dtype=np.int16)
    code[bad_utf8] = _CODE[BAD_UTF8]
    code[(code == 0) & ~np.isin(lines.n_fields, counts)] = _CODE[FIELD_COUNT]
    code[lines.blank] = 0
    cand = np.flatnonzero(~lines.blank & (code == 0))
    cand_code, cand_field, raw_columns = _check_fields(flat, field_start[cand], lines.n_fields[cand])
    code[cand] = cand_code
    field_of[cand] = cand_field

    good = cand_code == 0
    row_ids = (file_index << ROW_ID_SHIFT) | (offset + lines.starts[cand[good]])
    return ParsedBlock(
        table=_typed_table(row_ids, raw_columns, good),
        quarantine=_quarantine_table(data, lines, code, field_of),
        n_lines=lines.count,
        n_blank=int(lines.blank.sum()),
    )


def _check_arguments(data: bytes, file_index: int, offset: int, counts: Collection[int]) -> tuple[int, ...]:
    """Check that ``row_id`` can encode the block's lines; return the accepted field counts, largest first."""
    if not 0 <= file_index <= MAX_FILE_INDEX:
        raise ValueError(f"file index {file_index} does not fit in a row_id (max {MAX_FILE_INDEX})")
    if offset < 0 or offset + len(data) > (1 << ROW_ID_SHIFT):
        raise ValueError(f"byte offsets up to {offset + len(data)} do not fit in a row_id (files must be < 1 TiB)")
    accepted = tuple(sorted(set(counts), reverse=True))
    if not accepted or any(c not in (N_FIELDS_LABELED, N_FIELDS_TEST) for c in accepted):
        raise ValueError(f"field counts must be {N_FIELDS_LABELED} and/or {N_FIELDS_TEST}, got {accepted}")
    return accepted


@dataclass
class _Lines:
    """Where the lines of a block are (one entry per line, empty lines included)."""

    starts: np.ndarray  # byte offset of the line's first byte
    content_end: np.ndarray  # byte offset just past its content (before "\r\n" or "\n")
    cr: np.ndarray  # the line ends with "\r" (dropped from its content)
    n_fields: np.ndarray  # \x01-separated fields of the content
    newlines: np.ndarray  # byte offsets of every "\n" of the block

    @property
    def count(self) -> int:
        """Number of lines."""
        return int(self.starts.size)

    @property
    def blank(self) -> np.ndarray:
        """Whether each line is empty."""
        return self.content_end == self.starts


def _split_lines(buf: np.ndarray) -> _Lines:
    """Find the lines of ``buf`` and count their fields."""
    size = buf.size
    newlines = np.flatnonzero(buf == 10)
    starts = np.empty(newlines.size + 1, dtype=np.int64)
    starts[0] = 0
    starts[1:] = newlines + 1
    ends = np.empty_like(starts)
    ends[:-1] = newlines
    ends[-1] = size
    if starts[-1] == size:  # nothing after the final newline (or no data at all)
        starts, ends = starts[:-1], ends[:-1]
    cr = (ends > starts) & (buf[ends - 1] == 13) if starts.size else np.zeros(0, dtype=bool)
    content_end = ends - cr
    separators = np.flatnonzero(buf == 1)
    seps = np.searchsorted(separators, content_end) - np.searchsorted(separators, starts)
    return _Lines(starts=starts, content_end=content_end, cr=cr, n_fields=seps + 1, newlines=newlines)


def _ascii_copy(data: bytes, buf: np.ndarray, lines: _Lines) -> tuple[np.ndarray, np.ndarray]:
    """A copy of ``buf`` with every byte >= 0x80 replaced by ``?``, and which lines are not valid UTF-8.

    Non-ASCII lines are rare: only they are decoded in Python.
    """
    ascii_buf = buf.copy()
    bad_utf8 = np.zeros(lines.count, dtype=bool)
    high = np.flatnonzero(buf >= 0x80)
    if high.size:
        ascii_buf[high] = ord("?")
        for i in np.unique(np.searchsorted(lines.starts, high, side="right") - 1).tolist():
            try:
                data[lines.starts[i] : lines.content_end[i]].decode("utf-8")
            except UnicodeDecodeError:
                bad_utf8[i] = True
    return ascii_buf, bad_utf8


def _flat_fields(ascii_buf: np.ndarray, lines: _Lines) -> tuple[pa.Array, np.ndarray]:
    """All fields of the block as one flat string array, and the index of each line's first field.

    Terminators (\\n, and a line-final \\r) become separators too: line i then owns
    n_fields[i] + cr[i] consecutive elements (a \\r adds an empty phantom field). ``ascii_buf`` is
    modified in place.
    """
    ascii_buf[lines.newlines] = 1
    ascii_buf[lines.content_end[lines.cr]] = 1
    per_line = lines.n_fields + lines.cr
    field_start = np.zeros(lines.count, dtype=np.int64)
    if lines.count > 1:
        np.cumsum(per_line[:-1], out=field_start[1:])
    size = ascii_buf.size
    str_type, off_type = (pa.string(), np.int32) if size < 2**31 - 1 else (pa.large_string(), np.int64)
    whole = pa.Array.from_buffers(
        str_type, 1, [None, pa.py_buffer(np.array([0, size], dtype=off_type)), pa.py_buffer(ascii_buf)]
    )
    return pc.split_pattern(whole, "\x01").flatten(), field_start


def _check_fields(
    flat: pa.Array, first: np.ndarray, n_fields: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[pa.Array]]:
    """Validate lines whose first field is ``flat[first[i]]``, column by column.

    Returns per line the reason code of the first failing field in file order (0 = valid) and that
    field's column index (-1 = none), and the raw string column of every column (null labels for
    20-field lines).
    """
    short = n_fields != N_FIELDS_LABELED
    line_code = np.zeros(first.size, dtype=np.int8)
    line_field = np.full(first.size, -1, dtype=np.int16)
    raw_columns: list[pa.Array] = []
    for j, column in enumerate(COLUMNS):
        if j >= N_FIELDS_TEST and short.any():
            idx = pa.array(first + j, mask=short)  # 20-field lines: null labels
        else:
            idx = pa.array(first + j)
        col = flat.take(idx)
        pattern, reason = _RULES[column]
        ok = pc.match_substring_regex(col, pattern).fill_null(True).to_numpy(zero_copy_only=False)
        new_bad = ~ok & (line_code == 0)
        if new_bad.any():
            line_code[new_bad] = _CODE[reason]
            line_field[new_bad] = j
        raw_columns.append(col)
    return line_code, line_field, raw_columns


def _typed_table(row_ids: np.ndarray, raw_columns: list[pa.Array], good: np.ndarray) -> pa.Table:
    """The :data:`SCHEMA` table of the ``good`` entries of the validated raw columns."""
    keep = None if good.all() else pa.array(good)
    arrays = [pa.array(row_ids, type=pa.int64())]
    for column, col in zip(COLUMNS, raw_columns):
        if keep is not None:
            col = col.filter(keep)
        arrays.append(_convert(column, col))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _quarantine_table(data: bytes, lines: _Lines, code: np.ndarray, field_of: np.ndarray) -> pa.Table:
    """The :data:`QUARANTINE_BLOCK_SCHEMA` table of the lines with a non-zero reason ``code``."""
    bad = np.flatnonzero(code != 0)
    bad_starts = lines.starts[bad]
    bad_ends = np.minimum(lines.content_end[bad], bad_starts + RAW_PREFIX_BYTES)
    return pa.Table.from_arrays(
        [
            pa.array(bad, type=pa.int64()),
            pa.array([REASONS[c - 1] for c in code[bad].tolist()], type=pa.string()),
            pa.array([COLUMNS[f] if f >= 0 else None for f in field_of[bad].tolist()], type=pa.string()),
            pa.array([data[s:e] for s, e in zip(bad_starts.tolist(), bad_ends.tolist())], type=pa.binary()),
        ],
        schema=QUARANTINE_BLOCK_SCHEMA,
    )


def _convert(column: str, col: pa.Array) -> pa.Array:
    """A validated raw string column → its typed ingest column."""
    if col.type == pa.large_string():
        col = col.cast(pa.string())
    if column in LIST_TOKEN_COLUMNS:
        return _split_list(col, pa.int32())
    if column in LIST_HEX_COLUMNS or column in LIST_MEDIA_COLUMNS:
        return _split_list(col, pa.string())
    if column in INT_COLUMNS:
        return col.cast(pa.int64())
    if column in OPTIONAL_INT_COLUMNS:  # empty = no engagement; null already for 20-field lines
        return pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col).cast(pa.int64())
    if column in BOOL_COLUMNS:
        return pc.equal(col, "true")
    return col


def _split_list(col: pa.Array, item_type: pa.DataType) -> pa.Array:
    """Tab list → list array; an empty field is an empty list (not ``[""]``).

    Validation guarantees that non-empty fields have no empty items, so the only empty strings
    among the split values come from empty fields.
    """
    parts = pc.split_pattern(col, "\t")
    values = parts.flatten()
    lengths = pc.list_value_length(parts).to_numpy(zero_copy_only=False).astype(np.int64)
    empty = pc.equal(pc.binary_length(col), 0).to_numpy(zero_copy_only=False)
    if empty.any():
        values = values.filter(pa.array(np.repeat(~empty, lengths)))
        lengths[empty] = 0
    offsets = np.zeros(lengths.size + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values.cast(item_type))
