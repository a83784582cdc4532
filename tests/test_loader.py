"""The hot-swap chunk loader: order, shards, chunk-spanning batches, exact resume, checksums."""

from __future__ import annotations

import gc
import json
import time
import weakref

import fsspec
import numpy as np
import pytest

import tests.helpers.train as h
from microparade.model.loader import ChunkChecksumError, ChunkLoader, LoaderState

SIZES = [23, 17, 30, 9]  # four train chunks, 79 rows


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("loader") / "run"
    h.publish_chunks(str(d), {"train": SIZES, "valid": [12]}, history_size=3, n_features=4)
    return str(d)


def _rows(loader: ChunkLoader, epoch: int, start: LoaderState | None = None) -> list[int]:
    return [int(r) for b in loader.epoch(epoch, start) for r in b.examples.row_id]


def _chunk_rows(run_dir: str) -> dict[str, list[int]]:
    """row_ids of every train chunk, read with plain pyarrow (the reference)."""
    import pyarrow.parquet as pq

    m = json.load(open(f"{run_dir}/chunks/_MANIFEST.json"))
    return {
        f["path"]: pq.read_table(f"{run_dir}/chunks/{f['path']}", columns=["row_id"]).column(0).to_pylist()
        for f in m["files"]
        if f["split"] == "train"
    }


def test_epoch_visits_every_row_once_in_seeded_order(run_dir):
    with (
        ChunkLoader.from_run_dir(run_dir, "train", batch_size=8, seed=3) as a,
        ChunkLoader.from_run_dir(run_dir, "train", batch_size=8, seed=3) as b,
        ChunkLoader.from_run_dir(run_dir, "train", batch_size=8, seed=4) as c,
    ):
        e0, e1 = _rows(a, 0), _rows(a, 1)
        assert sorted(e0) == list(range(79)) and sorted(e1) == list(range(79))
        assert e0 == _rows(b, 0)  # same seed, same order
        assert e0 != e1 and e0 != _rows(c, 0)  # a new order per epoch and per seed
        # every batch is full except the epoch's last: batches span chunks
        sizes = [len(x) for x in a.epoch(0)]
        assert sizes == [8] * 9 + [7] and a.batches_per_epoch() == 10
        # chunks are visited whole, in the epoch's chunk order
        per_chunk = _chunk_rows(run_dir)
        order = a.chunk_order(0)
        expected_sets = [set(per_chunk[a.chunks[i].path]) for i in order]
        pos = 0
        for s in expected_sets:
            assert set(e0[pos : pos + len(s)]) == s
            pos += len(s)


def test_unshuffled_order_is_manifest_order(run_dir):
    with ChunkLoader.from_run_dir(run_dir, "valid", batch_size=5, shuffle=False, with_ids=True) as v:
        batches = list(v.epoch(0))
    assert [len(b) for b in batches] == [5, 5, 2]
    assert np.concatenate([b.examples.row_id for b in batches]).tolist() == list(range(79, 91))
    assert batches[0].examples.tweet_id is not None and len(batches[0].examples.tweet_id[0]) == 32


def test_rank_shards_drop_remainder(run_dir):
    world = 3
    loaders = [
        ChunkLoader.from_run_dir(run_dir, "train", batch_size=4, rank=r, world_size=world, seed=1) for r in range(world)
    ]
    try:
        shards = [_rows(lo, 0) for lo in loaders]
        # equal sizes: sum(n // 3) = 7 + 5 + 10 + 3 = 25 per rank, same number of batches
        assert [len(s) for s in shards] == [25, 25, 25]
        assert len({lo.batches_per_epoch() for lo in loaders}) == 1
        flat = [r for s in shards for r in s]
        assert len(set(flat)) == 75  # disjoint
        # the dropped rows (one per chunk of 23, 17; none of 30, 9 ... n mod 3) change with the epoch
        dropped0 = set(range(79)) - set(flat)
        assert len(dropped0) == sum(n % world for n in SIZES) == 4
        dropped1 = set(range(79)) - {r for lo in loaders for r in _rows(lo, 1)}
        assert dropped1 != dropped0
    finally:
        for lo in loaders:
            lo.close()


def test_rank_shards_pad_remainder(run_dir):
    world = 4
    loaders = [
        ChunkLoader.from_run_dir(run_dir, "train", batch_size=4, rank=r, world_size=world, seed=1, remainder="pad")
        for r in range(world)
    ]
    try:
        seen, pads = [], 0
        for lo in loaders:
            for b in lo.epoch(0):
                seen.extend(b.examples.row_id[~b.is_pad].tolist())
                pads += int(b.is_pad.sum())
        # ceil(n / 4) per rank and chunk: 6 + 5 + 8 + 3 = 22 -> 88 slots for 79 rows
        assert sorted(seen) == list(range(79)) and pads == 88 - 79
    finally:
        for lo in loaders:
            lo.close()


