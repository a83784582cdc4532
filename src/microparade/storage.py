"""Storage on any fsspec URL: local paths, ``file://``, ``memory://``, ``gs://``, ``s3://``.

Everything the pipeline writes goes through :class:`Store`, a thin wrapper that keeps one
filesystem object and a root URL, and provides the few primitives the stage runner needs:
atomic small-file writes (the commit point of a stage), streaming sha256, recursive listings,
and moving a staged tree into place.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import fsspec
from fsspec.core import url_to_fs

T = TypeVar("T")

_CHUNK = 8 * 1024 * 1024


def format_bytes(n: int | float | None) -> str:
    """``1234567`` → ``"1.2 MB"`` (decimal units, as file sizes are reported); None → ``"-"``."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def is_local_url(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def protocol_of(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else "file"


def normalize_url(url: str) -> str:
    """Absolute, slash-free-at-end form of a URL; local paths become absolute paths."""
    url = str(url)
    if url.startswith("file://"):
        url = url[len("file://") :]
    if "://" not in url:
        return os.path.abspath(os.path.expanduser(url))
    return url.rstrip("/")


def join(url: str, *parts: str) -> str:
    """Join URL path segments with ``/`` (never ``os.sep``), whatever the protocol."""
    out = url.rstrip("/")
    for p in parts:
        p = str(p).strip("/")
        if p:
            out = f"{out}/{p}"
    return out


def _transient_errors() -> tuple[type[BaseException], ...]:
    """Exception types worth retrying: OS-level I/O errors, and botocore's connection errors,
    which s3fs lets through untranslated and which do not derive from ``OSError`` (an S3 endpoint
    that is briefly unreachable raises ``EndpointConnectionError``)."""
    types: tuple[type[BaseException], ...] = (OSError, ConnectionError, TimeoutError)
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
    except ImportError:  # pragma: no cover - s3 support not installed
        return types
    return types + (BotoConnectionError, HTTPClientError)


_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def _naming(exc: OSError, what: str) -> OSError:
    """``exc`` with ``what`` (the operation and its URL) in its message, same type and errno:
    object-store clients often report a missing object or bucket without naming it."""
    if what in str(exc):
        return exc
    try:
        if exc.errno is not None:
            return type(exc)(exc.errno, f"{what}: {exc.strerror or exc}")
        return type(exc)(f"{what}: {exc}")
    except Exception:  # pragma: no cover - an OSError subclass with another constructor
        return exc


def retry(fn: Callable[[], T], *, what: str, attempts: int = 5, base_delay: float = 0.5) -> T:
    """Call ``fn`` retrying transient I/O errors with exponential back-off.

    Non-transient errors (missing files, permission, value errors) are raised at once, missing
    files and permission errors with ``what`` added to the message; after the last attempt the error
    is re-raised with ``what`` in the message, never swallowed.
    """
    delay = base_delay
    transient = _transient_errors()
    for i in range(attempts):
        try:
            return fn()
        except _PERMANENT as exc:
            named = _naming(exc, what)
            if named is exc:
                raise
            raise named from exc
        except transient as exc:
            if i == attempts - 1:
                raise OSError(f"{what}: failed after {attempts} attempts: {exc!r}") from exc
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


