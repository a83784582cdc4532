"""The hot-swap chunk loader: training examples streamed chunk by chunk, resumable to the example.

What it does (the paper's loader, made exact and restartable):

- **Manifest only.** The chunks and their sha256 come from the parsed chunks manifest
  (:class:`~microparade.stages.chunks.contract.ChunksManifest`); the bucket is never listed
  (listings on object stores are slow and may be stale).
- **Order.** Epoch ``e`` visits the chunks of a split in a permutation seeded by ``(seed, e)``
  (``shuffle=False``: manifest order), and shuffles the rows of each chunk with a permutation
  seeded by ``(seed, e, chunk)``; the chunks stage already shuffled globally, this re-mixes rows
  across epochs.
- **Shards.** Each chunk is split into ``world_size`` equal, disjoint per-rank shards (rank ``r``
  takes the ``r``-th block of the permuted rows) so every rank makes the same number of steps and
  DDP never waits on a rank that ran out. The remainder ``n mod world_size`` is either dropped
  (``remainder="drop"``, training: which rows are dropped changes every epoch with the row
  permutation, so no example is excluded for good) or the last shard is padded by wrapping around
  to the chunk's first rows (``remainder="pad"``: every row is seen at least once; the padded rows
  repeat rows of other ranks and are flagged in :attr:`Batch.is_pad`).
- **Batches** of ``batch_size`` examples may span two chunks: the tail of one chunk's shard is
  carried (a copy, at most ``batch_size - 1`` rows) into the next chunk's first batch, so all
  batches but an epoch's last are full. ``drop_last`` drops that last partial batch.
- **Hot swap.** While a chunk is consumed the next one is loaded in a background thread; at most
  two chunks (the current one and the one being loaded) are in memory.
- **Integrity.** Every chunk's sha256 is checked against the manifest on load; a mismatch raises
  :class:`ChunkChecksumError` naming the chunk and both hashes. Reads retry transient I/O errors.
- **Resume.** Every batch carries :class:`LoaderState` = the position of the *next* example
  (epoch, index into the epoch's chunk order, offset into that chunk's shard). Starting an epoch
  from a saved state yields exactly the examples not yet yielded: none skipped, none repeated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..stages.chunks.contract import ChunkFile, ChunksManifest
from ..storage import filesystem, retry
from .batching import ID_COLUMNS, TRAIN_COLUMNS, Examples


class ChunkChecksumError(ValueError):
    """A chunk's bytes do not hash to the sha256 recorded in the chunks manifest."""


@dataclass(frozen=True)
class LoaderState:
    """Position of the next example: ``chunk`` indexes the epoch's chunk order (not file names)."""

    epoch: int = 0
    chunk: int = 0
    offset: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoaderState:
        return cls(int(d["epoch"]), int(d["chunk"]), int(d["offset"]))


@dataclass
class Batch:
    examples: Examples
    #: Where the next batch starts (save this in a checkpoint to resume after this batch).
    state: LoaderState
    #: True for rows that only pad a rank's shard (``remainder="pad"``).
    is_pad: np.ndarray

    def __len__(self) -> int:
        return len(self.examples)


