"""Transient storage failures: the URL-level helpers of :mod:`microparade.storage` retry them, and
the data stages (ingest → text → features → chunks) complete on a storage that keeps failing, with
files byte-identical to a run without failures.

The failures come from ``flaky://``, a local-disk filesystem (no directories needed, like an object
store) that fails every ``every``-th call of the chosen operations — opens, reads and writes of
file objects, ``info`` (hence listings, sizes, existence checks) — with a transient error. Each
(operation, path) fails at most once unless ``repeat`` is set, so every retried operation succeeds
within a few attempts whatever the interleaving of Dask's threads.
"""

from __future__ import annotations

import errno
import hashlib
import json
import re
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileOpener, LocalFileSystem

from microparade import storage
from microparade.compute.progress import gather_in_order
from microparade.config import build_config
from microparade.engine import run_pipeline
from microparade.stages.generate.synth import generate_dataset
from microparade.storage import (
    parquet_rows,
    read_parquet,
    read_parquet_schema,
    read_range,
    url_size,
    write_parquet,
    write_url,
)

ALL_OPS = frozenset({"open", "read", "write", "info"})


class FlakyFileSystem(LocalFileSystem):
    """Local files behind ``flaky://``, failing every ``every``-th call of ``ops`` (0: never)."""

    protocol = ("flaky",)
    every: ClassVar[int] = 0
    ops: ClassVar[frozenset[str]] = ALL_OPS
    repeat: ClassVar[bool] = False
    calls: ClassVar[int] = 0
    injected: ClassVar[dict[str, int]] = {}
    _failed: ClassVar[set[tuple[str, str]]] = set()
    _lock = threading.Lock()
    #: Set while a listing stats its entries: a listing is one request, which fails as a whole.
    _listing = threading.local()
    _errors = (
        lambda what: ConnectionResetError(errno.ECONNRESET, f"flaky: connection reset during {what}"),
        lambda what: TimeoutError(f"flaky: {what} timed out"),
        lambda what: OSError(errno.EIO, f"flaky: I/O error during {what}"),
    )

    def __init__(self, **kwargs: Any):
        super().__init__(auto_mkdir=True, **kwargs)

    @classmethod
    def configure(cls, every: int, ops: frozenset[str] = ALL_OPS, repeat: bool = False) -> None:
        with cls._lock:
            cls.every, cls.ops, cls.repeat = every, ops, repeat
            cls.calls, cls.injected, cls._failed = 0, {}, set()

    @classmethod
    def maybe_fail(cls, op: str, path: str) -> None:
        with cls._lock:
            if not cls.every or op not in cls.ops:
                return
            cls.calls += 1
            if cls.calls % cls.every or (not cls.repeat and (op, path) in cls._failed):
                return
            cls._failed.add((op, path))
            n = sum(cls.injected.values())
            cls.injected[op] = cls.injected.get(op, 0) + 1
        raise cls._errors[n % len(cls._errors)](f"{op} {path}")

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        path = str(path)
        if path.startswith("flaky://"):
            path = path[len("flaky://") :]
        return LocalFileSystem._strip_protocol(path)

    def unstrip_protocol(self, name: str) -> str:
        return f"flaky://{self._strip_protocol(name)}"

    def info(self, path: Any, **kwargs: Any) -> dict[str, Any]:
        if not getattr(self._listing, "active", False):
            self.maybe_fail("info", self._strip_protocol(path))
        return super().info(path, **kwargs)

    def ls(self, path: Any, detail: bool = False, **kwargs: Any) -> list[Any]:
        """A listing is one request (as on an object store), not one per entry."""
        self.maybe_fail("info", self._strip_protocol(path))
        self._listing.active = True
        try:
            return super().ls(path, detail=detail, **kwargs)
        finally:
            self._listing.active = False

    def exists(self, path: Any, **kwargs: Any) -> bool:
        """Unlike fsspec's default, an error other than "not found" is raised, not read as False."""
        try:
            self.info(path)
        except FileNotFoundError:
            return False
        return True

    def _open(self, path: Any, mode: str = "rb", block_size: Any = None, **kwargs: Any) -> LocalFileOpener:
        path = self._strip_protocol(path)
        self.maybe_fail("open", path)
        if "w" in mode:
            self.makedirs(self._parent(path), exist_ok=True)
        return _FlakyFile(path, mode, fs=self, **kwargs)


