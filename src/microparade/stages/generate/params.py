"""Parameters of the synthetic data's generative model (docs/synthetic-data.md explains each one)."""

from __future__ import annotations

import string

#: Version of the generative model; part of the returned params.
GENERATOR_VERSION = 1

DAY = 86_400
HOUR = 3_600
#: 2021-02-04 00:00 UTC, the first second of the 28-day period.
PERIOD_START = 1_612_396_800
PERIOD_DAYS = 28
TRAIN_DAYS = 21
PERIOD_END = PERIOD_START + PERIOD_DAYS * DAY
#: Account creation dates are uniform over [2008-01-01, 2021-02-01) UTC.
ACCOUNT_CREATION_RANGE = (1_199_145_600, 1_612_137_600)

#: Overall positive rates the per-target intercepts are calibrated to.
TARGET_RATES = {"like": 0.40, "retweet": 0.09, "reply": 0.03, "quote": 0.007}

#: The real English language id of the challenge data.
ENGLISH_LANGUAGE_ID = "488B32D24BD4BB44172EB981C1BCA6FA"
#: Languages (ISO code, UTC offset in hours of their main audience). English takes
#: ``ENGLISH_SHARE`` of users; the other 39 share the rest with Zipf weights ``1 / rank**1.3``.
LANGUAGES: tuple[tuple[str, int], ...] = (
    ("en", -4),
    ("ja", 9),
    ("es", -4),
    ("pt", -3),
    ("tr", 3),
    ("ar", 3),
    ("ko", 9),
    ("fr", 1),
    ("th", 7),
    ("id", 7),
    ("hi", 5),
    ("de", 1),
    ("it", 1),
    ("ru", 3),
    ("tl", 8),
    ("pl", 1),
    ("nl", 1),
    ("fa", 4),
    ("ur", 5),
    ("zh", 8),
    ("ca", 1),
    ("el", 2),
    ("sv", 1),
    ("uk", 2),
    ("vi", 7),
    ("ms", 8),
    ("ta", 5),
    ("cs", 1),
    ("ro", 2),
    ("hu", 1),
    ("fi", 2),
    ("da", 1),
    ("no", 1),
    ("he", 2),
    ("bn", 6),
    ("mr", 5),
    ("te", 5),
    ("gu", 5),
    ("sr", 1),
    ("ne", 6),
)
ENGLISH_SHARE = 0.45
LANGUAGE_ZIPF = 1.3
SECONDARY_LANGUAGE_PROB = 0.3
#: A non-English user's secondary language is English with this probability.
SECONDARY_IS_ENGLISH_PROB = 0.6
#: Share of a bilingual reader's impressions in the primary language.
READ_PRIMARY_PROB = 0.8
#: Share of an author's tweets in the primary language (bilingual authors).
WRITE_PRIMARY_PROB = 0.9

#: Reader activity: Pareto(alpha) weights, capped at ACTIVITY_CAP.
ACTIVITY_PARETO_ALPHA = 1.5
ACTIVITY_CAP = 100.0
#: Author popularity: log-popularity lambda ~ N(0, POPULARITY_SIGMA); authors drawn ∝ exp(lambda).
POPULARITY_SIGMA = 1.5
#: log(followers) = FOLLOWERS_LOG_MEAN + FOLLOWERS_POP_SLOPE * lambda + N(0, FOLLOWERS_LOG_SIGMA).
FOLLOWERS_LOG_MEAN, FOLLOWERS_POP_SLOPE, FOLLOWERS_LOG_SIGMA = 4.6, 1.3, 0.8
#: log(following) = FOLLOWING_LOG_MEAN + FOLLOWING_POP_SLOPE * lambda + N(0, FOLLOWING_LOG_SIGMA).
FOLLOWING_LOG_MEAN, FOLLOWING_POP_SLOPE, FOLLOWING_LOG_SIGMA = 5.3, 0.2, 1.0
MAX_COUNT = 200_000_000
#: P(verified) = sigmoid(VERIFIED_INTERCEPT + VERIFIED_POP_SLOPE * lambda).
VERIFIED_INTERCEPT, VERIFIED_POP_SLOPE = -6.0, 1.2
#: Topic preferences: 1/2/3 dominant topics with these probabilities, chosen ∝ topic popularity
#: (Dirichlet(TOPIC_POPULARITY_CONCENTRATION)); dominant mass DOMINANT_MASS split by Dirichlet(2),
#: the rest spread by Dirichlet(1) over all topics.
DOMINANT_TOPIC_COUNT_PROBS = (0.35, 0.40, 0.25)
TOPIC_POPULARITY_CONCENTRATION = 4.0
DOMINANT_MASS = 0.85
#: Preferred active window: local evening hour ACTIVE_LOCAL_HOUR + N(0, ACTIVE_HOUR_SIGMA), converted
#: to UTC with the primary language's offset; "inside" = circular distance <= ACTIVE_HALF_WIDTH h.
ACTIVE_LOCAL_HOUR, ACTIVE_HOUR_SIGMA, ACTIVE_HALF_WIDTH = 20.0, 3.0, 3
#: Per-user engagement propensity ~ N(0, PROPENSITY_SIGMA); per-row shared noise ~ N(0, 1) * ROW_NOISE.
PROPENSITY_SIGMA = 0.5
ROW_NOISE = 0.5

