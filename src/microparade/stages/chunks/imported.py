"""Chunks published elsewhere (``data.chunks``): the checks a run makes before it trains on them.

The runner has already found the ``_MANIFEST.json`` and verified every file it lists (size, or
sha256 with ``runner.verify: sha256``). Here: the manifest parses as the chunks contract (this
code's ``schema_version``, feature names and normalisation, history size, special tokens,
per-split files and label rates), and the first chunk of every split has exactly the chunk
schema of docs/data-format.md §7. Each failure is a :class:`ChunksManifestError` naming the URL.
"""

from __future__ import annotations

import pyarrow as pa

from ...engine.manifest import Manifest
from ...storage import read_parquet_schema
from .contract import ChunksManifest, ChunksManifestError
from .stage import chunk_schema


def validate(m: Manifest) -> None:
    """Raise :class:`ChunksManifestError` unless the published chunks of ``m`` can be trained on."""
    contract = ChunksManifest.from_manifest(m)
    expected = chunk_schema(len(contract.feature_names))
    for split, info in sorted(contract.splits.items()):
        if not info.files:
            continue
        first = info.files[0]
        found = read_parquet_schema(first.url, m.store.storage_options).remove_metadata()
        if not found.equals(expected):
            diff = _schema_difference(expected, found)
            raise ChunksManifestError(
                f"{first.url} (split {split}) does not have the chunk schema of docs/data-format.md §7: {diff}"
            )


def _schema_difference(expected: pa.Schema, found: pa.Schema) -> str:
    """The first differences between two Arrow schemas, in words."""
    problems = []
    for field in expected:
        if field.name not in found.names:
            problems.append(f"column {field.name} is missing")
        elif not found.field(field.name).type.equals(field.type):
            problems.append(f"column {field.name} is {found.field(field.name).type}, expected {field.type}")
    extra = [n for n in found.names if n not in expected.names]
    if extra:
        problems.append(f"unexpected column(s) {', '.join(extra)}")
    return "; ".join(problems[:5]) or "column order differs"
