"""ingest stage: raw RecSys 2021 lines -> typed Parquet + quarantine (docs/data-format.md §4).

Expected values are computed here independently: a plain-Python reference parser of the raw lines
and hand-written line numbers and reasons for the malformed inputs.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import zstandard

from microparade.config import build_config
from microparade.engine import StageError, run_pipeline
from microparade.stages.ingest.parsing import SCHEMA, parse_block
from microparade.stages.ingest.stage import _first_line_start, iter_line_pieces
from tests.helpers.cli import run_cli


def hexid(i: int) -> str:
    return f"{i:032X}"


def fields(i: int = 1, **over: str) -> list[str]:
    """A valid 24-field line (as a list of raw strings); keyword arguments replace fields by index
    name ``f0``..``f23``."""
    f = [
        f"101\t{1000 + i}\t{2000 + i}\t102",  # text_tokens
        f"{hexid(10 + i)}\t{hexid(20 + i)}",  # hashtags
        hexid(100 + i),  # tweet_id
        "Photo\tGIF",  # present_media
        hexid(30 + i),  # present_links
        hexid(40 + i),  # present_domains
        ["TopLevel", "Retweet", "Quote", "Reply"][i % 4],
        "488B32D24BD4BB44172EB981C1BCA6FA",  # language
        str(1612137600 + i),  # tweet_timestamp
        hexid(200 + i),  # a_user_id
        str(10 * i),  # a_follower_count
        str(5 + i),  # a_following_count
        "true" if i % 2 else "false",  # a_is_verified
        str(1300000000 + i),  # a_account_creation
        hexid(300 + i),  # b_user_id
        str(7 * i),  # b_follower_count
        "0",  # b_following_count
        "false",  # b_is_verified
        str(1400000000 + i),  # b_account_creation
        "true",  # b_follows_a
        "",  # reply_timestamp
        str(1612137700 + i) if i % 3 == 0 else "",  # retweet_timestamp
        "",  # quote_timestamp
        str(1612137800 + i),  # like_timestamp
    ]
    for k, v in over.items():
        f[int(k[1:])] = v
    return f


def line(f: list[str]) -> bytes:
    return "\x01".join(f).encode()


def reference_row(raw: bytes, file_index: int, offset: int) -> dict:
    """Straightforward parse of one valid raw line into the expected ingest row."""
    f = raw.decode("utf-8").rstrip("\r").split("\x01")
    assert len(f) in (20, 24)

    def tab(s: str) -> list[str]:
        return s.split("\t") if s else []

    def opt(j: int):
        return int(f[j]) if len(f) == 24 and f[j] != "" else None

    return {
        "row_id": (file_index << 40) | offset,
        "text_tokens": [int(t) for t in tab(f[0])],
        "hashtags": tab(f[1]),
        "tweet_id": f[2],
        "present_media": tab(f[3]),
        "present_links": tab(f[4]),
        "present_domains": tab(f[5]),
        "tweet_type": f[6],
        "language": f[7],
        "tweet_timestamp": int(f[8]),
        "a_user_id": f[9],
        "a_follower_count": int(f[10]),
        "a_following_count": int(f[11]),
        "a_is_verified": f[12] == "true",
        "a_account_creation": int(f[13]),
        "b_user_id": f[14],
        "b_follower_count": int(f[15]),
        "b_following_count": int(f[16]),
        "b_is_verified": f[17] == "true",
        "b_account_creation": int(f[18]),
        "b_follows_a": f[19] == "true",
        "reply_timestamp": opt(20),
        "retweet_timestamp": opt(21),
        "quote_timestamp": opt(22),
        "like_timestamp": opt(23),
    }


def reference_rows(data: bytes, file_index: int) -> list[dict]:
    rows, offset = [], 0
    for raw in data.split(b"\n"):
        if raw.rstrip(b"\r"):
            rows.append(reference_row(raw, file_index, offset))
        offset += len(raw) + 1
    return rows


def read_split(run_dir: str, split: str) -> pa.Table:
    """All parts of a split, in part order, as one table (checks the parts' schema)."""
    m = json.loads(fsspec.open(f"{run_dir}/ingest/_MANIFEST.json").open().read())
    paths = sorted(f["path"] for f in m["files"] if f["path"].startswith(f"{split}/"))
    tables = []
    for p in paths:
        with fsspec.open(f"{run_dir}/ingest/{p}", "rb") as fh:
            t = pq.read_table(fh)
        assert t.schema.equals(SCHEMA), p
        tables.append(t)
    return pa.concat_tables(tables)


def manifest(run_dir: str) -> dict:
    with fsspec.open(f"{run_dir}/ingest/_MANIFEST.json", "r") as fh:
        return json.load(fh)


def ingest(run_dir: str, raw: dict[str, list[str]], **ingest_cfg) -> dict:
    """Run the ingest stage in-process on a threaded local cluster; returns its manifest."""
    cfg = build_config(
        {
            "run_dir": run_dir,
            "data": {"raw": raw},
            "cluster": {"processes": False, "dashboard": False},
            "ingest": ingest_cfg,
        }
    )
    run_pipeline(cfg, only="ingest", force=True)
    return manifest(cfg.run_dir)


# --------------------------------------------------------------------------------------------
# line splitting and block alignment (no Dask)
# --------------------------------------------------------------------------------------------
def _blocks_lines(data: bytes, blocksize: int, chunk: int) -> list[tuple[int, bytes]]:
    out = []
    for start in range(0, max(len(data), 1), blocksize):
        stop = min(start + blocksize, len(data))
        f = io.BytesIO(data)
        first = _first_line_start(f, start)
        if first is None or first >= stop:
            continue
        f.seek(first)
        for offset, piece in iter_line_pieces(f, first, stop, chunk):
            pos = offset
            for ln in piece.split(b"\n")[: piece.count(b"\n") + (not piece.endswith(b"\n"))]:
                out.append((pos, ln))
                pos += len(ln) + 1
    return out


@pytest.mark.parametrize("data", [b"ab\ncd\n\nefghij\nk", b"ab\ncd\n\nefghij\nk\n", b"x", b"\n\n", b""])
def test_blocks_partition_lines_exactly(data):
    expected, pos = [], 0
    parts = data.split(b"\n")
    if data.endswith(b"\n"):
        parts = parts[:-1]
    for ln in parts if data else []:
        expected.append((pos, ln))
        pos += len(ln) + 1
    for blocksize in range(1, len(data) + 2):
        for chunk in (1, 2, 3, 7, 100):
            assert _blocks_lines(data, blocksize, chunk) == expected, (blocksize, chunk)


def test_parse_block_edge_cases():
    good = line(fields(3))
    # CRLF endings, a blank line, a CR-only line, no final newline.
    data = good + b"\r\n\n\r\n" + good
    pb = parse_block(data, file_index=2, offset=100)
    assert (pb.n_lines, pb.n_blank, pb.table.num_rows, pb.quarantine.num_rows) == (4, 2, 2, 0)
    assert pb.table.column("row_id").to_pylist() == [(2 << 40) | 100, (2 << 40) | (100 + len(good) + 5)]
    assert pb.table.to_pylist()[0] == reference_row(good, 2, 100)
    empty = parse_block(b"", file_index=0, offset=0)
    assert (empty.n_lines, empty.table.num_rows, empty.table.schema.equals(SCHEMA)) == (0, 0, True)
    # 20-field lines are accepted only where the split allows them; labels are then null.
    short = line(fields(4)[:20])
    assert parse_block(short, file_index=0, offset=0).quarantine.column("reason").to_pylist() == ["field_count"]
    t = parse_block(short + b"\n" + good, file_index=0, offset=0, counts=(24, 20)).table
    assert t.column("like_timestamp").to_pylist() == [None, 1612137803]
    assert t.column("retweet_timestamp").to_pylist() == [None, 1612137703]


# --------------------------------------------------------------------------------------------
# end to end through the CLI on generated data
# --------------------------------------------------------------------------------------------
def test_roundtrip_generated_via_cli(tmp_path):
    run_dir = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"run_dir: {run_dir}\n"
        "data: {generate: {rows: 1500, rows_per_file: 1000}}\n"
        "cluster: {dashboard: false}\n"
        "ingest: {blocksize: 64KiB}\n"
    )
    run_cli("run", str(cfg), "--until", "ingest")
    m = manifest(str(run_dir))
    gen = json.loads((run_dir / "generate" / "_MANIFEST.json").read_text())
    for split in ("train", "valid", "test"):
        raw_files = sorted(f["path"] for f in gen["files"] if f["path"].startswith(f"{split}/"))
        expected = []
        for i, p in enumerate(raw_files):
            expected += reference_rows((run_dir / "generate" / p).read_bytes(), i)
        got = read_split(str(run_dir), split)
        assert got.num_rows == len(expected) == gen["extra"]["rows"][split]
        assert got.to_pylist() == expected, split
        s = m["extra"]["splits"][split]
        assert s["files"] == [str(run_dir / "generate" / p) for p in raw_files]
        assert (s["rows_in"], s["rows_out"], s["rows_quarantined"]) == (len(expected), len(expected), 0)
    test = read_split(str(run_dir), "test")
    assert test.column("like_timestamp").null_count == test.num_rows  # 20-field test lines
    train = read_split(str(run_dir), "train")
    assert train.column("like_timestamp").null_count < train.num_rows
    # 1000-row files of ~450 bytes per line in 64 KiB blocks: several parts, named in order.
    train_parts = sorted(f["path"] for f in m["files"] if f["path"].startswith("train/"))
    assert len(train_parts) > 2 and train_parts[0] == "train/part-00000.parquet"
    assert not any(f["path"].startswith("quarantine/") for f in m["files"])