class Store:
    """A filesystem rooted at ``root`` (an fsspec URL)."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None):
        self.root = normalize_url(root)
        self.storage_options = dict(storage_options or {})
        self.fs, self.root_path = url_to_fs(self.root, **self.storage_options)
        self.protocol = protocol_of(self.root)
        self.local = self.protocol == "file"

    # -- naming -------------------------------------------------------------------------------
    def url(self, *parts: str) -> str:
        """Full URL of a path under the root (what Dask and other processes are given)."""
        return join(self.root, *parts)

    def path(self, *parts: str) -> str:
        """Filesystem-internal path (what ``self.fs`` methods take)."""
        return join(self.root_path, *parts)

    def relpath(self, fs_path: str) -> str:
        fs_path = self.fs._strip_protocol(fs_path)
        root = self.root_path.rstrip("/")
        if fs_path == root:
            return ""
        if not fs_path.startswith(root + "/"):
            raise ValueError(f"{fs_path} is not under {root}")
        return fs_path[len(root) + 1 :]

    # -- queries -------------------------------------------------------------------------------
    def exists(self, *parts: str) -> bool:
        self.invalidate()
        return self.fs.exists(self.path(*parts))

    def invalidate(self) -> None:
        # Object-store listings are cached; the runner needs the truth.
        try:
            self.fs.invalidate_cache()
        except Exception:  # pragma: no cover - some filesystems lack a cache
            pass

    def size(self, *parts: str) -> int:
        return int(self.fs.size(self.path(*parts)))

    def walk_files(self, *parts: str) -> list[str]:
        """Relative paths (to ``parts``) of all files under a directory, sorted; [] if absent."""
        base = self.path(*parts)
        self.invalidate()
        if not self.fs.exists(base):
            return []
        found = self.fs.find(base, withdirs=False)
        out = []
        for f in found:
            f = self.fs._strip_protocol(f)
            rel = f[len(base.rstrip("/")) + 1 :]
            if rel:
                out.append(rel)
        return sorted(out)

    # -- reading -------------------------------------------------------------------------------
    def open(self, rel: str, mode: str = "rb", **kw):
        if "w" in mode and self.local:
            os.makedirs(posixpath.dirname(self.path(rel)), exist_ok=True)
        return self.fs.open(self.path(rel), mode, **kw)

    def read_bytes(self, rel: str) -> bytes:
        return retry(lambda: self.fs.cat_file(self.path(rel)), what=f"read {self.url(rel)}")

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def sha256(self, rel: str) -> str:
        def _hash() -> str:
            h = hashlib.sha256()
            with self.fs.open(self.path(rel), "rb") as f:
                while True:
                    b = f.read(_CHUNK)
                    if not b:
                        break
                    h.update(b)
            return h.hexdigest()

        return retry(_hash, what=f"checksum {self.url(rel)}")

    # -- writing -------------------------------------------------------------------------------
    def write_bytes_atomic(self, rel: str, data: bytes) -> None:
        """Write a whole file so that readers see either the old or the new content, never a part.

        Local files: write a temporary sibling, fsync, ``os.replace``. Object stores: a single PUT
        is atomic by the store's semantics. Other filesystems: write a temporary and move it.
        """
        target = self.path(rel)
        if self.local:
            d = posixpath.dirname(target)
            os.makedirs(d, exist_ok=True)
            tmp = posixpath.join(d, f".{posixpath.basename(target)}.tmp-{uuid.uuid4().hex[:8]}")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
            _fsync_dir(d)
        elif self.protocol in ("gs", "gcs", "s3", "s3a", "memory", "az", "abfs"):
            retry(lambda: self.fs.pipe_file(target, data), what=f"write {self.url(rel)}")
        else:  # pragma: no cover - exotic filesystems
            tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, target)

    def write_json_atomic(self, rel: str, obj: Any) -> None:
        self.write_bytes_atomic(rel, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    def rm(self, rel: str, recursive: bool = True) -> None:
        p = self.path(rel)
        self.invalidate()
        if self.fs.exists(p):
            retry(lambda: self.fs.rm(p, recursive=recursive), what=f"remove {self.url(rel)}")

    def rm_file(self, rel: str) -> None:
        p = self.path(rel)
        try:
            self.fs.rm_file(p)
        except FileNotFoundError:
            pass

    def move(self, src_rel: str, dst_rel: str) -> None:
        """Move one file; a rename where the filesystem has one, else copy + delete."""
        src, dst = self.path(src_rel), self.path(dst_rel)
        if self.local:
            os.makedirs(posixpath.dirname(dst), exist_ok=True)
            os.replace(src, dst)
        else:
            retry(lambda: self.fs.mv(src, dst), what=f"move {self.url(src_rel)} -> {self.url(dst_rel)}")

    def makedirs(self, rel: str) -> None:
        if self.local:
            os.makedirs(self.path(rel), exist_ok=True)


def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class HashingWriter(io.RawIOBase):
    """A write-only file wrapper that counts bytes and computes sha256 while writing."""

    def __init__(self, f):
        self._f = f
        self.sha = hashlib.sha256()
        self.nbytes = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        mv = memoryview(b)
        self.sha.update(mv)
        self.nbytes += mv.nbytes
        self._f.write(mv)
        return mv.nbytes

    def tell(self) -> int:
        return self.nbytes

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


def glob(url: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Expand a URL or glob into a sorted list of full file URLs."""
    url = normalize_url(url)
    fs, path = url_to_fs(url, **(storage_options or {}))
    try:
        fs.invalidate_cache()
    except Exception:  # pragma: no cover
        pass
    if any(c in path for c in "*?["):
        found = fs.glob(path)
    elif fs.isdir(path):
        found = [p for p in fs.find(path, withdirs=False)]
    elif fs.exists(path):
        found = [path]
    else:
        found = []
    files = sorted(p for p in found if not posixpath.basename(p).startswith((".", "_")))
    return [fs.unstrip_protocol(p) if "://" in url else p for p in files]


def iter_chunks(f, size: int = _CHUNK) -> Iterator[bytes]:
    while True:
        b = f.read(size)
        if not b:
            return
        yield b


def open_url(url: str, mode: str = "rb", storage_options: dict[str, Any] | None = None, **kw):
    return fsspec.open(normalize_url(url), mode, **(storage_options or {}), **kw)
