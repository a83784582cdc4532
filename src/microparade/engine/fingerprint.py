"""Stage fingerprints: what a stage's outputs depend on, hashed.

fingerprint = sha256 of ``{code version + hash of the package's source, stage name, the stage's
config sections, sha256 of each input's _MANIFEST.json}``. Execution settings (cluster, slurm,
runner, storage_options, shared_stages) are never part of it. The identity is the same with the
inputs' identities for their manifests: computable before any stage runs.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..config import Config
from .layout import is_imported
from .manifest import sha256_bytes
from .registry import StageSpec

if TYPE_CHECKING:
    from .manifest import Manifest


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version + a hash of the package's source files (changes with any code change)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return f"{__version__}+src.{h.hexdigest()[:16]}"


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _parts(cfg: Config, spec: StageSpec, inputs: dict[str, str]) -> dict[str, Any]:
    return {
        "code": code_version(),
        "stage": spec.name,
        "config": {k: cfg.section(k) for k in spec.config_keys},
        "inputs": {name: inputs[name] for name in spec.inputs},
    }


def stage_fingerprint(cfg: Config, spec: StageSpec, inputs: dict[str, Manifest]) -> tuple[str, dict[str, Any]]:
    parts = _parts(cfg, spec, {name: m.hash for name, m in inputs.items()})
    return sha256_bytes(canonical_json(parts)), parts


def stage_identity(cfg: Config, spec: StageSpec, input_identities: dict[str, str]) -> str:
    """What a stage will compute, known before anything runs: the fingerprint's parts with each
    input's identity in place of its manifest hash. Two runs whose stage has one identity get
    the same fingerprint once the shared inputs are published (what ``microparade sweep`` shares).
    A stage imported from elsewhere (``data.chunks``) is identified by where it is read from."""
    if is_imported(cfg, spec.name):
        return sha256_bytes(canonical_json({"stage": spec.name, "imported_from": cfg.stage_root(spec.name)}))
    return sha256_bytes(canonical_json(_parts(cfg, spec, input_identities)))