@pytest.mark.parametrize("world,rank", [(1, 0), (2, 1)])
def test_resume_from_every_position_is_exact(run_dir, world, rank):
    with ChunkLoader.from_run_dir(run_dir, "train", batch_size=6, rank=rank, world_size=world, seed=5) as lo:
        full = _rows(lo, 2)
        consumed = 0
        for b in lo.epoch(2):
            consumed += len(b)
            rest = _rows(lo, 2, b.state)
            assert full[:consumed] + rest == full, b.state
        assert b.state == LoaderState(2, 4, 0)
        # a state inside a chunk (not at a batch boundary) works too
        mid = LoaderState(2, 1, 3)
        tail = _rows(lo, 2, mid)
        n0 = lo.shard_size(lo.chunks[lo.chunk_order(2)[0]].rows)
        assert tail == full[n0 + 3 :]
        with pytest.raises(ValueError, match="is not in epoch 1"):
            next(lo.epoch(1, mid))


def test_at_most_two_chunks_alive(run_dir):
    """While a chunk is consumed the next one is loaded in the background, and no third is alive.

    Each batch waits until every load the loader has started has finished (the prefetch thread may
    lag on a loaded machine), so the count is deterministic: the current chunk plus the prefetched one.
    """
    lo = ChunkLoader.from_run_dir(run_dir, "train", batch_size=4, seed=0)
    alive: list[weakref.ref] = []
    started: list[int] = []
    real_load = lo.load_chunk

    def load_and_track(i):
        started.append(i)
        ex = real_load(i)
        alive.append(weakref.ref(ex))
        return ex

    lo.load_chunk = load_and_track
    peak = 0
    try:
        for _ in lo.epoch(0):
            deadline = time.monotonic() + 30
            while len(alive) < len(started) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(alive) == len(started), "a chunk prefetch did not finish within 30 s"
            gc.collect()
            peak = max(peak, sum(r() is not None for r in alive))
        assert len(alive) == 4 and peak == 2
    finally:
        lo.close()


def test_corrupted_chunk_is_named(tmp_path):
    run_dir = str(tmp_path / "run")
    m = h.publish_chunks(run_dir, {"train": [10, 10]}, history_size=2, n_features=3)
    entry = m["files"][1]
    path = tmp_path / "run" / "chunks" / entry["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    import hashlib

    actual = hashlib.sha256(bytes(data)).hexdigest()
    with ChunkLoader.from_run_dir(run_dir, "train", batch_size=4, shuffle=False) as lo:
        with pytest.raises(ChunkChecksumError) as err:
            list(lo.epoch(0))
    msg = str(err.value)
    assert entry["path"] in msg and entry["sha256"] in msg and actual in msg


def test_only_manifest_chunks_are_read(tmp_path):
    run_dir = str(tmp_path / "run")
    h.publish_chunks(run_dir, {"train": [7, 5]}, history_size=2, n_features=3)
    stray = tmp_path / "run" / "chunks" / "train" / "chunk-00099.parquet"
    stray.write_bytes((tmp_path / "run" / "chunks" / "train" / "chunk-00000.parquet").read_bytes())
    with ChunkLoader.from_run_dir(run_dir, "train", batch_size=4) as lo:
        assert len(lo) == 2 and sorted(_rows(lo, 0)) == list(range(12))


def test_fsspec_memory_url(tmp_path):
    local = str(tmp_path / "run")
    h.publish_chunks(local, {"train": [9, 6]}, history_size=2, n_features=3)
    mem = fsspec.filesystem("memory")
    for p in sorted((tmp_path / "run" / "chunks").rglob("*")):
        if p.is_file():
            mem.pipe_file(f"/loadertest/run/chunks/{p.relative_to(tmp_path / 'run' / 'chunks')}", p.read_bytes())
    try:
        with (
            ChunkLoader.from_run_dir("memory://loadertest/run", "train", batch_size=4, seed=2) as lo,
            ChunkLoader.from_run_dir(local, "train", batch_size=4, seed=2) as ref,
        ):
            assert _rows(lo, 0) == _rows(ref, 0) and len(_rows(lo, 0)) == 15
    finally:
        mem.rm("/loadertest", recursive=True)


def test_bad_arguments(run_dir):
    with pytest.raises(ValueError, match="rank 2 is not in"):
        ChunkLoader.from_run_dir(run_dir, "train", batch_size=4, rank=2, world_size=2)
    with ChunkLoader.from_run_dir(run_dir, "train", batch_size=4) as lo:
        with pytest.raises(ValueError, match="past the 4 chunk"):
            next(lo.epoch(0, LoaderState(0, 5, 0)))


def test_position_rescaled_for_another_world_size(tmp_path):
    """A checkpoint of 2 processes resumed by 1: the offset keeps its fraction of the shard, chunk
    boundaries stay exact and the resumed epoch runs to its end."""
    run_dir = str(tmp_path / "run")
    h.publish_chunks(run_dir, {"train": [20, 12]}, history_size=2, n_features=3)
    with ChunkLoader.from_run_dir(run_dir, "train", batch_size=2, seed=3, rank=0, world_size=1) as one:
        order = one.chunk_order(0)
        rows = one.chunks[order[0]].rows
        old = LoaderState(0, 0, rows // 2 // 2)  # halfway through a 2-process shard
        new = one.rescale_position(old, 2)
        assert new == LoaderState(0, 0, rows // 2)
        assert one.rescale_position(LoaderState(0, 1, 0), 2) == LoaderState(0, 1, 0)
        assert one.rescale_position(old, 1) == old
        rest = [int(r) for b in one.epoch(0, new) for r in b.examples.row_id]
        assert len(rest) == 32 - rows // 2
