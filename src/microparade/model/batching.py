"""Chunk rows → model tensors: columnar examples, efficient vs naive pair encoding, length buckets.

A chunk (docs/data-format.md §7) holds, per example, the candidate's tokens and the tokens of up to
H history tweets. The model needs, per example, the ``[CLS]`` embedding of ``[CLS] candidate [SEP]``
and of ``[CLS] candidate [SEP] history_i [SEP]`` for every history slot. Two ways to get them:

- **naive** (the paper's): every slot of every example goes through the encoder, empty slots
  included, every sequence padded to the longest possible pair. With sparse histories (most users
  have 0–2 earlier engagements) most of the encoder's work is padding.
- **efficient** (default): only the candidates and the *valid* pairs are encoded; empty slots get a
  learned vector without an encoder pass. Sequences are grouped into length buckets taken from a
  fixed ladder (multiples of :data:`BUCKET_STEP` up to ``2 * max_length``) and each bucket is cut
  into encoder calls of at most ``token_budget`` tokens, so padding is at most one step per
  sequence and the set of tensor shapes is small and fixed. ``static_shapes`` additionally pads
  every call to the bucket's full row capacity (``token_budget // length``), which makes the shapes
  independent of the data — what an XLA compiler wants.

Both modes return a :class:`ModelBatch` whose ``groups`` the model encodes one after the other and
scatters back into a ``(B, 1 + H, D)`` tensor with the slot indices; in eval mode the two give the
same logits (up to float rounding), which tests/test_model.py checks.

Data efficiency = tokens that carry content (candidates + valid pairs, specials included) divided
by tokens the encoder processed (padding and empty-slot pairs included).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ..recsys_format import TARGETS
from ..stages.chunks.contract import SpecialTokens

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
    """One encoder call: ``n`` sequences of one length; the first ``n_real`` rows are real."""

    input_ids: torch.Tensor  # (n, L) int64
    attention_mask: torch.Tensor  # (n, L) int64
    token_type_ids: torch.Tensor  # (n, L) int64
    slots: torch.Tensor  # (n_real,) int64: flat index into (B * (1 + H)) of each real row
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

    @property
    def size(self) -> int:
        return self.slot_mask.shape[0]

    def to(self, device: torch.device | str) -> ModelBatch:
        """The same batch on ``device`` (host-to-device copies are asynchronous)."""
        if torch.device(device).type == "cpu":
            return self

        def mv(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=True)

        return replace(
            self,
            groups=[
                EncoderGroup(mv(g.input_ids), mv(g.attention_mask), mv(g.token_type_ids), mv(g.slots), g.n_real)
                for g in self.groups
            ],
            slot_mask=mv(self.slot_mask),
            hist_hour=mv(self.hist_hour),
            features=mv(self.features),
            labels=mv(self.labels),
        )


def bucket_ladder(max_length: int, step: int = BUCKET_STEP) -> np.ndarray:
    """The fixed sequence lengths: multiples of ``step`` up to the longest pair, ``2 * max_length``.

    A pair ``[CLS] cand [SEP] hist [SEP]`` of two tweets truncated to ``max_length - 2`` content
    tokens has at most ``2 * max_length - 1`` tokens, so the top rung always fits.
    """
    top = -(-2 * max_length // step) * step
    return np.arange(step, top + 1, step, dtype=np.int64)


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
    static_shapes: bool = False,
    use_text: bool = True,
    bucket_step: int = BUCKET_STEP,
) -> ModelBatch:
    """Turn examples into a :class:`ModelBatch` (CPU tensors; move with :meth:`ModelBatch.to`).

    ``use_text=False`` (the features-only ablation) builds no encoder input at all.
    """
    b = len(ex)
    h = ex.history_size
    slot_mask = np.concatenate([np.ones((b, 1), dtype=bool), ex.hist_mask], axis=1)
    groups: list[EncoderGroup] = []
    valid_tokens = encoded_tokens = 0
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
            groups.append(_group(ids, attn, ttype, seq_flat, width, len(seq_flat), specials))
            encoded_tokens = len(seq_flat) * width
        else:
            bucket = ladder[np.searchsorted(ladder, length)]
            order = np.lexsort((np.arange(len(length)), bucket))  # by bucket, stable
            for blen in np.unique(bucket):
                sel = order[bucket[order] == blen]
                cap = max(1, token_budget // int(blen))
                for start in range(0, len(sel), cap):
                    part = sel[start : start + cap]
                    rows = cap if static_shapes else len(part)
                    groups.append(_group(ids[part], attn[part], ttype[part], seq_flat[part], int(blen), rows, specials))
                    encoded_tokens += rows * int(blen)
    return ModelBatch(
        groups=groups,
        slot_mask=torch.from_numpy(slot_mask),
        hist_hour=torch.from_numpy(np.ascontiguousarray(ex.hist_hour, dtype=np.int64)),
        features=torch.from_numpy(np.ascontiguousarray(ex.features, dtype=np.float32)),
        labels=torch.from_numpy(np.ascontiguousarray(ex.labels, dtype=np.float32)),
        valid_tokens=valid_tokens,
        encoded_tokens=encoded_tokens,
    )


def _group(
    ids: np.ndarray,
    attn: np.ndarray,
    ttype: np.ndarray,
    flat: np.ndarray,
    length: int,
    rows: int,
    specials: SpecialTokens,
) -> EncoderGroup:
    """An encoder call of ``rows`` rows × ``length`` columns; rows past the real ones are filler
    ``[CLS] [SEP]`` sequences (static shapes) whose outputs the model drops."""
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
    return EncoderGroup(
        input_ids=torch.from_numpy(np.ascontiguousarray(ids)),
        attention_mask=torch.from_numpy(np.ascontiguousarray(attn)),
        token_type_ids=torch.from_numpy(np.ascontiguousarray(ttype)),
        slots=torch.from_numpy(np.ascontiguousarray(flat, dtype=np.int64)),
        n_real=n_real,
    )