# --------------------------------------------------------------------------------------------
# malformed lines
# --------------------------------------------------------------------------------------------
def test_malformed_lines_quarantined_with_reasons_and_line_numbers(tmp_path):
    train_lines = [
        line(fields(1)),  # 1 valid
        line(fields(2, f1="", f3="", f4="", f5="", f23="")),  # 2 valid, empty lists and labels
        line(fields(3)[:23]),  # 3 field_count
        line(fields(4, f2=hexid(0xABCDEF).lower())),  # 4 bad_hex_id (lower case)
        line(fields(5, f1=hexid(1) + "\tABC")),  # 5 bad_hex_id (list item too short)
        line(fields(6, f10="-5")),  # 6 bad_integer (negative)
        b"",  # 7 blank: not a row
        line(fields(7, f12="True")),  # 8 bad_boolean
        line(fields(8)).replace(b"\t1008\t", b"\t10\xff8\t"),  # 9 bad_utf8
        line(fields(9, f6="Tweet")),  # 10 bad_tweet_type
        line(fields(10, f3="Photo\tGif")),  # 11 bad_media
        line(fields(11, f0="101\tabc\t102")),  # 12 bad_token
        line(fields(12, f23="17x")),  # 13 bad_integer (label)
        line(fields(13, f6="TópLevel")),  # 14 valid UTF-8, not a tweet type
        line(fields(14)) + b"\r",  # 15 valid, CRLF ending
        line(fields(15, f0="")),  # 16 valid: no tokens
        line(fields(16, f8="")),  # 17 bad_integer (empty timestamp)
        line(fields(17)),  # 18 valid, no final newline
    ]
    test_lines = [
        line(fields(20)[:20]),  # 1 valid, 20 fields
        line(fields(21)),  # 2 valid, 24 fields
        line(fields(22)[:21]),  # 3 field_count
        line(fields(23)[:20]),  # 4 valid
    ]
    (tmp_path / "train.txt").write_bytes(b"\n".join(train_lines))
    (tmp_path / "test.txt").write_bytes(b"\n".join(test_lines) + b"\n")
    expected_bad = [
        (3, "field_count", None),
        (4, "bad_hex_id", "tweet_id"),
        (5, "bad_hex_id", "hashtags"),
        (6, "bad_integer", "a_follower_count"),
        (8, "bad_boolean", "a_is_verified"),
        (9, "bad_utf8", None),
        (10, "bad_tweet_type", "tweet_type"),
        (11, "bad_media", "present_media"),
        (12, "bad_token", "text_tokens"),
        (13, "bad_integer", "like_timestamp"),
        (14, "bad_tweet_type", "tweet_type"),
        (17, "bad_integer", "tweet_timestamp"),
    ]
    valid_lines = [1, 2, 15, 16, 18]
    raw = {"train": [str(tmp_path / "train.txt")], "test": [str(tmp_path / "test.txt")]}
    run_dir = str(tmp_path / "run")
    # 1 KiB blocks: about two lines per block, so line numbers cross block boundaries.
    m = ingest(run_dir, raw, blocksize="1KiB", max_bad_fraction=1.0)
    q = pq.read_table(f"{run_dir}/ingest/quarantine/train.parquet")
    assert [(r["line"], r["reason"], r["field"]) for r in q.to_pylist()] == expected_bad
    assert set(q.column("file").to_pylist()) == {str(tmp_path / "train.txt")}
    assert q.column("raw").to_pylist()[5] == train_lines[8]
    s = m["extra"]["splits"]["train"]
    assert (s["rows_in"], s["rows_out"], s["rows_quarantined"], s["blank_lines"]) == (17, 5, 12, 1)
    assert s["quarantined_by_reason"] == {
        "bad_boolean": 1,
        "bad_hex_id": 2,
        "bad_integer": 3,
        "bad_media": 1,
        "bad_token": 1,
        "bad_tweet_type": 2,
        "bad_utf8": 1,
        "field_count": 1,
    }
    assert s["parts"] > 5
    offsets = [sum(len(x) + 1 for x in train_lines[: i - 1]) for i in valid_lines]
    expected_rows = [reference_row(train_lines[i - 1], 0, o) for i, o in zip(valid_lines, offsets)]
    assert read_split(run_dir, "train").to_pylist() == expected_rows
    assert expected_rows[1]["hashtags"] == [] and expected_rows[1]["like_timestamp"] is None
    assert expected_rows[3]["text_tokens"] == []

    t = m["extra"]["splits"]["test"]
    assert (t["rows_in"], t["rows_out"], t["rows_quarantined"], t["quarantined_by_reason"]) == (
        4,
        3,
        1,
        {"field_count": 1},
    )
    tq = pq.read_table(f"{run_dir}/ingest/quarantine/test.parquet").to_pylist()
    assert [(r["line"], r["reason"]) for r in tq] == [(3, "field_count")]
    test = read_split(run_dir, "test")
    assert test.column("like_timestamp").to_pylist() == [None, 1612137821, None]

    # Same result in one block per file: quarantine and rows do not depend on the blocksize.
    m1 = ingest(str(tmp_path / "run1"), raw, blocksize="64MiB", max_bad_fraction=1.0)
    assert m1["extra"]["splits"]["train"]["parts"] == 1
    q1 = pq.read_table(f"{tmp_path}/run1/ingest/quarantine/train.parquet")
    assert q1.equals(q)
    assert read_split(str(tmp_path / "run1"), "train").equals(read_split(run_dir, "train"))


