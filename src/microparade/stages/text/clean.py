"""Tweet text cleaning: source token ids → cleaned token ids in the encoder's vocabulary.

The challenge's ``text_tokens`` are BERT token ids of the *source* tokenizer (bert-base-multilingual
-cased for the real data, MiniLM for the synthetic data), ``[CLS] … [SEP]``. The encoder
(``model.encoder``) may use another vocabulary. Cleaning, as in the paper:

- ``[CLS]`` / ``[SEP]`` of the source are dropped (the model adds its own);
- every ``t.co`` link, decoded ``https : / / t. co / AbC123``, becomes the text ``[LINK]``, i.e.
  the encoder's ids of ``[LINK]`` (three word pieces for BERT vocabularies: ``[``, ``link``, ``]``);
- the retweet marker ``RT`` is dropped when it opens the tweet and is followed by ``@``;
- every ``@`` mention marker is dropped, the handle's words are KEPT: who is retweeted or replied
  to is content (popular accounts, topics), and dropping the handle would need to know where it
  ends, which word pieces do not say reliably (``@ user _ name 42``).

The result is truncated to ``max_content`` tokens (``text.max_length - 2``: room for the model's
``[CLS]``/``[SEP]``).

Two equivalent paths, chosen by :func:`cleaning_method`:

- ``tokens`` (source and encoder share a vocabulary, e.g. MiniLM → MiniLM): cleaning is done on
  the ids with numpy over the flattened token array (patterns checked at candidate positions,
  word boundaries from ``##`` continuation pieces); no decode/encode, so nothing depends on a
  decode→encode round trip being exact.
- ``text`` (different vocabularies, e.g. mBERT → MiniLM): decode with ``decode_batch``, clean the
  text with regexes in pyarrow compute (RE2, vectorised), encode with ``encode_batch``. Both
  tokenizer calls are batch calls (Rust) on the *distinct words* of the partition rather than on
  every row: WordPiece decoding and BERT pre-tokenisation both work word by word, so this is exact
  (and skips the decoder's English clean-up, which would turn "do not" into "don't"), and with
  Zipf-distributed words it is about ten times faster than whole rows. The only per-item Python
  is the list conversion at the tokenizer boundary, per distinct word.

Tests check that both paths give identical ids on hand-made tweets.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...assets import load_tokenizer, resolve_model_path

LINK_TEXT = "[LINK]"
LINK_PREFIX = "https://t.co/"
#: Engagement-type words of the history prefix, in bit order (like 1, retweet 2, reply 4, quote 8).
PREFIX_WORDS = ("like", "retweet", "reply", "quote")
ENGAGEMENT_BITS = {"like": 1, "retweet": 2, "reply": 4, "quote": 8}
METHODS = ("auto", "tokens", "text")

# RE2 patterns (pyarrow compute), applied to decoded text.
_LINK_RE = r"(?i)https?\s*:\s*/\s*/\s*t\s*\.\s*co\s*/\s*[0-9a-z]*"
_RT_RE = r"(?i)^\s*rt\s+@"

TOKEN_LIST = pa.list_(pa.int32())


def encoder_tokenizer_spec(encoder: str) -> str:
    """The tokenizer an encoder uses: ``minilm`` and ``tiny`` share MiniLM's, else the directory."""
    return "minilm" if encoder in ("minilm", "tiny") else str(resolve_model_path(encoder))


def source_tokenizer_spec(tokenizer: str | None) -> str:
    """Normalised spec of ``data.tokenizer`` (``None`` means MiniLM, the generator's default)."""
    return "minilm" if tokenizer in (None, "minilm") else str(resolve_model_path(tokenizer))


@functools.lru_cache(maxsize=8)
def get_tokenizer(spec: str):
    """A private copy of the cached tokenizer with truncation and padding off.

    :func:`microparade.resources.load_tokenizer` returns a shared object (MiniLM's ships with
    truncation and padding at 128); the copy keeps this module's settings away from other users.
    """
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(load_tokenizer(spec).to_str())
    tok.no_truncation()
    tok.no_padding()
    return tok


def _ids(tok, text: str) -> list[int]:
    return list(tok.encode(text, add_special_tokens=False).ids)


