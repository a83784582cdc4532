"""History window selection: hand-computed windows, invariants, vectorised == Python reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from microparade.stages.text.windows import select_windows, select_windows_python

IMPLS = [select_windows, select_windows_python]

# A hand-built log. `ts` is the tweet timestamp (the target's time); `eng` the engagement time
# (earliest label timestamp) or None when the row has no engagement. Every row is a target.
#   user A: ties at time 20 (rows 2, 4: same split, row_id order) and 30 (rows 5, 6: split 0 before 1),
#           tweet t2 engaged twice (rows 2, 5) and a non-engaged target on t2 (row 9),
#           row 8 is a tweet of time 12 engaged at 40, after later targets' timestamps;
#   user B: an engagement at exactly a target's timestamp (row 12 at 110 vs row 13 at 110),
#           and row 11 shares tweet t1 with user A (other users' tweets never matter);
#   user C: no engagements at all.
LOG = [
    # row_id, split, user, tweet, ts, eng
    (1, 0, "A", "t1", 5, 10),
    (2, 0, "A", "t2", 8, 20),
    (3, 0, "A", "t3", 15, None),
    (4, 0, "A", "t4", 18, 20),
    (5, 0, "A", "t2", 25, 30),
    (6, 1, "A", "t5", 28, 30),
    (7, 1, "A", "t6", 35, None),
    (8, 0, "A", "t7", 12, 40),
    (9, 1, "A", "t2", 45, None),
    (10, 0, "B", "t8", 100, 105),
    (11, 0, "B", "t1", 100, None),
    (12, 1, "B", "t10", 110, 110),
    (13, 1, "B", "t11", 110, None),
    (14, 0, "C", "t12", 50, None),
    (15, 1, "C", "t1", 60, None),
]
# User A's engagements in (time, split, row_id) order: 1@10, 2@20, 4@20, 5@30, 6@30, 8@40.
# User B's: 10@105, 12@110.

EXPECTED = {
    ("past", 2): {
        1: [],
        2: [],
        3: [1],
        4: [1],
        5: [1, 4],
        6: [2, 4],
        7: [5, 6],
        8: [1],
        9: [6, 8],
        10: [],
        11: [],
        12: [10],
        13: [10],
        14: [],
        15: [],
    },
    ("past", 3): {
        1: [],
        2: [],
        3: [1],
        4: [1],
        5: [1, 4],
        6: [1, 2, 4],
        7: [4, 5, 6],
        8: [1],
        9: [4, 6, 8],
        10: [],
        11: [],
        12: [10],
        13: [10],
        14: [],
        15: [],
    },
    ("centered", 2): {
        1: [2, 4],
        2: [1, 4],
        3: [1, 2],
        4: [2, 5],
        5: [4, 6],
        6: [5, 8],
        7: [6, 8],
        8: [5, 6],
        9: [6, 8],
        10: [12],
        11: [10, 12],
        12: [10],
        13: [10, 12],
        14: [],
        15: [],
    },
    ("centered", 3): {
        1: [2, 4, 5],
        2: [1, 4, 6],
        3: [1, 2, 4],
        4: [2, 5, 6],
        5: [4, 6, 8],
        6: [4, 5, 8],
        7: [5, 6, 8],
        8: [4, 5, 6],
        9: [4, 6, 8],
        10: [12],
        11: [10, 12],
        12: [10],
        13: [10, 12],
        14: [],
        15: [],
    },
}


def frames(log) -> tuple[pd.DataFrame, pd.DataFrame]:
    df = pd.DataFrame(log, columns=["row_id", "split", "user", "tweet", "ts", "eng"])
    targets = df.rename(columns={"ts": "time"})[["user", "time", "tweet", "split", "row_id"]]
    e = df[df["eng"].notna()]
    eng = pd.DataFrame(
        {
            "user": e["user"],
            "time": e["eng"].astype(np.int64),
            "tweet": e["tweet"],
            "split": e["split"],
            "row_id": e["row_id"],
        }
    ).reset_index(drop=True)
    return eng, targets.reset_index(drop=True)


def as_row_ids(win: np.ndarray, eng: pd.DataFrame, targets: pd.DataFrame) -> dict[int, list[int]]:
    rid = eng["row_id"].to_numpy()
    out = {}
    for t, row in zip(targets["row_id"].tolist(), win):
        valid = row[row >= 0]
        assert np.all(row[len(valid) :] == -1), "padding must come after the valid slots"
        out[t] = rid[valid].tolist()
    return out


@pytest.mark.parametrize("impl", IMPLS, ids=["vectorised", "python"])
@pytest.mark.parametrize("window,size", sorted(EXPECTED))
def test_hand_computed_windows(impl, window, size):
    eng, targets = frames(LOG)
    win = impl(eng, targets, size, window)
    assert win.shape == (len(targets), size)
    assert as_row_ids(win, eng, targets) == EXPECTED[(window, size)]


@pytest.mark.parametrize("window", ["past", "centered"])
def test_input_order_does_not_matter(window):
    eng, targets = frames(LOG)
    rng = np.random.default_rng(3)
    eng_perm = eng.iloc[rng.permutation(len(eng))].reset_index(drop=True)
    targets_perm = targets.iloc[rng.permutation(len(targets))].reset_index(drop=True)
    got = as_row_ids(select_windows(eng_perm, targets_perm, 3, window), eng_perm, targets_perm)
    assert got == EXPECTED[(window, 3)]


def test_empty_inputs():
    eng, targets = frames(LOG)
    assert select_windows(eng.iloc[:0], targets, 4, "past").tolist() == [[-1] * 4] * len(targets)
    assert select_windows(eng, targets.iloc[:0], 4, "centered").shape == (0, 4)


def test_bad_arguments():
    eng, targets = frames(LOG)
    with pytest.raises(ValueError, match="window"):
        select_windows(eng, targets, 2, "future")
    with pytest.raises(ValueError, match="lacks column"):
        select_windows(eng.drop(columns="tweet"), targets, 2, "past")


def random_log(seed: int, n: int = 300) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Few users and tweets, coarse times: many ties, duplicated tweets, heavy users."""
    rng = np.random.default_rng(seed)
    row_ids = rng.choice(10**6, n, replace=False).tolist()
    splits = rng.integers(0, 3, n).tolist()
    users = [f"u{u % 25}" for u in rng.zipf(1.6, n)]
    tweets = [f"w{w}" for w in rng.integers(0, 40, n)]
    ts = rng.integers(0, 30, n).tolist()
    delay = rng.integers(0, 5, n).tolist()
    engaged = (rng.random(n) < 0.6).tolist()
    log = [
        (r, s, u, w, t, t + d if e and s < 2 else None)
        for r, s, u, w, t, d, e in zip(row_ids, splits, users, tweets, ts, delay, engaged)
    ]
    return frames(log)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("window", ["past", "centered"])
