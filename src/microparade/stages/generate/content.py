"""Tweet content: type, media, mentions, links, hashtags and body words, as the first 9 raw fields.

A tweet's text is its token ids in text order: ``[CLS]``, ``RT @author :`` (retweets), ``@handles``
(replies), body words, emoji (``[UNK]``), ``#hashtag`` words, ``https://t.co/...`` links, ``[SEP]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ...recsys_format import FIELD_SEP, LIST_SEP
from .impressions import Tweets
from .lexicon import Lexicon
from .params import (
    BODY_LOG_MEAN,
    BODY_LOG_SIGMA,
    COMMON_WORD_PROB,
    CONTENT_BLOCK_TWEETS,
    DOMAIN_ZIPF,
    EMOJI_EXTRA_MEAN,
    EMOJI_MAX,
    EMOJI_TWEET_PROB,
    HASHTAG_COUNT_PROBS,
    LINK_CHARS,
    LINK_COUNT_PROBS,
    LINK_SUFFIX_LEN,
    LINKS_PER_DOMAIN,
    LINKS_PER_LINK_SLOT,
    MAX_TOKENS,
    MEDIA_PROBS,
    PHOTO_COUNT_PROBS,
    REPLY_MENTION_PROBS,
    TOPIC_WORD_PROB,
    TWEET_TYPE_NAMES,
    TWEET_TYPE_PROBS,
)
from .population import Population, draw_popular, language_ids
from .ragged import Piece, assemble, join_ragged, slot_piece
from .sampling import draw_categorical, hex_ids

if TYPE_CHECKING:  # tokenizers is imported when a lexicon is first built
    from tokenizers import Tokenizer


@dataclass
class Content:
    """What later steps need of every tweet's content, and its rendered fields."""

    tweet_type: np.ndarray  # index into TWEET_TYPE_NAMES
    media: np.ndarray  # index into MEDIA_PROBS keys ("" = none)
    n_links: np.ndarray
    fields: list[str]  # first 9 raw fields of each tweet, pre-joined with FIELD_SEP


def _handles(pop: Population, users: np.ndarray, words: list[str]) -> list[str]:
    """Deterministic handle strings (``@name``) of ``users``: one or two words, maybe '_' and digits."""
    hs = pop.handle_seed[users]
    out = []
    for a, b, c, d in hs.tolist():
        name = words[a % len(words)].capitalize() if c % 2 else words[a % len(words)]
        if b % 5 < 2:
            name += ("_" if c % 5 == 0 else "") + words[b % len(words)]
        if d % 2:
            name += str(d % 10_000)
        out.append("@" + name)
    return out


