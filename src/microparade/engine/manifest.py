"""Stage manifests: the files of a stage directory and the parsed ``_MANIFEST.json``.

Layout of a stage's directory ``{run_dir}/{stage}/``:

- ``_MANIFEST.json`` — written last, the only proof that a stage's outputs are complete; it lists
  every published file with rows, bytes and sha256, and the stage's fingerprint.
- ``_INCOMPLETE.json`` — exists while the stage runs (host, pid, Slurm job); a stage killed before
  publishing leaves it behind, and no manifest.
- ``_FAILED.json`` — written when the stage raised; holds the error and traceback.
- ``_staging/`` — where the stage writes while it runs; moved into place on success.
- ``_work/`` — persistent scratch that survives failures (training checkpoints); removed on success.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..storage import Store

MANIFEST = "_MANIFEST.json"
INCOMPLETE = "_INCOMPLETE.json"
FAILED = "_FAILED.json"
STAGING = "_staging"
WORK = "_work"
LEASE_DIR = "_lease"
MANIFEST_SCHEMA = "microparade.manifest/1"
RESERVED = (MANIFEST, INCOMPLETE, FAILED, STAGING, WORK, LEASE_DIR)


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class Manifest:
    """A published stage's manifest (see docs/data-format.md)."""

    stage: str
    data: dict[str, Any]
    raw: bytes
    store: Store

    @property
    def fingerprint(self) -> str:
        return self.data["fingerprint"]

    @property
    def hash(self) -> str:
        """sha256 of the manifest file: what downstream fingerprints include."""
        return sha256_bytes(self.raw)

    @property
    def files(self) -> list[dict[str, Any]]:
        return self.data["files"]

    @property
    def extra(self) -> dict[str, Any]:
        return self.data.get("extra", {})

    @property
    def slurm_job_id(self) -> str | None:
        """The Slurm job that published the stage, if it ran under Slurm."""
        slurm = self.data.get("slurm")
        return str(slurm["job_id"]) if slurm and slurm.get("job_id") else None

    def url(self, rel: str = "") -> str:
        return self.store.url(self.stage, rel)

    def file_urls(self, prefix: str = "", suffix: str = "") -> list[str]:
        return [self.url(f["path"]) for f in self.files if f["path"].startswith(prefix) and f["path"].endswith(suffix)]


def read_manifest(store: Store, stage: str) -> Manifest | None:
    if not store.exists(stage, MANIFEST):
        return None
    raw = store.read_bytes(f"{stage}/{MANIFEST}")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        return None
    if data.get("schema") != MANIFEST_SCHEMA or data.get("stage") != stage:
        return None
    return Manifest(stage, data, raw, store)


def verify_files(store: Store, manifest: Manifest, level: str) -> list[str]:
    """Problems with a manifest's files (empty when they all verify)."""
    problems = []
    for f in manifest.files:
        rel = f"{manifest.stage}/{f['path']}"
        if not store.exists(rel):
            problems.append(f"{rel}: missing")
            continue
        size = store.size(rel)
        if size != f["bytes"]:
            problems.append(f"{rel}: {size} bytes, manifest says {f['bytes']}")
            continue
        if level == "sha256" and store.sha256(rel) != f["sha256"]:
            problems.append(f"{rel}: sha256 differs from the manifest")
    return problems
