"""The Twitter RecSys Challenge 2021 raw format and microparade's column naming.

Raw files: one engagement per line, fields separated by ``\\x01``, list fields tab-separated inside
a field, no header. Training/validation files have 24 fields; test files lack the 4 label fields.
Naming: ``a_*`` = the tweet's author (engaged_with_user), ``b_*`` = the engaging user (the reader).
See docs/data-format.md.
"""

from __future__ import annotations

FIELD_SEP = "\x01"
LIST_SEP = "\t"

#: Raw field names in file order (REFERENCE §1).
RAW_FIELDS: tuple[str, ...] = (
    "text_tokens",
    "hashtags",
    "tweet_id",
    "present_media",
    "present_links",
    "present_domains",
    "tweet_type",
    "language",
    "tweet_timestamp",
    "engaged_with_user_id",
    "engaged_with_user_follower_count",
    "engaged_with_user_following_count",
    "engaged_with_user_is_verified",
    "engaged_with_user_account_creation",
    "engaging_user_id",
    "engaging_user_follower_count",
    "engaging_user_following_count",
    "engaging_user_is_verified",
    "engaging_user_account_creation",
    "engagee_follows_engager",
    "reply_timestamp",
    "retweet_timestamp",
    "retweet_with_comment_timestamp",
    "like_timestamp",
)

#: microparade column names, same order as RAW_FIELDS.
COLUMNS: tuple[str, ...] = (
    "text_tokens",
    "hashtags",
    "tweet_id",
    "present_media",
    "present_links",
    "present_domains",
    "tweet_type",
    "language",
    "tweet_timestamp",
    "a_user_id",
    "a_follower_count",
    "a_following_count",
    "a_is_verified",
    "a_account_creation",
    "b_user_id",
    "b_follower_count",
    "b_following_count",
    "b_is_verified",
    "b_account_creation",
    "b_follows_a",
    "reply_timestamp",
    "retweet_timestamp",
    "quote_timestamp",
    "like_timestamp",
)

N_FIELDS_LABELED = 24
N_FIELDS_TEST = 20

#: The four engagements, in the order used for labels, logits and metrics everywhere.
TARGETS: tuple[str, ...] = ("like", "retweet", "reply", "quote")
#: Label timestamp column of each target.
TARGET_TIMESTAMP = {
    "like": "like_timestamp",
    "retweet": "retweet_timestamp",
    "reply": "reply_timestamp",
    "quote": "quote_timestamp",
}
LABEL_COLUMNS: tuple[str, ...] = COLUMNS[N_FIELDS_TEST:]

#: Column kinds, for parsing and validation.
LIST_TOKEN_COLUMNS = ("text_tokens",)  # tab-separated non-negative ints
LIST_HEX_COLUMNS = ("hashtags", "present_links", "present_domains")  # tab-separated 32-hex ids
LIST_MEDIA_COLUMNS = ("present_media",)  # tab-separated Photo / Video / GIF
HEX_COLUMNS = ("tweet_id", "language", "a_user_id", "b_user_id")  # one 32-hex id
INT_COLUMNS = (
    "tweet_timestamp",
    "a_follower_count",
    "a_following_count",
    "a_account_creation",
    "b_follower_count",
    "b_following_count",
    "b_account_creation",
)
BOOL_COLUMNS = ("a_is_verified", "b_is_verified", "b_follows_a")
OPTIONAL_INT_COLUMNS = LABEL_COLUMNS  # empty = no engagement

TWEET_TYPES = ("TopLevel", "Retweet", "Quote", "Reply")
MEDIA_TYPES = ("Photo", "Video", "GIF")
HEX_ID_LEN = 32

#: mBERT / BERT special token ids (bert-base-multilingual-cased).
MBERT_CLS = 101
MBERT_SEP = 102
