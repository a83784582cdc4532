"""Chunk rows → model tensors: columnar examples, efficient vs naive pair encoding, length buckets.

A chunk (docs/data-format.md §7) holds, per example, the candidate's tokens and the tokens of up to
H history tweets. The model needs, per example, the ``[CLS]`` embedding of ``[CLS] candidate [SEP]``
and of ``[CLS] candidate [SEP] history_i [SEP]`` for every history slot. Two ways to get them:

- **naive** (the paper's): every slot of every example goes through the encoder, empty slots
  included, every sequence padded to the longest possible pair. With sparse histories (most users
  have 0–2 earlier engagements) most of the encoder's work is padding.
- **efficient** (default): only the candidates and the *valid* pairs are encoded; empty slots
  get a learned vector without an encoder pass. Sequences are grouped into length buckets taken
  from a fixed ladder (multiples of :data:`BUCKET_STEP` up to ``2 * max_length``) and each bucket is
  cut into encoder calls of at most ``token_budget`` tokens, so padding is at most one step per
  sequence and the set of tensor shapes is small.
- **static shapes** (``buckets``: a :class:`ShapeBuckets`; what XLA needs, which compiles one
  graph per distinct set of input shapes): the same valid sequences, packed into **one** encoder
  call per batch whose shape is a (pair-count bucket × sequence-length bucket) of a small fixed
  grid, padded to it with filler ``[CLS] [SEP]`` rows. A run then meets at most
  ``len(buckets)`` distinct shapes whatever its data.

All modes return a :class:`ModelBatch` whose ``groups`` the model encodes one after the other and
scatters back into a ``(B, 1 + H, D)`` tensor with the slot indices (filler rows go to one extra
"trash" slot that is dropped); in eval mode they give the same logits (up to float rounding), which
tests/test_model.py checks.

Data efficiency = tokens that carry content (candidates + valid pairs, specials included) divided
by tokens the encoder processed (padding and empty-slot pairs included).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ..recsys_format import TARGETS
from ..stages.chunks.contract import ChunksManifest, SpecialTokens

#: Sequence lengths are padded up to a multiple of this (the bucket ladder's step).
BUCKET_STEP = 8

Encoding = Literal["efficient", "naive"]


# ----------------------------------------------------------------------------------------------
# columnar examples
# ----------------------------------------------------------------------------------------------
def _ragged_take(values: np.ndarray, offsets: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``idx`` of a ragged array given as flat ``values`` + ``offsets`` (vectorised)."""
    starts = offsets[idx]
    lengths = offsets[idx + 1] - starts
    new_offsets = np.zeros(len(idx) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    total = int(new_offsets[-1])
    src = np.repeat(starts - new_offsets[:-1], lengths) + np.arange(total, dtype=np.int64)
    return values[src], new_offsets


def _ragged_concat(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    va, oa = a
    vb, ob = b
    values = np.concatenate([va[oa[0] : oa[-1]], vb[ob[0] : ob[-1]]])
    offsets = np.concatenate([oa - oa[0], ob[1:] - ob[0] + (oa[-1] - oa[0])])
    return values, offsets


def _list_to_ragged(arr: pa.Array | pa.ChunkedArray, what: str) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.null_count:
        raise ValueError(f"column {what} has {arr.null_count} null list(s); the chunk format has none")
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.zeros(len(arr) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = pc.list_flatten(arr)
    return values.to_numpy(zero_copy_only=False), offsets


def _fixed_lists(arr: pa.Array | pa.ChunkedArray, n: int, width: int, what: str) -> np.ndarray:
    """A list column whose every row has ``width`` items, as an ``(n, width)`` array."""
    values, offsets = _list_to_ragged(arr, what)
    if not np.all(np.diff(offsets) == width):
        bad = int(np.argmax(np.diff(offsets) != width))
        raise ValueError(f"column {what}: row {bad} has {int(offsets[bad + 1] - offsets[bad])} items, expected {width}")
    return values.reshape(n, width)


@dataclass
class Examples:
    """A set of examples in columnar form (what the loader yields and batching consumes).

    Ragged token lists are flat ``*_values`` plus ``*_offsets`` (``len + 1``); history slot ``h`` of
    example ``i`` is ragged row ``i * H + h``. ``labels`` is ``(N, 4)`` float32 in
    :data:`microparade.recsys_format.TARGETS` order, NaN where unknown (test split). ``tweet_id`` /
    ``b_user_id`` are only loaded when asked for (predictions need them, training does not).
    """

    row_id: np.ndarray  # (N,) int64
    a_follower_count: np.ndarray  # (N,) int64
    labels: np.ndarray  # (N, 4) float32
    cand_values: np.ndarray  # int32
    cand_offsets: np.ndarray  # (N + 1,) int64
    hist_values: np.ndarray  # int32
    hist_offsets: np.ndarray  # (N * H + 1,) int64
    hist_mask: np.ndarray  # (N, H) bool
    hist_hour: np.ndarray  # (N, H) int64, 24 = unknown
    features: np.ndarray  # (N, F) float32, raw (the model normalises)
    tweet_id: np.ndarray | None = None  # (N,) object
    b_user_id: np.ndarray | None = None  # (N,) object

    def __len__(self) -> int:
        return len(self.row_id)

    @property
    def history_size(self) -> int:
        return self.hist_mask.shape[1]

    @property
    def labelled(self) -> bool:
        return not np.isnan(self.labels).any()

    def padded_to(self, n: int) -> Examples:
        """These examples repeated cyclically up to ``n`` rows (static shapes: a full batch whose
        extra rows' predictions the caller drops)."""
        return self if len(self) >= n else self.take(np.resize(np.arange(len(self)), n))

    def take(self, idx: np.ndarray) -> Examples:
        """The examples at positions ``idx`` (in that order)."""
        idx = np.asarray(idx, dtype=np.int64)
        h = self.history_size
        cand = _ragged_take(self.cand_values, self.cand_offsets, idx)
        slots = (idx[:, None] * h + np.arange(h)).reshape(-1)
        hist = _ragged_take(self.hist_values, self.hist_offsets, slots)
        return Examples(
            row_id=self.row_id[idx],
            a_follower_count=self.a_follower_count[idx],
            labels=self.labels[idx],
            cand_values=cand[0],
            cand_offsets=cand[1],
            hist_values=hist[0],
            hist_offsets=hist[1],
            hist_mask=self.hist_mask[idx],
            hist_hour=self.hist_hour[idx],
            features=self.features[idx],
            tweet_id=None if self.tweet_id is None else self.tweet_id[idx],
            b_user_id=None if self.b_user_id is None else self.b_user_id[idx],
        )

    @staticmethod
    def concat(a: Examples, b: Examples) -> Examples:
        """``a`` followed by ``b`` (a batch that spans two chunks)."""
        cand = _ragged_concat((a.cand_values, a.cand_offsets), (b.cand_values, b.cand_offsets))
        hist = _ragged_concat((a.hist_values, a.hist_offsets), (b.hist_values, b.hist_offsets))

        def cat(x, y):
            return None if x is None or y is None else np.concatenate([x, y])

        return Examples(
            row_id=np.concatenate([a.row_id, b.row_id]),
            a_follower_count=np.concatenate([a.a_follower_count, b.a_follower_count]),
            labels=np.concatenate([a.labels, b.labels]),
            cand_values=cand[0],
            cand_offsets=cand[1],
            hist_values=hist[0],
            hist_offsets=hist[1],
            hist_mask=np.concatenate([a.hist_mask, b.hist_mask]),
            hist_hour=np.concatenate([a.hist_hour, b.hist_hour]),
            features=np.concatenate([a.features, b.features]),
            tweet_id=cat(a.tweet_id, b.tweet_id),
            b_user_id=cat(a.b_user_id, b.b_user_id),
        )

    @classmethod
    def from_table(cls, table: pa.Table, *, history_size: int, n_features: int, with_ids: bool = False) -> Examples:
        """Convert a chunk table (docs/data-format.md §7), checking H and F against the manifest."""
        n = table.num_rows
        cand = _list_to_ragged(table.column("tokens"), "tokens")
        outer = table.column("hist_tokens")
        outer = outer.combine_chunks() if isinstance(outer, pa.ChunkedArray) else outer
        if outer.null_count:
            raise ValueError("column hist_tokens has null lists; the chunk format has none")
        lens = pc.list_value_length(outer).to_numpy(zero_copy_only=False)
        if n and not np.all(lens == history_size):
            bad = int(np.argmax(lens != history_size))
            raise ValueError(
                f"column hist_tokens: row {bad} has {int(lens[bad])} slots but the manifest's "
                f"history_size is {history_size}"
            )
        hist = _list_to_ragged(pc.list_flatten(outer), "hist_tokens[]")
        labels = np.stack(
            [pc.cast(table.column(t), pa.float32()).to_numpy(zero_copy_only=False) for t in TARGETS], axis=1
        ).astype(np.float32, copy=False)
        return cls(
            row_id=table.column("row_id").to_numpy().astype(np.int64, copy=False),
            a_follower_count=table.column("a_follower_count").to_numpy(zero_copy_only=False).astype(np.int64),
            labels=labels.reshape(n, len(TARGETS)),
            cand_values=cand[0].astype(np.int32, copy=False),
            cand_offsets=cand[1],
            hist_values=hist[0].astype(np.int32, copy=False),
            hist_offsets=hist[1],
            hist_mask=_fixed_lists(table.column("hist_mask"), n, history_size, "hist_mask").astype(bool),
            hist_hour=_fixed_lists(table.column("hist_hour"), n, history_size, "hist_hour").astype(np.int64),
            features=_fixed_lists(table.column("features"), n, n_features, "features").astype(np.float32),
            tweet_id=table.column("tweet_id").to_numpy(zero_copy_only=False) if with_ids else None,
            b_user_id=table.column("b_user_id").to_numpy(zero_copy_only=False) if with_ids else None,
        )


#: Chunk columns :meth:`Examples.from_table` reads (``ID_COLUMNS`` only with ``with_ids``).
TRAIN_COLUMNS: tuple[str, ...] = (
    "row_id",
    "a_follower_count",
    *TARGETS,
    "tokens",
    "hist_tokens",
    "hist_mask",
    "hist_hour",
    "features",
)
ID_COLUMNS: tuple[str, ...] = ("tweet_id", "b_user_id")


# ----------------------------------------------------------------------------------------------
# model batches
# ----------------------------------------------------------------------------------------------
@dataclass
class EncoderGroup:
    """One encoder call: ``n`` sequences of one length; the first ``n_real`` rows are real, the others
    filler whose ``slots`` entry is the trash slot ``B * (1 + H)``."""

    input_ids: torch.Tensor  # (n, L) int64
    attention_mask: torch.Tensor  # (n, L) int64
    token_type_ids: torch.Tensor  # (n, L) int64
    slots: torch.Tensor  # (n,) int64: flat index into (B * (1 + H) + 1) of each row
    n_real: int


@dataclass
class ModelBatch:
    """Everything the model's forward needs for B examples (tensors on one device)."""

    groups: list[EncoderGroup]
    slot_mask: torch.Tensor  # (B, 1 + H) bool: candidate + valid history slots
    hist_hour: torch.Tensor  # (B, H) int64
    features: torch.Tensor  # (B, F) float32, raw
    labels: torch.Tensor  # (B, 4) float32, NaN = unknown
    valid_tokens: int = 0
    encoded_tokens: int = 0
    #: The (rows, length) shape bucket of the one encoder call (static shapes only).
    shape: tuple[int, int] | None = None

    @property
    def size(self) -> int:
        return self.slot_mask.shape[0]

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor of the batch in a fixed order (see :meth:`with_tensors`)."""
        out = [self.slot_mask, self.hist_hour, self.features, self.labels]
        for g in self.groups:
            out += [g.input_ids, g.attention_mask, g.token_type_ids, g.slots]
        return out

    def with_tensors(self, tensors: list[torch.Tensor]) -> ModelBatch:
        """The same batch with its tensors replaced, in :meth:`tensors` order (e.g. moved to a device)."""
        it: Iterator[torch.Tensor] = iter(tensors)
        head = [next(it) for _ in range(4)]
        groups = [EncoderGroup(next(it), next(it), next(it), next(it), g.n_real) for g in self.groups]
        return replace(self, groups=groups, slot_mask=head[0], hist_hour=head[1], features=head[2], labels=head[3])

    def to(self, device: torch.device | str) -> ModelBatch:
        """The same batch on ``device`` (host-to-device copies are asynchronous)."""
        if torch.device(device).type == "cpu":
            return self

        return self.with_tensors([t.to(device, non_blocking=True) for t in self.tensors()])


def bucket_ladder(max_length: int, step: int = BUCKET_STEP) -> np.ndarray:
    """The fixed sequence lengths: multiples of ``step`` up to the longest pair, ``2 * max_length``.

    A pair ``[CLS] cand [SEP] hist [SEP]`` of two tweets truncated to ``max_length - 2`` content
    tokens has at most ``2 * max_length - 1`` tokens, so the top rung always fits.
    """
    top = -(-2 * max_length // step) * step
    return np.arange(step, top + 1, step, dtype=np.int64)


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


@dataclass(frozen=True)
class ShapeBuckets:
    """The fixed grid of encoder-call shapes for static-shape batches: ``rows`` × ``lengths``.

    A batch of B examples with H history slots encodes between B (no valid history) and B·(1 + H)
    sequences (every slot valid), each at most ``2 * max_length`` tokens. :meth:`make` spreads
    ``n_rows`` row counts evenly over ``(B, B·(1 + H)]`` (rounded up to ``multiple``, e.g. the
    device count, so the rows split evenly over devices) and ``n_lengths`` lengths evenly over
    ``(0, 2 * max_length]`` (rounded up to :data:`BUCKET_STEP`). A batch takes the smallest row
    count that holds its sequences and the smallest length that holds its longest one. More
    buckets mean less padding and more graphs to compile (docs/tpu.md).
    """

    rows: tuple[int, ...]
    lengths: tuple[int, ...]

    @classmethod
    def make(
        cls,
        *,
        batch_size: int,
        history_size: int,
        max_length: int,
        n_rows: int = 4,
        n_lengths: int = 4,
        multiple: int = 1,
        step: int = BUCKET_STEP,
    ) -> ShapeBuckets:
        top = _round_up(2 * max_length, step)
        lengths = sorted({_round_up(-(-top * k // n_lengths), step) for k in range(1, n_lengths + 1)})
        lo, hi = batch_size, batch_size * (1 + history_size)
        rows = sorted({_round_up(lo + -(-(hi - lo) * k // n_rows), multiple) for k in range(1, n_rows + 1)})
        return cls(tuple(rows), tuple(lengths))

    @classmethod
    def for_chunks(
        cls, chunks: ChunksManifest, *, batch_size: int, rows: int, lengths: int, multiple: int
    ) -> ShapeBuckets:
        """The grid for batches of ``batch_size`` examples of these chunks (their H and max length)."""
        return cls.make(
            batch_size=batch_size,
            history_size=chunks.history_size,
            max_length=chunks.max_length,
            n_rows=rows,
            n_lengths=lengths,
            multiple=multiple,
        )

    def __len__(self) -> int:
        return len(self.rows) * len(self.lengths)

    def pick(self, n_sequences: int, longest: int) -> tuple[int, int]:
        """The (rows, length) bucket of a batch of ``n_sequences`` sequences, the longest ``longest``."""
        if n_sequences > self.rows[-1] or longest > self.lengths[-1]:
            raise ValueError(
                f"{n_sequences} sequences of up to {longest} tokens exceed the largest shape bucket "
                f"({self.rows[-1]} x {self.lengths[-1]}): were the buckets made for this batch size and history?"
            )
        rows = next(r for r in self.rows if r >= n_sequences)
        length = next(n for n in self.lengths if n >= longest)
        return rows, length


def _build_sequences(
    ex: Examples,
    ex_index: np.ndarray,
    hist_slot: np.ndarray,
    specials: SpecialTokens,
    content_max: int,
    width: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Token ids / attention mask / token types (``(S, width)``) and lengths of S sequences.

    Sequence ``s`` is ``[CLS] cand [SEP]`` of example ``ex_index[s]`` when ``hist_slot[s] < 0``, else
    ``[CLS] cand [SEP] hist [SEP]`` with history slot ``hist_slot[s]`` (token type 1 for the second
    segment). Tweets are cut to ``content_max`` tokens (the text stage already did; this only
    enforces the contract). Everything is vectorised: no Python loop over sequences.
    """
    s_count = len(ex_index)
    h = ex.history_size
    c_start = ex.cand_offsets[ex_index]
    c_len = np.minimum(ex.cand_offsets[ex_index + 1] - c_start, content_max)
    is_pair = hist_slot >= 0
    flat_slot = ex_index * h + np.maximum(hist_slot, 0)
    h_start = ex.hist_offsets[flat_slot]
    h_len = np.where(is_pair, np.minimum(ex.hist_offsets[flat_slot + 1] - h_start, content_max), 0)
    length = c_len + 2 + np.where(is_pair, h_len + 1, 0)

    ids = np.full((s_count, width), specials.pad, dtype=np.int64)
    rows = np.arange(s_count)
    ids[:, 0] = specials.cls
    # candidate tokens at columns 1 .. c_len
    rep = np.repeat(rows, c_len)
    within = np.arange(int(c_len.sum()), dtype=np.int64) - np.repeat(np.cumsum(c_len) - c_len, c_len)
    ids[rep, 1 + within] = ex.cand_values[np.repeat(c_start, c_len) + within]
    ids[rows, 1 + c_len] = specials.sep
    # history tokens at columns c_len + 2 .., then [SEP]
    rep = np.repeat(rows, h_len)
    within = np.arange(int(h_len.sum()), dtype=np.int64) - np.repeat(np.cumsum(h_len) - h_len, h_len)
    ids[rep, np.repeat(c_len + 2, h_len) + within] = ex.hist_values[np.repeat(h_start, h_len) + within]
    pr = rows[is_pair]
    ids[pr, c_len[is_pair] + h_len[is_pair] + 2] = specials.sep

    cols = np.arange(width)[None, :]
    attn = (cols < length[:, None]).astype(np.int64)
    ttype = ((cols >= (c_len + 2)[:, None]) & is_pair[:, None]).astype(np.int64) * attn
    return ids, attn, ttype, length


def encode_batch(
    ex: Examples,
    *,
    specials: SpecialTokens,
    max_length: int,
    encoding: Encoding = "efficient",
    token_budget: int = 8192,
    buckets: ShapeBuckets | None = None,
    use_text: bool = True,
    use_history: bool = True,
    bucket_step: int = BUCKET_STEP,
) -> ModelBatch:
    """Turn examples into a :class:`ModelBatch` (CPU tensors; move with :meth:`ModelBatch.to`).

    With ``buckets`` the efficient encoding packs every valid sequence into one encoder call of a
    bucket's shape (static shapes); without, it cuts length buckets by ``token_budget``. The naive
    encoding is one call of fixed width anyway. ``use_text=False`` (the features-only ablation)
    builds no encoder input at all; ``use_history=False`` (the no-history ablation) leaves every
    history slot empty, so only the candidates are encoded.
    """
    b = len(ex)
    h = ex.history_size
    hist_mask = ex.hist_mask if use_history else np.zeros_like(ex.hist_mask, dtype=bool)
    slot_mask = np.concatenate([np.ones((b, 1), dtype=bool), hist_mask], axis=1)
    groups: list[EncoderGroup] = []
    valid_tokens = encoded_tokens = 0
    shape: tuple[int, int] | None = None
    trash = b * (1 + h)  # the slot that filler rows write to (dropped by the model)
    if use_text and b:
        ladder = bucket_ladder(max_length, bucket_step)
        content_max = max_length - 2
        # Every slot: candidate (hist_slot -1) at flat slot b*(1+H), history h at b*(1+H)+1+h.
        all_ex = np.repeat(np.arange(b, dtype=np.int64), 1 + h)
        all_hist = np.tile(np.arange(-1, h, dtype=np.int64), b)
        all_flat = np.arange(b * (1 + h), dtype=np.int64)
        keep = slot_mask.reshape(-1)
        if encoding == "efficient":
            seq_ex, seq_hist, seq_flat = all_ex[keep], all_hist[keep], all_flat[keep]
            width = int(ladder[-1])
        elif encoding == "naive":
            seq_ex, seq_hist, seq_flat = all_ex, all_hist, all_flat
            width = int(ladder[-1])
        else:
            raise ValueError(f"unknown encoding {encoding!r}; expected 'efficient' or 'naive'")
        ids, attn, ttype, length = _build_sequences(ex, seq_ex, seq_hist, specials, content_max, width)
        real = keep[seq_flat] if encoding == "naive" else np.ones(len(seq_flat), dtype=bool)
        valid_tokens = int(length[real].sum())
        if encoding == "naive":
            # The paper's way: one call, every slot, padded to the longest possible pair.
            groups.append(_group(ids, attn, ttype, seq_flat, width, len(seq_flat), specials, trash))
            encoded_tokens = len(seq_flat) * width
            shape = (len(seq_flat), width)
        elif buckets is not None:
            shape = buckets.pick(len(seq_flat), int(length.max()))
            groups.append(_group(ids, attn, ttype, seq_flat, shape[1], shape[0], specials, trash))
            encoded_tokens = shape[0] * shape[1]
        else:
            bucket = ladder[np.searchsorted(ladder, length)]
            order = np.lexsort((np.arange(len(length)), bucket))  # by bucket, stable
            for blen in np.unique(bucket):
                sel = order[bucket[order] == blen]
                cap = max(1, token_budget // int(blen))
                for start in range(0, len(sel), cap):
                    part = sel[start : start + cap]
                    groups.append(
                        _group(
                            ids[part], attn[part], ttype[part], seq_flat[part], int(blen), len(part), specials, trash
                        )
                    )
                    encoded_tokens += len(part) * int(blen)
    return ModelBatch(
        groups=groups,
        slot_mask=torch.from_numpy(slot_mask),
        hist_hour=torch.from_numpy(np.ascontiguousarray(ex.hist_hour, dtype=np.int64)),
        features=torch.from_numpy(np.ascontiguousarray(ex.features, dtype=np.float32)),
        labels=torch.from_numpy(np.ascontiguousarray(ex.labels, dtype=np.float32)),
        valid_tokens=valid_tokens,
        encoded_tokens=encoded_tokens,
        shape=shape,
    )


def _group(
    ids: np.ndarray,
    attn: np.ndarray,
    ttype: np.ndarray,
    flat: np.ndarray,
    length: int,
    rows: int,
    specials: SpecialTokens,
    trash: int,
) -> EncoderGroup:
    """An encoder call of ``rows`` rows × ``length`` columns; rows past the real ones are filler
    ``[CLS] [SEP]`` sequences (static shapes) whose outputs go to the ``trash`` slot."""
    n_real = len(flat)
    ids, attn, ttype = ids[:, :length], attn[:, :length], ttype[:, :length]
    if rows > n_real:
        fill = rows - n_real
        pad_ids = np.full((fill, length), specials.pad, dtype=np.int64)
        pad_ids[:, 0], pad_ids[:, 1] = specials.cls, specials.sep
        pad_attn = np.zeros((fill, length), dtype=np.int64)
        pad_attn[:, :2] = 1
        ids = np.concatenate([ids, pad_ids])
        attn = np.concatenate([attn, pad_attn])
        ttype = np.concatenate([ttype, np.zeros((fill, length), dtype=np.int64)])
        flat = np.concatenate([flat, np.full(fill, trash, dtype=np.int64)])
    return EncoderGroup(
        input_ids=torch.from_numpy(np.ascontiguousarray(ids)),
        attention_mask=torch.from_numpy(np.ascontiguousarray(attn)),
        token_type_ids=torch.from_numpy(np.ascontiguousarray(ttype)),
        slots=torch.from_numpy(np.ascontiguousarray(flat, dtype=np.int64)),
        n_real=n_real,
    )