#: Tweets per split pool = max(MIN_POOL, ceil(POOL_PER_ROW * split rows)); tweets without
#: impressions are dropped. Tweet virality ~ exp(VIRALITY_POP_SLOPE * lambda + N(0, VIRALITY_SIGMA)).
POOL_PER_ROW = 0.5
MIN_POOL = 64
VIRALITY_POP_SLOPE, VIRALITY_SIGMA = 0.3, 1.0
#: Tweet volume per UTC hour slot ∝ 1 + DAILY_AMPLITUDE * cos(2π (local hour - DAILY_PEAK_LOCAL) / 24).
DAILY_AMPLITUDE, DAILY_PEAK_LOCAL = 0.6, 19.0
#: Share of impressions whose topic is drawn from the reader's preference (the rest: any tweet
#: of the reading language, by virality).
TOPICAL_IMPRESSION_PROB = 0.5
#: Placement retries for impressions that hit the reader's own tweet or a (tweet, reader) pair
#: already used: after WHOLE_SPLIT_AFTER attempts any tweet of the split, after UNIFORM_AFTER
#: uniformly instead of by virality, after NEW_READER_AFTER with another reader.
MAX_PLACEMENT_ATTEMPTS, WHOLE_SPLIT_AFTER, UNIFORM_AFTER, NEW_READER_AFTER = 60, 10, 20, 30

#: Content of a tweet.
TWEET_TYPE_PROBS = {"TopLevel": 0.55, "Retweet": 0.25, "Reply": 0.15, "Quote": 0.05}
MEDIA_PROBS = {"": 0.63, "Photo": 0.25, "Video": 0.10, "GIF": 0.02}
PHOTO_COUNT_PROBS = (0.75, 0.10, 0.05, 0.10)  # 1, 2, 3, 4 photos
LINK_COUNT_PROBS = (0.80, 0.18, 0.02)  # 0, 1, 2 links
HASHTAG_COUNT_PROBS = (0.80, 0.12, 0.05, 0.03)  # 0..3 hashtags
REPLY_MENTION_PROBS = (0.15, 0.75, 0.10)  # a reply starts with 0, 1 or 2 @handles
EMOJI_TWEET_PROB, EMOJI_EXTRA_MEAN, EMOJI_MAX = 0.3, 1.0, 6
#: Body words: round(lognormal(BODY_LOG_MEAN, BODY_LOG_SIGMA)) clipped to [1, room left <= 290].
BODY_LOG_MEAN, BODY_LOG_SIGMA = 3.52, 0.6
MAX_TOKENS = 290
#: Body word mix: topic word / common word / word of a random other topic.
TOPIC_WORD_PROB, COMMON_WORD_PROB = 0.60, 0.35
TOPIC_VOCAB_SIZE_RANGE = (60, 200)
MIN_WORD_LEN = 4
WORD_ZIPF = 1.0
LINK_CHARS = string.ascii_letters + string.digits
LINK_SUFFIX_LEN = 10
LINKS_PER_LINK_SLOT = 0.5
LINKS_PER_DOMAIN = 20
DOMAIN_ZIPF = 1.1

#: b_follows_a: P = sigmoid(FOLLOW_INTERCEPT + FOLLOW_POP * pop_z(a) + FOLLOW_SIM * cos(pref_a, pref_b)).
FOLLOW_INTERCEPT, FOLLOW_POP, FOLLOW_SIM = -1.0, 0.4, 2.5

#: Engagement log-odds coefficients per target (order of TARGETS: like, retweet, reply, quote).
ENGAGEMENT_COEFFICIENTS: dict[str, tuple[float, float, float, float]] = {
    "topic_match": (3.0, 3.0, 1.5, 2.0),
    "active_hour": (0.7, 0.6, 0.5, 0.5),
    "daily_cycle": (0.15, 0.15, 0.1, 0.1),
    "b_follows_a": (0.5, 0.4, 0.9, 0.3),
    "author_popularity": (0.1, 0.35, -0.2, 0.1),
    "author_verified": (0.1, 0.2, -0.1, 0.0),
    "reader_activity": (-0.25, -0.1, -0.1, -0.1),
    "type_retweet": (-0.3, 0.2, -0.6, -0.2),
    "type_reply": (-0.2, -0.5, 0.6, -0.5),
    "type_quote": (-0.1, 0.0, 0.0, 0.3),
    "photo": (0.2, 0.15, 0.0, 0.0),
    "video": (0.1, 0.25, -0.1, 0.0),
    "gif": (0.15, 0.0, 0.1, 0.0),
    "link": (-0.2, 0.1, 0.0, 0.1),
}
#: UTC hour at which the global engagement cycle peaks.
ENGAGEMENT_CYCLE_PEAK_UTC = 21.0
#: Engagement delay after the tweet: lognormal with these medians (s) and ENGAGEMENT_DELAY_SIGMA.
ENGAGEMENT_DELAY_MEDIAN_S = {"like": 300.0, "retweet": 600.0, "reply": 1200.0, "quote": 900.0}
ENGAGEMENT_DELAY_SIGMA = 1.6

#: Frequent English words and punctuation: the shared "common word" pool (Zipf by list order).
COMMON_WORDS: tuple[str, ...] = tuple(
    ". , the ! to and a i of you is in it ? that for my on this be me with so just have are not "
    "we your all at was but like what do no can if get they he she out up now one about love "
    "more new good day time people know will how when there go from today see want need think "
    "really back much make great thank thanks here why some our would been only by an or as his "
    "her them then than very too also still never always first last best happy lol yes well "
    "right even us any going because who were did got let way life world year night morning "
    "work home look".split()
)

SPLITS = ("train", "valid", "test")
TWEET_TYPE_NAMES = tuple(TWEET_TYPE_PROBS)
#: Tweets whose token ids are built at once (fixed: the random stream is consumed per block).
CONTENT_BLOCK_TWEETS = 65_536