class _FlakyFile(LocalFileOpener):
    def read(self, *args: Any, **kwargs: Any) -> bytes:
        FlakyFileSystem.maybe_fail("read", self.path)
        return super().read(*args, **kwargs)

    def write(self, *args: Any, **kwargs: Any) -> int:
        FlakyFileSystem.maybe_fail("write", self.path)
        return super().write(*args, **kwargs)


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch):
    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
    monkeypatch.setattr(storage, "RETRY_BASE_DELAY_S", 0.001)
    FlakyFileSystem.configure(every=0)
    yield FlakyFileSystem
    FlakyFileSystem.configure(every=0)


def _table(n: int = 5000) -> pa.Table:
    return pa.table({"a": pa.array(range(n), pa.int64()), "b": pa.array([f"row {i}" for i in range(n)])})


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------
# the helpers
# ------------------------------------------------------------------------------------------------
def test_reads_retry_transient_errors(flaky, tmp_path):
    local = tmp_path / "t.parquet"
    pq.write_table(_table(), local, row_group_size=1000)
    url = f"flaky://{local}"
    for op in ("open", "read", "info"):
        flaky.configure(every=1, ops=frozenset({op}))
        if op != "info":
            assert read_parquet(url, columns=["a"]).equals(_table().select(["a"]))
            assert read_parquet_schema(url) == _table().schema
            assert parquet_rows(url) == 5000
            assert read_range(url, 0, 4) == b"PAR1"
        assert url_size(url) == local.stat().st_size
        assert flaky.injected.get(op, 0) >= 1, f"no {op} failure was injected"


def test_write_restarts_the_whole_file(flaky, tmp_path):
    clean = tmp_path / "clean.parquet"
    expected = write_parquet(_table(), str(clean), compression="zstd", row_group_size=1000)
    assert expected.nbytes == clean.stat().st_size and expected.sha256 == _sha256(clean)

    # The third write call of the file fails: the retry must start the file over, not append.
    flaky.configure(every=3, ops=frozenset({"write"}))
    target = tmp_path / "sub" / "dir" / "flaky.parquet"
    written = write_parquet(_table(), f"flaky://{target}", compression="zstd", row_group_size=1000)
    assert flaky.injected == {"write": 1}
    assert written == expected
    assert target.read_bytes() == clean.read_bytes()

    attempts = []

    def pieces(f) -> str:
        attempts.append(1)
        for i in range(10):
            f.write(b"%d\n" % i)
        return "done"

    flaky.configure(every=5, ops=frozenset({"write", "open"}))
    result, digest = write_url(f"flaky://{tmp_path}/lines.txt", pieces)
    assert result == "done" and len(attempts) >= 2
    assert (tmp_path / "lines.txt").read_bytes() == b"".join(b"%d\n" % i for i in range(10))
    assert digest.sha256 == _sha256(tmp_path / "lines.txt")


def test_permanent_errors_are_raised_at_once_with_the_url(flaky, tmp_path, monkeypatch):
    missing = f"flaky://{tmp_path}/missing.parquet"
    opens = []
    original = FlakyFileSystem._open

    def counting_open(self, path, mode="rb", **kw):
        opens.append(path)
        return original(self, path, mode, **kw)

    monkeypatch.setattr(FlakyFileSystem, "_open", counting_open)
    with pytest.raises(FileNotFoundError, match=re.escape(f"read {missing}: ")) as err:
        read_parquet(missing)
    assert err.value.errno == errno.ENOENT
    assert len(opens) == 1, "a missing file must not be retried"
    with pytest.raises(FileNotFoundError, match=re.escape(f"size of {missing}: ")):
        url_size(missing)

    # A transient error that never clears: the last attempt's error, with the URL.
    pq.write_table(_table(10), tmp_path / "t.parquet")
    flaky.configure(every=1, ops=frozenset({"open"}), repeat=True)
    url = f"flaky://{tmp_path}/t.parquet"
    with pytest.raises(OSError, match="^" + re.escape(f"read {url}: failed after 5 attempts: ")) as exhausted:
        read_parquet(url)
    assert flaky.injected == {"open": 5}
    assert isinstance(exhausted.value.__cause__, OSError)


