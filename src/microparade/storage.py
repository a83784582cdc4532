"""Storage on any fsspec URL: local paths, ``file://``, ``memory://``, ``gs://``, ``s3://``.

Two layers, both retrying transient I/O errors (:func:`retry`) with the URL in every error:

- :class:`Store`, a thin wrapper that keeps one filesystem object and a root URL, and provides the
  few primitives the stage runner needs: atomic small-file writes (the commit point of a stage),
  streaming sha256, recursive listings, and moving a staged tree into place;
- URL-level helpers for stages and Dask tasks (URL + storage options in, never a Store):
  :func:`read_parquet`, :func:`read_parquet_schema`, :func:`parquet_rows`, :func:`read_range`,
  :func:`url_size`, and :func:`write_url` / :func:`write_parquet`, which write a whole file
  (hashed while written) and rewrite it from the start when an attempt fails.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, TypeVar, cast

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from .errors import ConfigError

if TYPE_CHECKING:
    import pyarrow as pa

T = TypeVar("T")

_CHUNK = 8 * 1024 * 1024
#: First back-off of :func:`retry`, doubled after every failed attempt.
RETRY_BASE_DELAY_S = 0.5


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


def protocol_of(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else "file"


#: The package that gives fsspec each cloud URL scheme; the ``cloud`` extra installs them.
CLOUD_BACKENDS = {"gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs", "s3a": "s3fs"}


def _missing_backend(url: str, exc: ImportError) -> ConfigError:
    proto = protocol_of(url)
    package = CLOUD_BACKENDS.get(proto)
    if package:
        return ConfigError(
            f"{url}: {proto}:// URLs need {package}, which is not installed: "
            "pip install -e '.[cloud]' (or bash env/install.sh cloud)"
        )
    return ConfigError(f"{url}: {proto}:// URLs need an fsspec backend that is not installed ({exc})")


def require_filesystem(url: str) -> None:
    """One :class:`ConfigError` naming the extra to install when ``url``'s scheme has no fsspec
    backend here (``s3://`` without s3fs); checked before anything runs."""
    import fsspec

    try:
        fsspec.get_filesystem_class(protocol_of(url))
    except ImportError as exc:
        raise _missing_backend(url, exc) from None
    except ValueError as exc:
        raise ConfigError(f"{url}: {exc}") from None


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """``(fsspec filesystem, path)`` of ``url``: fsspec's ``url_to_fs``, with a missing backend
    reported as one :class:`ConfigError` naming the extra."""
    try:
        return url_to_fs(url, **(storage_options or {}))
    except ImportError as exc:
        raise _missing_backend(url, exc) from None


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


def retry(fn: Callable[[], T], *, what: str, attempts: int = 5, base_delay: float | None = None) -> T:
    """Call ``fn`` retrying transient I/O errors with exponential back-off.

    Non-transient errors (missing files, permission, value errors) are raised at once, missing
    files and permission errors with ``what`` added to the message; after the last attempt the error
    is re-raised with ``what`` in the message, never swallowed. ``base_delay``: the first back-off
    (default :data:`RETRY_BASE_DELAY_S`).
    """
    delay = RETRY_BASE_DELAY_S if base_delay is None else base_delay
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
        self.fs, self.root_path = filesystem(self.root, self.storage_options)
        self.protocol = protocol_of(self.root)
        self.local = self.protocol == "file"

    # -- naming -------------------------------------------------------------------------------
    def url(self, *parts: str) -> str:
        """Full URL of a path under the root (what Dask and other processes are given)."""
        return join(self.root, *parts)

    def path(self, *parts: str) -> str:
        """Filesystem-internal path (what ``self.fs`` methods take)."""
        return join(self.root_path, *parts)

    # -- queries -------------------------------------------------------------------------------
    def exists(self, *parts: str) -> bool:
        self.invalidate()
        return retry(lambda: self.fs.exists(self.path(*parts)), what=f"check {self.url(*parts)}")

    def invalidate(self) -> None:
        # Object-store listings are cached; the runner needs the truth.
        try:
            self.fs.invalidate_cache()
        except Exception:  # pragma: no cover - some filesystems lack a cache
            pass

    def size(self, *parts: str) -> int:
        return retry(lambda: int(self.fs.size(self.path(*parts))), what=f"size of {self.url(*parts)}")

    def walk_files(self, *parts: str) -> list[str]:
        """Relative paths (to ``parts``) of all files under a directory, sorted; [] if absent."""
        base = self.path(*parts)
        self.invalidate()

        def find() -> list[str]:
            return _find_files(self.fs, base) if self.fs.exists(base) else []

        found = retry(find, what=f"list {self.url(*parts)}")
        out = []
        for f in found:
            f = self.fs._strip_protocol(f)
            rel = f[len(base.rstrip("/")) + 1 :]
            if rel:
                out.append(rel)
        return sorted(out)

    # -- reading -------------------------------------------------------------------------------
    def open(self, rel: str, mode: str = "rb", **kw: Any) -> IO[Any]:
        """An open file (opening is retried; what is read or written through it is not)."""
        if "w" in mode and self.local:
            os.makedirs(posixpath.dirname(self.path(rel)), exist_ok=True)
        return retry(lambda: self.fs.open(self.path(rel), mode, **kw), what=f"open {self.url(rel)}")

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
            os.replace(_durable_temporary(target, data, "tmp"), target)
            _fsync_dir(posixpath.dirname(target))
        elif self.protocol in ("gs", "gcs", "s3", "s3a", "memory", "az", "abfs"):
            retry(lambda: self.fs.pipe_file(target, data), what=f"write {self.url(rel)}")
        else:  # other filesystems: write a temporary, then move it into place

            def via_temporary() -> None:
                tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
                self.fs.pipe_file(tmp, data)
                self.fs.mv(tmp, target)

            retry(via_temporary, what=f"write {self.url(rel)}")

    def write_json_atomic(self, rel: str, obj: Any) -> None:
        self.write_bytes_atomic(rel, _json_bytes(obj))

    def create_json(self, rel: str, obj: Any) -> bool:
        """Create ``rel`` holding ``obj`` only if no file is there; True if this call created it.

        Exactly one of several concurrent callers wins, on every backend that has an atomic
        create: local and NFS files (a complete temporary hard-linked into place: ``link(2)`` fails
        when the name exists), gs:// (``ifGenerationMatch=0``) and s3:// (``If-None-Match: *``).
        Other filesystems check, then write: two callers within that gap can both win. ``obj``
        should hold something unique to the caller, so that a retried request recognises its own file.
        """
        data, target = _json_bytes(obj), self.path(rel)
        if self.local:
            return _link_new_file(target, data)
        mode = "create" if self.protocol in ("gs", "gcs", "s3", "s3a", "memory") else "overwrite"

        def create() -> bool:
            try:
                if mode == "overwrite" and self.fs.exists(target):
                    raise FileExistsError(target)
                self.fs.pipe_file(target, data, mode=mode)
            except FileExistsError:
                # A retried request whose first attempt did create the file finds its own bytes.
                return bool(self.fs.cat_file(target) == data)
            return True

        self.invalidate()
        return retry(create, what=f"create {self.url(rel)}")

    def rm(self, rel: str, recursive: bool = True) -> None:
        p = self.path(rel)
        if self.exists(rel):
            retry(lambda: self.fs.rm(p, recursive=recursive), what=f"remove {self.url(rel)}")

    def rm_file(self, rel: str) -> None:
        """Remove one file; a missing file is not an error."""
        p = self.path(rel)

        def remove() -> None:
            try:
                self.fs.rm_file(p)
            except FileNotFoundError:
                pass

        retry(remove, what=f"remove {self.url(rel)}")

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


def _find_files(fs: Any, path: str) -> list[str]:
    """Paths of the files under the directory ``path``, sorted; a failed listing is an error.

    Object stores list by prefix and raise; local directories are walked here, as fsspec's generic
    walk reads a failed listing of a subdirectory as an empty directory.
    """
    if not isinstance(fs, LocalFileSystem):
        return list(fs.find(path, withdirs=False))
    files: list[str] = []
    todo = [path]
    while todo:
        for entry in fs.ls(todo.pop(), detail=True):
            (todo if entry["type"] == "directory" else files).append(entry["name"])
    return sorted(files)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _durable_temporary(target: str, data: bytes, tag: str) -> str:
    """A hidden sibling of the local path ``target`` holding ``data``, flushed to disk; its path."""
    d = posixpath.dirname(target)
    os.makedirs(d, exist_ok=True)
    tmp = posixpath.join(d, f".{posixpath.basename(target)}.{tag}-{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def _link_new_file(target: str, data: bytes) -> bool:
    """Publish ``data`` at the local path ``target`` unless a file is there (see :meth:`Store.create_json`)."""
    tmp = _durable_temporary(target, data, "new")
    try:
        os.link(tmp, target)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    _fsync_dir(posixpath.dirname(target))
    return True


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
    fs, path = filesystem(url, storage_options)
    try:
        fs.invalidate_cache()
    except Exception:  # pragma: no cover
        pass

    def expand() -> list[str]:
        if any(c in path for c in "*?["):
            return list(fs.glob(path))
        try:  # info, not isdir/exists: those read any error as "no such path"
            kind = fs.info(path)["type"]
        except FileNotFoundError:
            return []
        return _find_files(fs, path) if kind == "directory" else [path]

    found = retry(expand, what=f"list {url}")
    files = sorted(p for p in found if not posixpath.basename(p).startswith((".", "_")))
    return [fs.unstrip_protocol(p) if "://" in url else p for p in files]


# ------------------------------------------------------------------------------------------------
# URL-level reads and writes (for stages and Dask tasks: a URL and storage options, never a Store)
# ------------------------------------------------------------------------------------------------
# pyarrow is imported where it is used: the CLI's light commands never need it.


@dataclass(frozen=True)
class Written:
    """Size and sha256 of a file as it was written."""

    nbytes: int
    sha256: str

    def meta(self) -> dict[str, Any]:
        """The manifest's file fields: ``{"bytes": ..., "sha256": ...}``."""
        return {"bytes": self.nbytes, "sha256": self.sha256}


def _read_url(url: str, read: Callable[[IO[bytes]], T], storage_options: dict[str, Any] | None, what: str) -> T:
    """``read(f)`` on the file at ``url``, opened for reading; retried as a whole."""
    fs, path = filesystem(url, storage_options)

    def attempt() -> T:
        with fs.open(path, "rb") as f:
            return read(f)

    return retry(attempt, what=f"{what} {url}")


def read_parquet(
    url: str,
    storage_options: dict[str, Any] | None = None,
    *,
    columns: list[str] | None = None,
    schema: pa.Schema | None = None,
) -> pa.Table:
    """The ``columns`` (default: all) of the Parquet file at ``url``, read as ``schema`` when given."""
    import pyarrow.parquet as pq

    return _read_url(url, lambda f: pq.read_table(f, columns=columns, schema=schema), storage_options, "read")


def read_parquet_schema(url: str, storage_options: dict[str, Any] | None = None) -> pa.Schema:
    """The Arrow schema of the Parquet file at ``url`` (its footer only)."""
    import pyarrow.parquet as pq

    return _read_url(url, pq.read_schema, storage_options, "read the schema of")


def parquet_rows(url: str, storage_options: dict[str, Any] | None = None) -> int:
    """The number of rows of the Parquet file at ``url`` (from its footer)."""
    import pyarrow.parquet as pq

    return _read_url(url, lambda f: int(pq.ParquetFile(f).metadata.num_rows), storage_options, "read the row count of")


def read_range(url: str, start: int, end: int, storage_options: dict[str, Any] | None = None) -> bytes:
    """Bytes ``[start, end)`` of the file at ``url``."""
    fs, path = filesystem(url, storage_options)
    return retry(lambda: fs.cat_file(path, start=start, end=end), what=f"read bytes {start}-{end} of {url}")


def url_size(url: str, storage_options: dict[str, Any] | None = None) -> int:
    """The size in bytes of the file at ``url``."""
    fs, path = filesystem(url, storage_options)
    return retry(lambda: int(fs.size(path)), what=f"size of {url}")


def write_url(
    url: str, write: Callable[[IO[bytes]], T], storage_options: dict[str, Any] | None = None
) -> tuple[T, Written]:
    """Write the whole file at ``url`` by calling ``write(sink)``; return its result and what was written.

    A transient error anywhere in an attempt (``write`` included, and whatever it reads) starts the
    file over: ``write`` is called again on a fresh sink, so it must write everything from the
    start. Parent directories are created on local filesystems (object stores have none).
    """
    fs, path = filesystem(url, storage_options)

    def attempt() -> tuple[T, Written]:
        if isinstance(fs, LocalFileSystem):
            fs.makedirs(posixpath.dirname(path), exist_ok=True)
        with fs.open(path, "wb") as raw:
            sink = HashingWriter(raw)
            result = write(cast(IO[bytes], sink))  # a binary writer, though not typing.IO's subclass
            sink.flush()
        return result, Written(sink.nbytes, sink.sha.hexdigest())

    return retry(attempt, what=f"write {url}")


def encode_parquet(table: pa.Table, sink: Any, *, compression: str, row_group_size: int | None = None) -> None:
    """Write ``table`` as one Parquet file to an open binary sink (the pipeline's writer settings:
    ``compression``, rows per row group, pyarrow's defaults otherwise)."""
    import pyarrow.parquet as pq

    with pq.ParquetWriter(sink, table.schema, compression=compression) as w:
        w.write_table(table, row_group_size=row_group_size)


def write_parquet(
    table: pa.Table,
    url: str,
    storage_options: dict[str, Any] | None = None,
    *,
    compression: str,
    row_group_size: int | None = None,
) -> Written:
    """Write ``table`` as the Parquet file at ``url`` (see :func:`encode_parquet`, :func:`write_url`)."""
    _, written = write_url(
        url,
        lambda sink: encode_parquet(table, sink, compression=compression, row_group_size=row_group_size),
        storage_options,
    )
    return written
