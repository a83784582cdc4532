"""The generator's lexicon: topic vocabularies, the common-word pool and special token ids.

Built deterministically (by seed) from whole-word tokens of the tokenizer's vocabulary.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ...assets import load_tokenizer
from ...recsys_format import MBERT_CLS, MBERT_SEP
from .params import COMMON_WORDS, MIN_WORD_LEN, TOPIC_VOCAB_SIZE_RANGE, WORD_ZIPF
from .sampling import AliasTable, stream_rng

if TYPE_CHECKING:  # tokenizers is imported when a lexicon is first built
    from tokenizers import Tokenizer


@dataclass
class Lexicon:
    """Token ids the tweet texts are made of, and the samplers over them."""

    topic_words: np.ndarray  # token ids, topic vocabularies back to back
    topic_offsets: np.ndarray  # (topics + 1,)
    topic_sampler: AliasTable  # Zipf over each topic's words
    common_words: np.ndarray
    common_sampler: AliasTable  # Zipf over the common words
    handle_words: list[str]  # words used to build user handles
    cls: int
    sep: int
    unk: int
    hash_ids: np.ndarray  # "#"
    rt_ids: np.ndarray  # "RT"
    colon_ids: np.ndarray  # ":"
    token_strings: np.ndarray  # str(id) for every id of the vocabulary (object array)


def _build_lexicon(tok: Tokenizer, topics: int, seed: int) -> Lexicon:
    """Deterministic (by seed) topic vocabularies and common-word pool from the tokenizer's vocab."""
    rng = stream_rng(seed, "lexicon")
    vocab = tok.get_vocab()
    unk = tok.token_to_id("[UNK]")
    if unk is None:
        raise ValueError("the tokenizer has no [UNK] token (the generator writes emoji as [UNK])")
    specials = {MBERT_CLS, MBERT_SEP, unk, tok.token_to_id("[PAD]"), tok.token_to_id("[MASK]")}

    common_enc = tok.encode_batch(list(COMMON_WORDS), add_special_tokens=False)
    common_ids = list(dict.fromkeys(e.ids[0] for e in common_enc if len(e.ids) == 1))
    common = np.array(common_ids, dtype=np.int32)

    candidates = sorted(
        (i, w) for w, i in vocab.items() if len(w) >= MIN_WORD_LEN and w.isascii() and w.isalpha() and i not in specials
    )
    encoded = tok.encode_batch([w for _, w in candidates], add_special_tokens=False)
    common_set = set(common_ids)
    words = [(i, w) for (i, w), e in zip(candidates, encoded) if e.ids == [i] and i not in common_set]
    order = rng.permutation(len(words))
    sizes = rng.integers(TOPIC_VOCAB_SIZE_RANGE[0], TOPIC_VOCAB_SIZE_RANGE[1] + 1, size=topics)
    if sizes.sum() > len(words):
        sizes = np.maximum(10, sizes * len(words) // sizes.sum())
        if sizes.sum() > len(words):
            raise ValueError(f"the tokenizer has only {len(words)} whole-word tokens, too few for {topics} topics")
    topic_offsets = np.concatenate([[0], np.cumsum(sizes)])
    chosen = order[: topic_offsets[-1]]
    topic_words = np.array([words[j][0] for j in chosen], dtype=np.int32)
    ranks = np.arange(topic_offsets[-1]) - np.repeat(topic_offsets[:-1], sizes)

    def ids(text: str) -> np.ndarray:
        return np.array(tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    token_strings = np.array([str(i) for i in range(tok.get_vocab_size())], dtype=object)
    return Lexicon(
        topic_words=topic_words,
        topic_offsets=topic_offsets,
        topic_sampler=AliasTable.build(1.0 / (ranks + 1.0) ** WORD_ZIPF, topic_offsets),
        common_words=common,
        common_sampler=AliasTable.build(1.0 / np.arange(1, len(common) + 1) ** WORD_ZIPF, np.array([0, len(common)])),
        handle_words=[w for _, w in words],
        cls=MBERT_CLS,
        sep=MBERT_SEP,
        unk=unk,
        hash_ids=ids("#"),
        rt_ids=ids("RT"),
        colon_ids=ids(":"),
        token_strings=token_strings,
    )


@functools.lru_cache(maxsize=4)
def load_lexicon(tokenizer_dir: str, topics: int, seed: int) -> tuple[Tokenizer, Lexicon]:
    """The tokenizer (a copy without padding/truncation: MiniLM's pads to 128) and its lexicon."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(load_tokenizer(tokenizer_dir).to_str())
    tok.no_padding()
    tok.no_truncation()
    return tok, _build_lexicon(tok, topics, seed)