def _special_id(tok, token: str) -> int:
    i = tok.token_to_id(token)
    if i is None:
        raise ValueError(f"tokenizer has no {token} token; a BERT-family WordPiece vocabulary is required")
    return int(i)


@functools.lru_cache(maxsize=8)
def same_vocabulary(a: str, b: str) -> bool:
    """Whether two tokenizer specs map every token string to the same id (same vocab content)."""
    if a == b:
        return True
    return get_tokenizer(a).get_vocab(with_added_tokens=True) == get_tokenizer(b).get_vocab(with_added_tokens=True)


def cleaning_method(source: str, encoder: str) -> str:
    """``tokens`` when the vocabularies are identical, else ``text`` (decode → clean → encode)."""
    return "tokens" if same_vocabulary(source, encoder) else "text"


def special_tokens(encoder: str) -> dict:
    """Ids of the encoder's special tokens and of ``[LINK]`` (for the manifest and the model)."""
    tok = get_tokenizer(encoder)
    return {
        "cls": _special_id(tok, "[CLS]"),
        "sep": _special_id(tok, "[SEP]"),
        "pad": _special_id(tok, "[PAD]"),
        "unk": _special_id(tok, "[UNK]"),
        "link": _ids(tok, LINK_TEXT),
    }


def id_dtype(spec: str) -> str:
    """The narrowest little-endian integer type (``<u2`` or ``<i4``) that holds every id of a tokenizer."""
    return "<u2" if get_tokenizer(spec).get_vocab_size(with_added_tokens=True) <= 1 << 16 else "<i4"


def prefix_table(encoder: str) -> list[list[int]]:
    """Prefix ids per engagement bit mask 0..15: the set types' words in order, then ``:``.

    E.g. mask 3 → the ids of ``"like retweet:"``; mask 0 (no engagement) → ``[]``.
    """
    tok = get_tokenizer(encoder)
    out = []
    for mask in range(16):
        words = [w for w in PREFIX_WORDS if mask & ENGAGEMENT_BITS[w]]
        out.append(_ids(tok, " ".join(words) + ":") if words else [])
    return out