@pytest.mark.parametrize("size", [1, 3, 6])
def test_vectorised_equals_python_reference(seed, window, size):
    eng, targets = random_log(seed)
    fast = select_windows(eng, targets, size, window)
    slow = select_windows_python(eng, targets, size, window)
    np.testing.assert_array_equal(fast, slow)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("window", ["past", "centered"])
def test_invariants(seed, window):
    size = 4
    eng, targets = random_log(seed)
    win = select_windows(eng, targets, size, window)
    e_user, e_tweet, e_time = (eng[c].to_numpy() for c in ("user", "tweet", "time"))
    e_key = list(zip(eng["split"], eng["row_id"]))
    n_eligible = []
    for t, row in zip(targets.itertuples(index=False), win):
        valid = row[row >= 0]
        assert np.all(row[len(valid) :] == -1)
        assert np.all(e_user[valid] == t.user)
        assert t.tweet not in set(e_tweet[valid]), "the target tweet is in its own history"
        assert (t.split, t.row_id) not in {e_key[i] for i in valid}, "the target row is in its own history"
        times = e_time[valid]
        assert np.all(np.diff(times) >= 0), "history must be in time order"
        mine = (e_user == t.user) & (e_tweet != t.tweet)
        if window == "past":
            assert np.all(times < t.time)
            mine &= e_time < t.time
        n_eligible.append(int(mine.sum()))
    # Windows are as full as the eligible engagements allow.
    assert ((win >= 0).sum(axis=1) == np.minimum(n_eligible, size)).all()