def test_generated_raw_files_survive_write_failures(flaky, tmp_path):
    kwargs: dict[str, Any] = dict(rows=1000, seed=5, rows_per_file=1000, compression="gzip", progress=False)
    generate_dataset(str(tmp_path / "clean"), **kwargs)
    flaky.configure(every=4, ops=frozenset({"open", "write"}))
    generate_dataset(f"flaky://{tmp_path}/flaky", **kwargs)
    assert sum(flaky.injected.values()) >= 2
    for split in ("train", "valid", "test"):
        name = f"{split}/part-00000.gz"
        assert (tmp_path / "flaky" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name


def test_gather_in_order_keeps_order_logs_and_wraps_errors():
    from distributed import Client, LocalCluster

    def task(i: int) -> int:
        time.sleep(0.05 * max(0, 5 - i))  # finishes in reverse order
        if i == 7:
            raise ValueError("bad input")
        return i * 10

    lines: list[str] = []
    with LocalCluster(n_workers=1, threads_per_worker=5, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            futures = client.map(task, range(5), pure=False)
            results = gather_in_order(futures, "demo", lines.append, every_s=3600, amount=lambda r: r, unit="points")
            assert results == [0, 10, 20, 30, 40]
            assert _eventually(lambda: not any(f.key in client.refcount for f in futures)), "futures not released"
            assert len(lines) == 1 and lines[0].startswith("demo: 5/5, 100 points, "), lines

            slow = client.submit(time.sleep, 1, pure=False)
            failing = client.map(task, [7], pure=False)

            def wrap(i: int, exc: Exception) -> Exception:
                return RuntimeError(f"task {i} failed: {type(exc).__name__}: {exc}")

            with pytest.raises(RuntimeError, match=r"^task 1 failed: ValueError: bad input$") as err:
                gather_in_order([slow, *failing], "demo", lines.append, wrap_error=wrap)
            assert isinstance(err.value.__cause__, ValueError)
            assert _eventually(lambda: slow.status == "cancelled"), "the tasks still pending must be cancelled"


def _eventually(check: Any, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# ------------------------------------------------------------------------------------------------
# the data stages on a failing storage
# ------------------------------------------------------------------------------------------------
def _run(run_dir: str, raw: str) -> None:
    cfg = build_config(
        {
            "run_dir": run_dir,
            "data": {"raw": {split: [f"{raw}/{split}"] for split in ("train", "valid", "test")}},
            "cluster": {"n_workers": 1, "threads_per_worker": 2, "processes": False, "dashboard": False},
            "ingest": {"blocksize": "128KiB"},
            "history": {"size": 4},
            "text": {"max_length": 32},
            "chunks": {"target_mb": 0.3},
        }
    )
    outcome = run_pipeline(cfg, until="chunks")
    assert outcome == {s: "ran" for s in ("ingest", "text", "features", "chunks")}, outcome


def _data_files(run_dir: Path, stage: str) -> dict[str, str]:
    """sha256 of the stage's data files, by path (ingest's quarantine names the raw URLs: left out)."""
    manifest = json.loads((run_dir / stage / "_MANIFEST.json").read_text())
    files = {f["path"]: f["sha256"] for f in manifest["files"] if not f["path"].startswith("quarantine/")}
    for path, sha in files.items():
        assert _sha256(run_dir / stage / path) == sha, f"{stage}/{path} differs from its manifest"
    return files


def test_data_stages_complete_on_failing_storage_with_identical_files(flaky, tmp_path):
    raw = tmp_path / "raw"
    generate_dataset(str(raw), rows=3000, seed=3, rows_per_file=1000, progress=False)
    _run(str(tmp_path / "clean"), str(raw))

    flaky.configure(every=9)
    _run(f"flaky://{tmp_path}/flaky", f"flaky://{raw}")
    injected = dict(flaky.injected)
    flaky.configure(every=0)
    assert set(injected) == ALL_OPS and sum(injected.values()) >= 20, injected

    for stage in ("ingest", "text", "features", "chunks"):
        clean, failed = _data_files(tmp_path / "clean", stage), _data_files(tmp_path / "flaky", stage)
        assert failed == clean, f"{stage}: files differ after transient failures"
    chunks = _data_files(tmp_path / "flaky", "chunks")
    assert len([p for p in chunks if p.startswith("train/")]) >= 2, chunks
    assert not (tmp_path / "flaky" / "chunks" / "_staging").exists()