# --------------------------------------------------------------------------------------------
# ragged-array helpers (values + int64 offsets)
# --------------------------------------------------------------------------------------------
def list_parts(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(values int32, offsets int64)`` of a list array; nulls count as empty lists."""
    if isinstance(arr, pa.ChunkedArray):
        arr = pa.concat_arrays(arr.chunks) if arr.num_chunks != 1 else arr.chunk(0)
    if arr.null_count:
        arr = pc.fill_null(arr, pa.scalar([], type=arr.type))
    arr = arr.cast(pa.large_list(pa.int32()))
    offsets = np.asarray(arr.offsets, dtype=np.int64)
    values = np.asarray(arr.values.slice(offsets[0], offsets[-1] - offsets[0]), dtype=np.int32)
    return values, offsets - offsets[0]


def make_list_array(values: np.ndarray, offsets: np.ndarray) -> pa.ListArray:
    """A ``list<int32>`` array from flat values and offsets (32-bit offsets, as in the schemas)."""
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError(f"{offsets[-1]} tokens in one list array exceed 32-bit offsets; use smaller ingest parts")
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values.astype(np.int32, copy=False)))


def truncate_ragged(
    values: np.ndarray, offsets: np.ndarray, max_len: np.ndarray | int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the first ``max_len`` (scalar or per row) items of every row."""
    lengths = np.diff(offsets)
    new_len = np.minimum(lengths, max_len)
    cut = np.flatnonzero(new_len < lengths)  # only these rows lose items
    if len(cut) == 0:
        return values, offsets
    excess = lengths[cut] - new_len[cut]
    first = np.cumsum(excess) - excess
    keep = np.ones(len(values), dtype=bool)
    keep[np.repeat(offsets[cut] + new_len[cut] - first, excess) + np.arange(int(excess.sum()))] = False
    return values[keep], np.concatenate([[0], np.cumsum(new_len)])


def concat_ragged(
    a_values: np.ndarray, a_offsets: np.ndarray, b_values: np.ndarray, b_offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise concatenation ``a[i] + b[i]`` of two ragged arrays with the same row count."""
    la, lb = np.diff(a_offsets), np.diff(b_offsets)
    out_off = np.concatenate([[0], np.cumsum(la + lb)])
    out = np.empty(int(out_off[-1]), dtype=np.int32)
    ra = np.repeat(np.arange(len(la)), la)
    out[out_off[ra] + (np.arange(len(a_values)) - a_offsets[ra])] = a_values
    rb = np.repeat(np.arange(len(lb)), lb)
    out[out_off[rb] + la[rb] + (np.arange(len(b_values)) - b_offsets[rb])] = b_values
    return out, out_off


def take_ragged(values: np.ndarray, offsets: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``idx`` (in that order, repeats allowed) of a ragged array."""
    lengths = np.diff(offsets)[idx]
    out_off = np.concatenate([[0], np.cumsum(lengths)])
    src = np.repeat(offsets[idx] - out_off[:-1], lengths) + np.arange(int(out_off[-1]))
    return values[src], out_off


def binary_to_ragged(arr: pa.Array, dtype: str = "<i4") -> tuple[np.ndarray, np.ndarray]:
    """Integer lists held as bytes of ``dtype`` (one ``binary`` value per row) → ``(values int32, offsets)``.

    With the default ``dtype`` ``values`` is a read-only view of the array's data buffer (no copy)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = pa.concat_arrays(arr.chunks) if arr.num_chunks else pa.array([], pa.binary())
    if len(arr) == 0:
        return np.empty(0, np.int32), np.zeros(1, np.int64)
    if not (pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)):
        arr = arr.cast(pa.binary())
    wide = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
    offsets = np.frombuffer(arr.buffers()[1], dtype=wide)[arr.offset : arr.offset + len(arr) + 1].astype(np.int64)
    data = arr.buffers()[2]
    raw = np.frombuffer(data, dtype=np.uint8)[offsets[0] : offsets[-1]] if data is not None else np.empty(0, np.uint8)
    width = np.dtype(dtype).itemsize
    return raw.view(dtype).astype(np.int32, copy=False), (offsets - offsets[0]) // width


def ragged_to_binary(values: np.ndarray, offsets: np.ndarray, dtype: str = "<i4") -> pa.Array:
    """``(values, offsets)`` → one ``binary`` value per row holding its ids as ``dtype`` (default:
    little-endian int32; the values must fit it)."""
    data = pa.py_buffer(np.ascontiguousarray(values, dtype=dtype))
    byte_offsets = np.asarray(offsets, dtype=np.int64) * np.dtype(dtype).itemsize
    if byte_offsets[-1] <= np.iinfo(np.int32).max:
        small = pa.py_buffer(byte_offsets.astype(np.int32))
        return pa.Array.from_buffers(pa.binary(), len(offsets) - 1, [None, small, data])
    large = pa.Array.from_buffers(pa.large_binary(), len(offsets) - 1, [None, pa.py_buffer(byte_offsets), data])
    return large.cast(pa.binary())


# --------------------------------------------------------------------------------------------
# cleaning
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _TokenRules:
    """Ids the token-level path needs, all in the (shared) vocabulary."""

    drop_always: np.ndarray  # source [CLS], [SEP]
    rt: int | None
    at: int | None
    link_pattern: np.ndarray  # ids of "https://t.co/"
    link_ids: np.ndarray  # ids of "[LINK]"
    is_continuation: np.ndarray = field(repr=False)  # bool per vocab id: "##" piece


@functools.lru_cache(maxsize=8)
def _continuation_mask(spec: str) -> np.ndarray:
    """Per vocabulary id: whether the token is a ``##`` continuation piece."""
    vocab = get_tokenizer(spec).get_vocab(with_added_tokens=True)
    cont = np.zeros(max(vocab.values()) + 1, dtype=bool)
    cont[[i for t, i in vocab.items() if t.startswith("##")]] = True
    return cont


@functools.lru_cache(maxsize=8)
def _token_rules(source: str, encoder: str) -> _TokenRules:
    src, enc = get_tokenizer(source), get_tokenizer(encoder)
    rt, at = _ids(src, "RT"), _ids(src, "@")
    return _TokenRules(
        drop_always=np.array([_special_id(src, "[CLS]"), _special_id(src, "[SEP]")], dtype=np.int32),
        rt=rt[0] if len(rt) == 1 else None,
        at=at[0] if len(at) == 1 else None,
        link_pattern=np.array(_ids(src, LINK_PREFIX), dtype=np.int32),
        link_ids=np.array(_ids(enc, LINK_TEXT), dtype=np.int32),
        is_continuation=_continuation_mask(source),
    )


def _clean_tokens(values: np.ndarray, offsets: np.ndarray, rules: _TokenRules) -> tuple[np.ndarray, np.ndarray]:
    """Token-level cleaning over the flattened ids (no per-row loop).

    Full-array passes are few (drop masks and the final gathers, no cumulative sums over all tokens);
    patterns are checked only at candidate positions (row starts for ``RT``, ``https`` pieces for
    links), and counts at row starts come from binary searches over the few dropped positions.
    """
    keep = np.ones(len(values), dtype=bool)
    for special in rules.drop_always:
        keep &= values != special
    starts = offsets - np.searchsorted(np.flatnonzero(~keep), offsets)  # row offsets after dropping [CLS]/[SEP]
    values = values[keep]
    n = len(values)
    drop = np.zeros(n, dtype=bool)

    if rules.rt is not None and rules.at is not None:
        first = starts[:-1][np.diff(starts) >= 2]
        drop[first[(values[first] == rules.rt) & (values[first + 1] == rules.at)]] = True

    # Links: the pattern, then the link's id word (a first piece and its "##" continuations).
    pat = rules.link_pattern
    m = len(pat)
    link_start = np.nonzero(values == pat[0])[0]
    row_end = starts[np.searchsorted(starts, link_start, "right")]
    fits = link_start + m <= row_end
    link_start, row_end = link_start[fits], row_end[fits]
    for k in range(1, m):
        hit = values[link_start + k] == pat[k]
        link_start, row_end = link_start[hit], row_end[hit]
    if len(link_start):
        q = link_start + m  # first piece of the link id, if inside the row
        span_end = np.where(q < row_end, np.minimum(_word_end(values, q, rules.is_continuation), row_end), q)
        lengths = span_end - link_start
        first = np.cumsum(lengths) - lengths
        drop[np.repeat(link_start - first, lengths) + np.arange(int(lengths.sum()))] = True
    if rules.at is not None:
        drop |= values == rules.at

    # Emit: dropped → 0 items, kept → 1, link start → the [LINK] ids.
    emit = ~drop
    emit[link_start] = True
    emitted = np.flatnonzero(emit)
    extra = len(rules.link_ids) - 1  # items a link adds beyond its one slot
    out_starts = np.searchsorted(emitted, starts) + extra * np.searchsorted(link_start, starts)
    out = values[emitted]
    if len(link_start):
        slot = np.searchsorted(emitted, link_start)
        count = np.ones(len(out), dtype=np.int32)
        count[slot] = len(rules.link_ids)
        out = np.repeat(out, count)
        at = slot + extra * np.arange(len(slot))
        for k, tid in enumerate(rules.link_ids):
            out[at + k] = tid
    return out, out_starts


def _word_end(values: np.ndarray, q: np.ndarray, is_continuation: np.ndarray) -> np.ndarray:
    """For each position ``q``: the first position after it that starts a word (not a ``##`` piece), or the end."""
    n = len(values)
    end = q + 1
    active = np.nonzero(end < n)[0]
    while len(active):
        active = active[is_continuation[values[end[active]]]]
        end[active] += 1
        active = active[end[active] < n]
    return np.minimum(end, n)


def _encode_batch(tok, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``encode_batch`` without special tokens → ``(values, offsets)``."""
    encoded = tok.encode_batch(texts, add_special_tokens=False)
    lengths = np.fromiter((len(e.ids) for e in encoded), dtype=np.int64, count=len(encoded))
    out = np.fromiter(itertools.chain.from_iterable(e.ids for e in encoded), dtype=np.int32, count=int(lengths.sum()))
    return out, np.concatenate([[0], np.cumsum(lengths)])


def _encode_texts(tok, texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Encode every text; for BERT pre-tokenisation, each distinct space-separated word only once.

    A BERT tokenizer's output is the concatenation of its outputs for the space-separated pieces
    of the text (the normaliser works per character and the pre-tokenizer always splits at
    spaces), so encoding the distinct words (Zipf-distributed: far fewer than the words) and
    gathering is exact and several times faster. Other pre-tokenizers get whole texts.
    """
    if type(tok.pre_tokenizer).__name__ != "BertPreTokenizer":
        return _encode_batch(tok, texts.to_pylist())
    words = pc.split_pattern(texts, " ")
    word_offsets = np.asarray(words.offsets, dtype=np.int64)
    codes = pc.dictionary_encode(words.flatten())
    uniq_values, uniq_offsets = _encode_batch(tok, codes.dictionary.to_pylist())
    values, offsets = take_ragged(uniq_values, uniq_offsets, np.asarray(codes.indices, dtype=np.int64))
    return values, offsets[word_offsets - word_offsets[0]]


def _decode_texts(tok, values: np.ndarray, offsets: np.ndarray, is_continuation: np.ndarray) -> pa.Array:
    """Decoded text of every row, ``decode_batch`` called once per distinct word.

    A word is a first piece and its ``##`` continuations; WordPiece decoding joins words with
    spaces, so decoding the distinct words and joining them per row gives the decoder's text
    without its English clean-up heuristics (which would e.g. turn "do not" into "don't"); those
    only move spaces around punctuation otherwise, which BERT pre-tokenisation ignores.
    """
    word_start = ~is_continuation[values]
    word_start[offsets[:-1][np.diff(offsets) > 0]] = True  # words never span rows
    words_before = np.concatenate([[0], np.cumsum(word_start)])
    word_offsets = np.append(np.nonzero(word_start)[0], len(values))
    codes = pc.dictionary_encode(ragged_to_binary(values, word_offsets))
    distinct = make_list_array(*binary_to_ragged(codes.dictionary)).to_pylist()
    texts = pa.array(tok.decode_batch(distinct, skip_special_tokens=False), type=pa.string())
    per_row = pa.ListArray.from_arrays(pa.array(words_before[offsets], pa.int32()), texts.take(codes.indices))
    return pc.binary_join(per_row, " ")


def _clean_text(values: np.ndarray, offsets: np.ndarray, source: str, encoder: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode with the source tokenizer, clean the text, encode with the encoder's tokenizer."""
    src, enc = get_tokenizer(source), get_tokenizer(encoder)
    texts = _decode_texts(src, values, offsets, _continuation_mask(source))
    specials = "|".join(t.replace("[", r"\[").replace("]", r"\]") for t in ("[CLS]", "[SEP]", "[PAD]"))
    texts = pc.replace_substring_regex(texts, specials, " ")
    texts = pc.replace_substring_regex(texts, _LINK_RE, f" {LINK_TEXT} ")
    texts = pc.replace_substring_regex(texts, _RT_RE, "@")
    texts = pc.replace_substring(texts, "@", " ")
    return _encode_texts(enc, texts)


def clean_token_lists(
    tokens: pa.Array, source: str, encoder: str, max_content: int, method: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Clean a ``list<int>`` array of source token ids; returns encoder ids as ``(values, offsets)``.

    ``source``/``encoder`` are tokenizer specs (:func:`source_tokenizer_spec`,
    :func:`encoder_tokenizer_spec`); ``method`` forces a path (``tokens`` needs identical
    vocabularies). Each row is truncated to ``max_content`` tokens.
    """
    if method not in METHODS:
        raise ValueError(f"cleaning method must be one of {METHODS}, got {method!r}")
    if method == "auto":
        method = cleaning_method(source, encoder)
    if method == "tokens" and not same_vocabulary(source, encoder):
        raise ValueError(f"token-level cleaning needs one vocabulary, but {source!r} and {encoder!r} differ")
    values, offsets = list_parts(tokens)
    vocab_size = len(_continuation_mask(source))
    if len(values) and (values.min() < 0 or values.max() >= vocab_size):
        bad = values[(values < 0) | (values >= vocab_size)][0]
        raise ValueError(f"token id {bad} is not in the source vocabulary {source!r} (is data.tokenizer right?)")
    if method == "tokens":
        values, offsets = _clean_tokens(values, offsets, _token_rules(source, encoder))
    else:
        values, offsets = _clean_text(values, offsets, source, encoder)
    return truncate_ragged(values, offsets, max_content)