def test_threshold_exceeded_fails_with_file_and_line(tmp_path):
    lines = [line(fields(i)) for i in range(1, 21)]
    lines[13] = line(fields(14, f17="yes"))  # line 14
    lines[16] = line(fields(17)[:10])  # line 17
    (tmp_path / "raw").mkdir()
    src = tmp_path / "raw" / "part-0.txt"
    src.write_bytes(b"\n".join(lines) + b"\n")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"run_dir: {tmp_path / 'run'}\n"
        f"data: {{raw: {{train: {tmp_path / 'raw'}}}}}\n"
        "cluster: {processes: false, dashboard: false}\n"
        "ingest: {max_bad_fraction: 0.05}\n"
    )
    proc = run_cli("run", str(cfg), "--only", "ingest", check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    msg = proc.stderr
    assert "split train" in msg and "10.00%" in msg and "max_bad_fraction=0.05" in msg
    assert f"{src} line 14: bad_boolean in b_is_verified" in msg
    status = run_cli("status", str(cfg), "--json").stdout
    ingest_state = {s["stage"]: s for s in json.loads(status)["stages"]}["ingest"]
    assert ingest_state["state"] == "failed"
    assert "too many malformed lines" in ingest_state["reason"]
    # Exactly at the threshold passes (the limit is "more than").
    proc = run_cli("run", str(cfg), "--only", "ingest", "ingest.max_bad_fraction=0.1")
    m = manifest(str(tmp_path / "run"))
    assert m["extra"]["splits"]["train"]["rows_quarantined"] == 2


def test_pattern_matching_nothing_is_an_error(tmp_path):
    with pytest.raises(StageError, match=r"data.raw.valid: .*nope\*.txt' matches no file"):
        ingest(str(tmp_path / "run"), {"train": [], "valid": [str(tmp_path / "nope*.txt")]})


# --------------------------------------------------------------------------------------------
# compression, blocks, determinism, memory://
# --------------------------------------------------------------------------------------------
def _sample_data(n: int) -> bytes:
    return b"".join(line(fields(i)) + b"\n" for i in range(1, n + 1))


def test_compressed_inputs_match_plain(tmp_path):
    data = _sample_data(60)
    (tmp_path / "a.txt").write_bytes(data)
    (tmp_path / "b.txt.gz").write_bytes(gzip.compress(data))
    (tmp_path / "c.txt.bz2").write_bytes(bz2.compress(data))
    (tmp_path / "d.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    run_dir = str(tmp_path / "run")
    m = ingest(run_dir, {"train": [str(tmp_path / "*.txt*")]}, blocksize="2KiB")
    s = m["extra"]["splits"]["train"]
    assert s["files"] == [str(tmp_path / n) for n in ("a.txt", "b.txt.gz", "c.txt.bz2", "d.txt.zst")]
    assert s["rows_out"] == 240
    t = read_split(run_dir, "train")
    file_index = pc.shift_right(t.column("row_id"), 40).to_pylist()
    per_file = [t.filter(pa.array([fi == i for fi in file_index])) for i in range(4)]
    expected = reference_rows(data, 0)
    assert per_file[0].to_pylist() == expected
    mask = (1 << 40) - 1
    for i in (1, 2, 3):
        assert per_file[i].drop_columns(["row_id"]).equals(per_file[0].drop_columns(["row_id"]))
        assert [r & mask for r in per_file[i].column("row_id").to_pylist()] == [r["row_id"] for r in expected]
    # Plain file: many 2 KiB blocks; each compressed file: one part.
    parts = [f for f in m["files"] if f["path"].startswith("train/")]
    assert len([f for f in parts if f["source"].endswith("a.txt")]) == -(-len(data) // 2048)
    assert len(parts) == -(-len(data) // 2048) + 3


def test_blocksize_and_workers_do_not_change_rows_and_output_is_deterministic(tmp_path):
    data = _sample_data(50)
    (tmp_path / "x.txt").write_bytes(data)
    raw = {"train": [str(tmp_path / "x.txt")]}
    small = ingest(str(tmp_path / "small"), raw, blocksize="4KiB")
    ingest(str(tmp_path / "big"), raw)
    n_small = len([f for f in small["files"] if f["path"].startswith("train/")])
    assert n_small == -(-len(data) // 4096) and n_small > 1
    a, b = read_split(str(tmp_path / "small"), "train"), read_split(str(tmp_path / "big"), "train")
    assert a.equals(b) and a.to_pylist() == reference_rows(data, 0)
    # Same config on one worker: byte-identical parts.
    cfg = build_config(
        {
            "run_dir": str(tmp_path / "one"),
            "data": {"raw": raw},
            "cluster": {"processes": False, "dashboard": False, "n_workers": 1},
            "ingest": {"blocksize": "4KiB"},
        }
    )
    run_pipeline(cfg, only="ingest")
    one = manifest(str(tmp_path / "one"))
    digest = lambda m: sorted((f["path"], f["sha256"], f["bytes"]) for f in m["files"])  # noqa: E731
    assert digest(one) == digest(small)
    for f in one["files"]:  # the sha256 the tasks computed while writing is the file's
        assert f["sha256"] == hashlib.sha256((tmp_path / "one" / "ingest" / f["path"]).read_bytes()).hexdigest()


def test_memory_run_dir(tmp_path):
    data = _sample_data(30) + line(fields(31, f7="nope")) + b"\n"
    # Cut inside the first hashtag of line 16: both halves of that line are malformed.
    cut = len(_sample_data(15)) + 30
    fs = fsspec.filesystem("memory")
    fs.pipe("/ingest-test-raw/train/p0.txt", data[:cut])
    fs.pipe("/ingest-test-raw/train/p1.txt", data[cut:])
    raw = {"train": ["memory://ingest-test-raw/train"]}
    run_dir = "memory://ingest-test-run"
    try:
        m = ingest(run_dir, raw, blocksize="2KiB", max_bad_fraction=0.1)
        s = m["extra"]["splits"]["train"]
        # The cut falls inside a line: p0 ends with a partial line and p1 starts with the rest;
        # both pieces are malformed lines of their own files.
        assert [u.split("://")[0] + ":" + u.rsplit("/", 1)[1] for u in s["files"]] == ["memory:p0.txt", "memory:p1.txt"]
        assert s["rows_in"] == 32 and s["rows_quarantined"] == 3
        q = pq.read_table(fs.open("/ingest-test-run/ingest/quarantine/train.parquet")).to_pylist()
        assert [(r["file"].rsplit("/", 1)[1], r["reason"]) for r in q][-1] == ("p1.txt", "bad_hex_id")
        assert read_split(run_dir, "train").num_rows == 29
    finally:
        fs.rm("/ingest-test-raw", recursive=True)
        fs.rm("/ingest-test-run", recursive=True)
