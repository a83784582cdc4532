"""The chunks manifest as a typed contract: what the chunks stage writes and what its readers take.

The chunks manifest (docs/data-format.md §7) carries in ``extra`` what a reader of the chunks needs
to build model inputs:

- ``feature_names`` and ``normalization`` (``mean``/``std``, one per feature), copied from the
  features manifest;
- ``history_size`` (the text manifest's ``history.size``), ``max_length``, ``encoder_tokenizer``
  and ``special_tokens``, copied from the text manifest;
- ``splits``: per split ``rows``, ``chunks`` (a count) and ``label_rates`` (positive rate per
  target, ``null`` when the split has no labels), plus the writer's statistics;
- ``schema_version`` (:data:`SCHEMA_VERSION`).

``files`` lists every chunk with ``path``, ``rows``, ``bytes``, ``sha256`` and ``split``.

Writer: :func:`upstream_extra` validates and copies the upstream keys; :func:`chunks_extra`
assembles the contract's part of ``extra`` and checks that it parses with the written chunks.
Readers (loader, model bundle, train, evaluate, report): :meth:`ChunksManifest.from_manifest`
parses and validates once; every error names the key and the manifest's URL.

Importing this module is cheap: no torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...engine.manifest import MANIFEST, Manifest, read_manifest
from ...errors import StageError
from ...recsys_format import TARGETS
from ...storage import Store, join, normalize_url

SCHEMA_VERSION = 1
#: The chunks stage's directory under the run directory.
STAGE = "chunks"
#: Special tokens every model input needs.
REQUIRED_SPECIALS = ("cls", "sep", "pad")
#: Positive rates are clipped to ``[RATE_EPS, 1 - RATE_EPS]`` before taking their log-odds.
RATE_EPS = 1e-6


class ChunksManifestError(StageError):
    """A chunks manifest, or an upstream manifest it copies from, lacks a key or holds a bad value."""


@dataclass(frozen=True)
class SpecialTokens:
    """The special token ids model inputs are built with."""

    cls: int
    sep: int
    pad: int

    @classmethod
    def from_mapping(cls, special: Mapping[str, Any], what: str = "special_tokens") -> SpecialTokens:
        """The ids of ``cls``, ``sep`` and ``pad`` in ``special`` (``what`` names it in errors)."""
        missing = [k for k in REQUIRED_SPECIALS if k not in special]
        if missing:
            raise ValueError(f"{what} lacks {missing}: {dict(special)}")
        return cls(int(special["cls"]), int(special["sep"]), int(special["pad"]))


@dataclass(frozen=True)
class Normalization:
    """Per-feature mean and (positive) standard deviation, in ``feature_names`` order."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class ChunkFile:
    """One chunk: ``path`` relative to the chunks stage directory, ``url`` in full."""

    path: str
    url: str
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class SplitInfo:
    """One split's chunks (sorted by path), rows and positive rates (None: labels unknown)."""

    rows: int
    files: tuple[ChunkFile, ...]
    label_rates: Mapping[str, float] | None

    @property
    def n_chunks(self) -> int:
        return len(self.files)


@dataclass(frozen=True)
class ChunksManifest:
    """The chunks manifest, parsed and validated (see the module docstring)."""

    #: The chunks stage directory.
    url: str
    feature_names: tuple[str, ...]
    normalization: Normalization
    history_size: int
    max_length: int
    encoder_tokenizer: str
    #: Every special token of the text manifest (``link`` is a list of ids), in its order.
    special_tokens: Mapping[str, int | list[int]]
    splits: Mapping[str, SplitInfo]

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def specials(self) -> SpecialTokens:
        return SpecialTokens.from_mapping(self.special_tokens)

    def files(self, split: str) -> tuple[ChunkFile, ...]:
        """The chunks of ``split`` sorted by path (none for a split the manifest does not hold)."""
        info = self.splits.get(split)
        return info.files if info is not None else ()

    def positive_rates(self, split: str) -> dict[str, float]:
        """``{target: positive rate}`` of ``split``; raises when the split is absent or unlabelled."""
        info = self.splits.get(split)
        if info is None:
            raise ChunksManifestError(f"the chunks manifest {join(self.url, MANIFEST)} has no split {split!r}")
        if info.label_rates is None:
            raise ChunksManifestError(f"split {split!r} of {join(self.url, MANIFEST)} has no labels (label_rates null)")
        return dict(info.label_rates)

    def positive_log_odds(self, split: str = "train") -> tuple[float, ...]:
        """``log(p / (1 - p))`` of each target's positive rate in ``split``, in ``TARGETS`` order,
        with ``p`` clipped to ``[RATE_EPS, 1 - RATE_EPS]`` (a target without positives stays finite)."""
        rates = self.positive_rates(split)
        clipped = [min(max(rates[t], RATE_EPS), 1.0 - RATE_EPS) for t in TARGETS]
        return tuple(math.log(p / (1.0 - p)) for p in clipped)

    @classmethod
    def from_manifest(cls, m: Manifest) -> ChunksManifest:
        """Parse and validate a published chunks manifest."""
        return cls.from_dict(m.data, m.url())

    @classmethod
    def read(cls, run_dir: str, storage_options: dict[str, Any] | None = None) -> ChunksManifest:
        """The published chunks manifest of the run directory ``run_dir``."""
        store = Store(run_dir, storage_options)
        m = read_manifest(store, STAGE)
        if m is None:
            where = store.url(STAGE, MANIFEST)
            raise ChunksManifestError(f"no published chunks manifest at {where}: run the chunks stage")
        return cls.from_manifest(m)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], url: str) -> ChunksManifest:
        """Parse ``data`` (a ``_MANIFEST.json``'s content) of the chunks stage directory ``url``."""
        url = normalize_url(url)
        p = _Parser(f"the chunks manifest {join(url, MANIFEST)}", "rerun the chunks stage")
        extra = p.get(data, "extra", "manifest")
        version = p.integer(extra, "schema_version", "extra")
        if version != SCHEMA_VERSION:
            raise p.error("extra.schema_version", f"is {version}; this code reads version {SCHEMA_VERSION}")
        names = p.names(extra, "feature_names", "extra")
        norm = p.get(extra, "normalization", "extra")
        return cls(
            url=url,
            feature_names=names,
            normalization=Normalization(
                p.numbers(norm, "mean", "extra.normalization", len(names)),
                p.numbers(norm, "std", "extra.normalization", len(names), positive=True),
            ),
            history_size=p.integer(extra, "history_size", "extra", minimum=1),
            max_length=p.integer(extra, "max_length", "extra", minimum=3),
            encoder_tokenizer=p.text(extra, "encoder_tokenizer", "extra"),
            special_tokens=p.special_tokens(extra, "special_tokens", "extra"),
            splits=_split_infos(p, extra, _chunk_files(p, data, url)),
        )