class ChunkLoader:
    """Stream one split's chunks as :class:`Batch` es (see the module docstring).

    ``manifest`` is the parsed chunks manifest; :meth:`from_run_dir` reads it from a run directory.
    """

    def __init__(
        self,
        manifest: ChunksManifest,
        split: str,
        *,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        remainder: Literal["drop", "pad"] = "drop",
        drop_last: bool = False,
        with_ids: bool = False,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if remainder not in ("drop", "pad"):
            raise ValueError(f"remainder must be 'drop' or 'pad', got {remainder!r}")
        self.manifest = manifest
        self.split = split
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.remainder, self.drop_last = remainder, drop_last
        self.with_ids = with_ids
        self.storage_options = dict(storage_options or {})
        self.fs, _ = filesystem(manifest.url, self.storage_options)
        self.chunks: list[ChunkFile] = list(manifest.files(split))
        self._columns = list(TRAIN_COLUMNS) + (list(ID_COLUMNS) if with_ids else [])
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunk-prefetch")

    @classmethod
    def from_run_dir(
        cls, run_dir: str, split: str, *, storage_options: dict[str, Any] | None = None, **kw: Any
    ) -> ChunkLoader:
        """A loader of ``split`` of the chunks published in the run directory ``run_dir``."""
        manifest = ChunksManifest.read(run_dir, storage_options)
        return cls(manifest, split, storage_options=storage_options, **kw)

    # -- sizes and order ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.chunks)

    def shard_size(self, rows: int, world_size: int | None = None) -> int:
        """Examples each rank takes from a chunk of ``rows`` rows (with ``world_size`` processes,
        default this loader's)."""
        world = self.world_size if world_size is None else world_size
        return rows // world if self.remainder == "drop" else -(-rows // world)

    def examples_per_epoch(self) -> int:
        return sum(self.shard_size(c.rows) for c in self.chunks)

    def batches_per_epoch(self) -> int:
        n = self.examples_per_epoch()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def chunk_order(self, epoch: int) -> list[int]:
        """Indices into :attr:`chunks` in the order epoch ``epoch`` visits them."""
        if not self.shuffle:
            return list(range(len(self.chunks)))
        return [int(i) for i in np.random.default_rng([self.seed, epoch]).permutation(len(self.chunks))]

    def shard_indices(self, epoch: int, chunk_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Row positions of this rank's shard of chunk ``chunk_index`` (into :attr:`chunks`) and
        which of them are padding."""
        n = self.chunks[chunk_index].rows
        if self.shuffle:
            perm = np.random.default_rng([self.seed, epoch, chunk_index]).permutation(n)
        else:
            perm = np.arange(n)
        size = self.shard_size(n)
        pos = np.arange(self.rank * size, (self.rank + 1) * size)
        is_pad = pos >= n
        return perm[pos % max(n, 1)] if n else perm[:0], is_pad

    def rescale_position(self, state: LoaderState, old_world_size: int) -> LoaderState:
        """``state`` (written by a run of ``old_world_size`` processes) for this loader's world size.

        Shards are contiguous blocks of the chunk's permutation, so no position of the new layout
        covers exactly the examples the old one had consumed: the offset is scaled to the same
        fraction of the shard. Up to one old shard's worth of the current chunk may be repeated or
        skipped; chunk and epoch boundaries stay exact.
        """
        if old_world_size == self.world_size or state.offset == 0:
            return state
        order = self.chunk_order(state.epoch)
        if state.chunk >= len(order):
            return state
        rows = self.chunks[order[state.chunk]].rows
        old = self.shard_size(rows, old_world_size)
        new = self.shard_size(rows)
        offset = min(new, state.offset * new // max(old, 1))
        return LoaderState(state.epoch, state.chunk, offset)

    # -- loading --------------------------------------------------------------------------------
    def load_chunk(self, chunk_index: int) -> Examples:
        """Read one chunk (sha256-verified) into :class:`Examples`."""
        info = self.chunks[chunk_index]
        path = self.fs._strip_protocol(info.url)
        data = retry(lambda: self.fs.cat_file(path), what=f"read chunk {info.url}")
        actual = hashlib.sha256(data).hexdigest()
        if actual != info.sha256:
            raise ChunkChecksumError(
                f"chunk {info.path} ({info.url}) is corrupted: sha256 {actual} does not match the "
                f"manifest's {info.sha256} ({len(data)} bytes read, manifest says {info.bytes}); "
                f"rerun the chunks stage"
            )
        table = pq.read_table(pa.BufferReader(data), columns=self._columns)
        if table.num_rows != info.rows:
            raise ValueError(f"chunk {info.path} has {table.num_rows} rows, the manifest says {info.rows}")
        return Examples.from_table(
            table, history_size=self.manifest.history_size, n_features=self.manifest.n_features, with_ids=self.with_ids
        )

    def _submit(self, order: list[int], k: int) -> Future | None:
        return self._pool.submit(self.load_chunk, order[k]) if k < len(order) else None

    # -- iteration ------------------------------------------------------------------------------
    def epoch(self, epoch: int, start: LoaderState | None = None) -> Iterator[Batch]:
        """Batches of epoch ``epoch`` from ``start`` (default: its beginning) to its end."""
        start = start or LoaderState(epoch, 0, 0)
        if start.epoch != epoch:
            raise ValueError(f"start state {start} is not in epoch {epoch}")
        order = self.chunk_order(epoch)
        if start.chunk > len(order):
            raise ValueError(f"start state {start} is past the {len(order)} chunk(s) of split {self.split}")
        carry: Examples | None = None
        carry_pad: np.ndarray | None = None
        k = start.chunk
        pending = self._submit(order, k)
        while pending is not None:
            current = pending.result()
            pending = self._submit(order, k + 1)  # hot swap: load the next while this is consumed
            idx, is_pad = self.shard_indices(epoch, order[k])
            o = start.offset if k == start.chunk else 0
            if o > len(idx):
                raise ValueError(f"start offset {o} is past the {len(idx)} examples of chunk {k} of epoch {epoch}")
            if carry is not None:
                need = self.batch_size - len(carry)
                take = min(need, len(idx) - o)
                part = current.take(idx[o : o + take])
                carry = Examples.concat(carry, part)
                carry_pad = np.concatenate([carry_pad, is_pad[o : o + take]])
                o += take
                if len(carry) == self.batch_size:
                    yield Batch(carry, self._state(epoch, k, o, len(idx)), carry_pad)
                    carry = carry_pad = None
            while carry is None and len(idx) - o >= self.batch_size:
                sl = slice(o, o + self.batch_size)
                o += self.batch_size
                yield Batch(current.take(idx[sl]), self._state(epoch, k, o, len(idx)), is_pad[sl])
            if carry is None and o < len(idx):
                carry, carry_pad = current.take(idx[o:]), is_pad[o:]
            del current  # at most two chunks alive: the one being loaded and the next current
            k += 1
        if carry is not None and carry_pad is not None and len(carry) and not self.drop_last:
            yield Batch(carry, LoaderState(epoch, len(order), 0), carry_pad)

    @staticmethod
    def _state(epoch: int, k: int, offset: int, shard: int) -> LoaderState:
        return LoaderState(epoch, k + 1, 0) if offset >= shard else LoaderState(epoch, k, offset)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ChunkLoader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