def _encode_ragged(tok: Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of ``texts`` (no special tokens) as a ragged array ``(values, offsets)``."""
    encoded = tok.encode_batch(texts, add_special_tokens=False)
    lengths = np.array([len(e.ids) for e in encoded], dtype=np.int64)
    values = np.fromiter((i for e in encoded for i in e.ids), dtype=np.int32, count=int(lengths.sum()))
    return values, np.concatenate([[0], np.cumsum(lengths)])


def _body_tokens(topic: np.ndarray, n_words: np.ndarray, lex: Lexicon, rng: np.random.Generator) -> np.ndarray:
    """Body words of consecutive tweets (``n_words`` each), concatenated.

    Each word is a word of the tweet's topic (Zipf within the topic) with probability
    TOPIC_WORD_PROB, a common word (Zipf) with COMMON_WORD_PROB, else a word of a random topic.
    """
    word_topic = np.repeat(topic, n_words)
    kind = rng.random(len(word_topic))
    is_common = (kind >= TOPIC_WORD_PROB) & (kind < TOPIC_WORD_PROB + COMMON_WORD_PROB)
    is_noise = kind >= TOPIC_WORD_PROB + COMMON_WORD_PROB
    word_topic[is_noise] = rng.integers(0, len(lex.topic_offsets) - 1, int(is_noise.sum()))
    u = rng.random(len(word_topic))
    tokens = np.empty(len(word_topic), dtype=np.int32)
    tokens[is_common] = lex.common_words[
        lex.common_sampler.draw(np.zeros(int(is_common.sum()), dtype=np.int64), u[is_common])
    ]
    tokens[~is_common] = lex.topic_words[lex.topic_sampler.draw(word_topic[~is_common], u[~is_common])]
    return tokens


@dataclass
class _Shape:
    """Drawn per-tweet structure: type, media and how many of each text piece."""

    tweet_type: np.ndarray  # index into TWEET_TYPE_NAMES
    media: np.ndarray  # index into MEDIA_PROBS keys
    n_photos: np.ndarray  # photos of Photo tweets (0 otherwise)
    n_links: np.ndarray
    n_tags: np.ndarray
    n_mentions: np.ndarray  # leading @handles of replies
    n_emoji: np.ndarray

    @property
    def is_retweet(self) -> np.ndarray:
        """Whether each tweet is a retweet."""
        return self.tweet_type == TWEET_TYPE_NAMES.index("Retweet")


def _draw_shape(m: int, rng: np.random.Generator) -> _Shape:
    """Type, media and piece counts of ``m`` tweets."""
    ttype = draw_categorical(rng, list(TWEET_TYPE_PROBS.values()), m)
    media = draw_categorical(rng, list(MEDIA_PROBS.values()), m)
    n_photos = np.where(media == list(MEDIA_PROBS).index("Photo"), draw_categorical(rng, PHOTO_COUNT_PROBS, m) + 1, 0)
    n_links = draw_categorical(rng, LINK_COUNT_PROBS, m)
    n_tags = draw_categorical(rng, HASHTAG_COUNT_PROBS, m)
    is_reply = ttype == TWEET_TYPE_NAMES.index("Reply")
    n_mentions = np.where(is_reply, draw_categorical(rng, REPLY_MENTION_PROBS, m), 0)
    n_emoji = np.where(rng.random(m) < EMOJI_TWEET_PROB, np.minimum(1 + rng.poisson(EMOJI_EXTRA_MEAN, m), EMOJI_MAX), 0)
    return _Shape(ttype, media, n_photos, n_links, n_tags, n_mentions, n_emoji)


@dataclass
class _Handles:
    """Three mentionable users per tweet (popular users other than the author) and their handles' tokens."""

    row: np.ndarray  # (tweets, 3) row of the ragged token array; column 0 is a retweet's author
    tokens: np.ndarray
    offsets: np.ndarray


def _draw_handles(tweets: Tweets, pop: Population, lex: Lexicon, tok: Tokenizer, rng: np.random.Generator) -> _Handles:
    """The users each tweet may mention (the retweeted author, reply targets), tokenised."""
    m = len(tweets.author)
    mentioned = draw_popular(pop, 3 * m, rng).reshape(m, 3)
    mentioned = np.where(mentioned == tweets.author[:, None], (mentioned + 1) % pop.size, mentioned)
    users, row = np.unique(mentioned, return_inverse=True)
    tokens, offsets = _encode_ragged(tok, _handles(pop, users, lex.handle_words))
    return _Handles(row=row.reshape(m, 3), tokens=tokens, offsets=offsets)


@dataclass
class _Links:
    """A pool of t.co links with a domain each, and the pool link in every link slot of the tweets."""

    tokens: np.ndarray  # ragged token ids of each pool link's text
    offsets: np.ndarray
    link_ids: np.ndarray  # hex id of each pool link
    domain_ids: np.ndarray  # hex id of each domain
    link_domain: np.ndarray  # pool link -> domain
    slot_tweet: np.ndarray  # slot -> tweet (sorted)
    slot_link: np.ndarray  # slot -> pool link


def _draw_links(n_links: np.ndarray, tok: Tokenizer, rng: np.random.Generator) -> _Links:
    """The link pool (domains Zipf-distributed) and each tweet's ``n_links`` links, drawn uniformly from it."""
    n_link_slots = int(n_links.sum())
    n_pool_links = max(64, math.ceil(LINKS_PER_LINK_SLOT * n_link_slots))
    n_domains = max(16, n_pool_links // LINKS_PER_DOMAIN)
    chars = np.array(list(LINK_CHARS))[rng.integers(0, len(LINK_CHARS), (n_pool_links, LINK_SUFFIX_LEN))]
    tokens, offsets = _encode_ragged(tok, ["https://t.co/" + "".join(row) for row in chars.tolist()])
    link_ids = hex_ids(rng, n_pool_links)
    domain_ids = hex_ids(rng, n_domains)
    link_domain = draw_categorical(rng, 1.0 / np.arange(1, n_domains + 1) ** DOMAIN_ZIPF, n_pool_links)
    slot_tweet = np.repeat(np.arange(len(n_links)), n_links)
    slot_link = rng.integers(0, n_pool_links, n_link_slots)
    return _Links(tokens, offsets, link_ids, domain_ids, link_domain, slot_tweet, slot_link)


def _draw_hashtags(
    topic: np.ndarray, n_tags: np.ndarray, lex: Lexicon, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Hashtag words of every tweet and the hashtag ids: ``(tag_word, hashtag_ids)``.

    ``tag_word`` holds each tweet's ``n_tags`` words of its topic, back to back, as flat indices
    into ``lex.topic_words``; ``hashtag_ids`` has one hex id per topic word.
    """
    tag_tweet = np.repeat(np.arange(len(n_tags)), n_tags)
    tag_word = lex.topic_sampler.draw(topic[tag_tweet], rng.random(len(tag_tweet)))
    return tag_word, hex_ids(rng, len(lex.topic_words))


def _const_piece(count: np.ndarray, ids: np.ndarray) -> Piece:
    """A piece repeating the token ids ``ids`` ``count[i]`` times in item ``i``."""
    return np.tile(ids, int(count.sum())), count * len(ids)


def _text_pieces(
    shape: _Shape, handles: _Handles, links: _Links, tag_word: np.ndarray, lex: Lexicon
) -> tuple[list[Piece], list[Piece]]:
    """The token pieces before and after the body, in text order."""
    m = len(shape.tweet_type)
    every = np.arange(m)
    is_retweet = shape.is_retweet
    ones, retweets = np.ones(m, dtype=np.int64), is_retweet.astype(np.int64)
    mention_mask = np.arange(2)[None, :] < shape.n_mentions[:, None]
    tag_vals = np.concatenate([np.tile(lex.hash_ids, (len(tag_word), 1)), lex.topic_words[tag_word][:, None]], axis=1)
    before = [
        _const_piece(ones, np.array([lex.cls], dtype=np.int32)),
        _const_piece(retweets, lex.rt_ids),
        slot_piece(every[is_retweet], handles.row[is_retweet, 0], handles.tokens, handles.offsets, m),
        _const_piece(retweets, lex.colon_ids),
        slot_piece(np.nonzero(mention_mask)[0], handles.row[:, 1:][mention_mask], handles.tokens, handles.offsets, m),
    ]
    after = [
        (np.full(int(shape.n_emoji.sum()), lex.unk, dtype=np.int32), shape.n_emoji),
        (tag_vals.ravel(), shape.n_tags * (len(lex.hash_ids) + 1)),
        slot_piece(links.slot_tweet, links.slot_link, links.tokens, links.offsets, m),
        _const_piece(ones, np.array([lex.sep], dtype=np.int32)),
    ]
    return before, after


def _token_texts(
    topic: np.ndarray,
    before: list[Piece],
    after: list[Piece],
    n_words: np.ndarray,
    lex: Lexicon,
    rng: np.random.Generator,
) -> list[str]:
    """The text_tokens field of every tweet: pieces, then body words, then pieces.

    Built and rendered in blocks of CONTENT_BLOCK_TWEETS tweets to bound memory.
    """
    m = len(topic)
    starts = [np.concatenate([[0], np.cumsum(lens)]) for _, lens in before + after]
    text: list[str] = []
    for a in range(0, m, CONTENT_BLOCK_TWEETS):
        b = min(m, a + CONTENT_BLOCK_TWEETS)
        block = [(vals[st[a] : st[b]], lens[a:b]) for (vals, lens), st in zip(before + after, starts)]
        body = (_body_tokens(topic[a:b], n_words[a:b], lex, rng), n_words[a:b])
        tokens, offsets = assemble(block[: len(before)] + [body] + block[len(before) :])
        text.extend(join_ragged(lex.token_strings, tokens, offsets, LIST_SEP))
    return text


def _render_fields(
    tweets: Tweets,
    shape: _Shape,
    text: list[str],
    hashtags: tuple[np.ndarray, np.ndarray],
    links: _Links,
    rng: np.random.Generator,
) -> list[str]:
    """The first 9 raw fields of every tweet joined with FIELD_SEP (tweet ids are drawn here)."""
    tag_word, hashtag_ids = hashtags
    hashtag_field = join_ragged(hashtag_ids, tag_word, np.concatenate([[0], np.cumsum(shape.n_tags)]), LIST_SEP)
    link_field_off = np.concatenate([[0], np.cumsum(shape.n_links)])
    link_field = join_ragged(links.link_ids, links.slot_link, link_field_off, LIST_SEP)
    domain_field = join_ragged(links.domain_ids, links.link_domain[links.slot_link], link_field_off, LIST_SEP)
    media_names = list(MEDIA_PROBS)  # "" = no media
    media_field = [
        LIST_SEP.join(["Photo"] * k) if k else media_names[j]
        for j, k in zip(shape.media.tolist(), shape.n_photos.tolist())
    ]
    tweet_ids = hex_ids(rng, len(tweets.author))
    languages = np.array(language_ids(), dtype=object)[tweets.language].tolist()
    return [
        FIELD_SEP.join(f)
        for f in zip(
            text,
            hashtag_field,
            tweet_ids.tolist(),
            media_field,
            link_field,
            domain_field,
            np.array(TWEET_TYPE_NAMES, dtype=object)[shape.tweet_type].tolist(),
            languages,
            map(str, tweets.timestamp.tolist()),
        )
    ]


def make_content(tweets: Tweets, pop: Population, lex: Lexicon, tok: Tokenizer, rng: np.random.Generator) -> Content:
    """Type, media, links, hashtags and token ids of every tweet, rendered to the first 9 fields.

    The steps draw from ``rng`` in this order; changing the order changes the generated data.
    """
    m = len(tweets.author)
    shape = _draw_shape(m, rng)
    handles = _draw_handles(tweets, pop, lex, tok, rng)
    links = _draw_links(shape.n_links, tok, rng)
    hashtags = _draw_hashtags(tweets.topic, shape.n_tags, lex, rng)
    before, after = _text_pieces(shape, handles, links, hashtags[0], lex)
    room = np.maximum(1, MAX_TOKENS - sum(lens for _, lens in before + after))
    n_words = np.clip(np.rint(rng.lognormal(BODY_LOG_MEAN, BODY_LOG_SIGMA, m)), 1, room).astype(np.int64)
    text = _token_texts(tweets.topic, before, after, n_words, lex, rng)
    fields = _render_fields(tweets, shape, text, hashtags, links, rng)
    return Content(tweet_type=shape.tweet_type, media=shape.media, n_links=shape.n_links, fields=fields)