# ----------------------------------------------------------------------------------------------
# the writer's side
# ----------------------------------------------------------------------------------------------
def upstream_extra(text: Manifest, features: Manifest) -> dict[str, Any]:
    """What the chunks manifest copies from the text and features manifests, validated (the text
    manifest's ``history.size`` becomes ``history_size``); errors name the upstream manifest."""
    pt = _Parser(f"the text manifest {text.url(MANIFEST)}", "rerun the text stage (docs/data-format.md §5)")
    pf = _Parser(f"the features manifest {features.url(MANIFEST)}", "rerun the features stage (docs/data-format.md §6)")
    names = pf.names(features.extra, "feature_names", "extra")
    norm = pf.get(features.extra, "normalization", "extra")
    history = pt.get(text.extra, "history", "extra")
    return {
        "feature_names": list(names),
        "normalization": {
            "mean": list(pf.numbers(norm, "mean", "extra.normalization", len(names))),
            "std": list(pf.numbers(norm, "std", "extra.normalization", len(names), positive=True)),
        },
        "history_size": pt.integer(history, "size", "extra.history", minimum=1),
        "max_length": pt.integer(text.extra, "max_length", "extra", minimum=3),
        "encoder_tokenizer": pt.text(text.extra, "encoder_tokenizer", "extra"),
        "special_tokens": pt.special_tokens(text.extra, "special_tokens", "extra"),
    }


def chunks_extra(
    upstream: Mapping[str, Any], splits: Mapping[str, Any], file_meta: Mapping[str, Mapping[str, Any]], url: str
) -> dict[str, Any]:
    """The contract's part of the chunks manifest's ``extra``: ``schema_version``, the keys of
    :func:`upstream_extra` and ``splits``. Raises :class:`ChunksManifestError` unless it parses as a
    :class:`ChunksManifest` together with the written chunks (``file_meta``: path -> rows, bytes,
    sha256, split) in the stage directory ``url``."""
    extra = {"schema_version": SCHEMA_VERSION, **upstream, "splits": dict(splits)}
    files = [{"path": path, **meta} for path, meta in sorted(file_meta.items())]
    ChunksManifest.from_dict({"files": files, "extra": extra}, url)
    return extra


