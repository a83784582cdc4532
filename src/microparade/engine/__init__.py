"""The stage engine: registry of stages, fingerprints, manifests, stage context, status, runner.

Modules, in dependency order: :mod:`.registry` (StageSpec: every fact about a stage),
:mod:`.manifest` (the stage directory's files and the parsed manifest), :mod:`.fingerprint`,
:mod:`.context` (what ``run(ctx)`` receives), :mod:`.status` (is a stage done?) and
:mod:`.runner` (run and publish atomically).
"""

from __future__ import annotations

from ..errors import PreemptedError, StageError
from .context import RunSession, StageContext
from .fingerprint import code_version, stage_fingerprint
from .manifest import Manifest, read_manifest, verify_files
from .registry import STAGE_NAMES, STAGES, StageSpec, pipeline
from .runner import run_pipeline, run_stage
from .status import StageStatus, compute_status, format_status, iter_status_rows

__all__ = [
    "STAGES",
    "STAGE_NAMES",
    "Manifest",
    "PreemptedError",
    "RunSession",
    "StageContext",
    "StageError",
    "StageSpec",
    "StageStatus",
    "code_version",
    "compute_status",
    "format_status",
    "iter_status_rows",
    "pipeline",
    "read_manifest",
    "run_pipeline",
    "run_stage",
    "stage_fingerprint",
    "verify_files",
]