# ----------------------------------------------------------------------------------------------
# parsing
# ----------------------------------------------------------------------------------------------
class _Parser:
    """Typed reads of a manifest's JSON; each error names the manifest, the key path and a remedy."""

    def __init__(self, where: str, remedy: str) -> None:
        self.where = where
        self.remedy = remedy

    def error(self, key: str, problem: str) -> ChunksManifestError:
        return ChunksManifestError(f"{self.where}: {key} {problem}; {self.remedy}")

    def get(self, obj: Any, key: str, path: str) -> Any:
        if not isinstance(obj, Mapping):
            raise self.error(path, f"must be a mapping, got {type(obj).__name__}")
        if key not in obj:
            raise self.error(f"{path}.{key}", "is missing")
        return obj[key]

    def integer(self, obj: Any, key: str, path: str, minimum: int = 0) -> int:
        value = self.get(obj, key, path)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(f"{path}.{key}", f"must be an integer >= {minimum}, got {value!r}")
        return value

    def text(self, obj: Any, key: str, path: str) -> str:
        value = self.get(obj, key, path)
        if not isinstance(value, str) or not value:
            raise self.error(f"{path}.{key}", f"must be a non-empty string, got {value!r}")
        return value

    def names(self, obj: Any, key: str, path: str) -> tuple[str, ...]:
        value = self.get(obj, key, path)
        if not isinstance(value, list) or not value or not all(isinstance(n, str) and n for n in value):
            raise self.error(f"{path}.{key}", f"must be a non-empty list of column names, got {value!r}")
        if len(set(value)) != len(value):
            raise self.error(f"{path}.{key}", f"names a column twice: {value!r}")
        return tuple(value)

    def numbers(self, obj: Any, key: str, path: str, n: int, positive: bool = False) -> tuple[float, ...]:
        """A list of ``n`` finite numbers (all > 0 when ``positive``)."""
        value = self.get(obj, key, path)
        if not isinstance(value, list) or len(value) != n:
            size = len(value) if isinstance(value, list) else type(value).__name__
            raise self.error(f"{path}.{key}", f"has {size} values for {n} features")
        if not all(_is_number(v) and math.isfinite(v) and (v > 0 or not positive) for v in value):
            kind = "positive finite numbers" if positive else "finite numbers"
            raise self.error(f"{path}.{key}", f"must hold {kind}, got {value!r}")
        return tuple(float(v) for v in value)

    def special_tokens(self, obj: Any, key: str, path: str) -> dict[str, int | list[int]]:
        """Token ids by name (an id, or a list of ids), ``cls``, ``sep`` and ``pad`` among them."""
        value = self.get(obj, key, path)
        for name in REQUIRED_SPECIALS:
            self.integer(value, name, f"{path}.{key}")
        for name, ids in value.items():
            if not (_is_id(ids) or (isinstance(ids, list) and ids and all(_is_id(i) for i in ids))):
                raise self.error(f"{path}.{key}.{name}", f"must be a token id or a list of ids, got {ids!r}")
        return {name: list(ids) if isinstance(ids, list) else ids for name, ids in value.items()}

    def rates(self, obj: Any, key: str, path: str) -> dict[str, float] | None:
        """``{target: rate in [0, 1]}`` for every target, or None (labels unknown)."""
        value = self.get(obj, key, path)
        if value is None:
            return None
        rates = {t: self.get(value, t, f"{path}.{key}") for t in TARGETS}
        bad = {t: r for t, r in rates.items() if not (_is_number(r) and 0.0 <= r <= 1.0)}
        if bad:
            raise self.error(f"{path}.{key}", f"must hold a rate in [0, 1] per target (or be null), got {bad}")
        return {t: float(r) for t, r in rates.items()}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_id(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _chunk_files(p: _Parser, data: Mapping[str, Any], url: str) -> dict[str, list[ChunkFile]]:
    """The manifest's Parquet files per split (its ``split``, else the path's first part), by path."""
    files = p.get(data, "files", "manifest")
    if not isinstance(files, list):
        raise p.error("files", f"must be a list, got {type(files).__name__}")
    out: dict[str, list[ChunkFile]] = {}
    for i, f in enumerate(files):
        path = p.text(f, "path", f"files[{i}]")
        if not path.endswith(".parquet"):
            continue
        at = f"files[{i}] ({path})"
        split = p.text(f, "split", at) if "split" in f else path.split("/", 1)[0]
        sha = p.text(f, "sha256", at)
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise p.error(f"{at}.sha256", f"must be 64 lowercase hex digits, got {sha!r}")
        chunk = ChunkFile(path, join(url, path), p.integer(f, "rows", at), p.integer(f, "bytes", at), sha)
        out.setdefault(split, []).append(chunk)
    return {split: sorted(chunks, key=lambda c: c.path) for split, chunks in out.items()}


def _split_infos(p: _Parser, extra: Mapping[str, Any], files: dict[str, list[ChunkFile]]) -> dict[str, SplitInfo]:
    """``extra.splits`` checked against the chunks ``files`` lists per split."""
    splits = p.get(extra, "splits", "extra")
    if not isinstance(splits, Mapping):
        raise p.error("extra.splits", f"must be a mapping, got {type(splits).__name__}")
    unlisted = sorted(set(files) - set(splits))
    if unlisted:
        raise p.error("extra.splits", f"lacks split {unlisted[0]!r}, whose chunks files lists")
    out: dict[str, SplitInfo] = {}
    for name, info in splits.items():
        at = f"extra.splits.{name}"
        chunks = tuple(files.get(name, ()))
        rows, n = p.integer(info, "rows", at), p.integer(info, "chunks", at)
        if n != len(chunks):
            raise p.error(f"{at}.chunks", f"is {n} but files lists {len(chunks)} chunk(s) of split {name}")
        listed = sum(c.rows for c in chunks)
        if rows != listed:
            raise p.error(f"{at}.rows", f"is {rows} but the chunks of split {name} in files hold {listed} rows")
        out[name] = SplitInfo(rows, chunks, p.rates(info, "label_rates", at))
    return out
