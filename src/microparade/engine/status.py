"""The state of a run's stages: the one place that decides whether a stage is done.

A stage is *done* when its manifest exists, its fingerprint equals the fingerprint computed now
(code version + the stage's config sections + the input manifests' hashes) and its files verify.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..errors import StageError
from ..storage import Store, format_bytes
from .fingerprint import stage_fingerprint
from .layout import check_shared_stages, is_imported, stage_store
from .lease import lease_state
from .manifest import FAILED, INCOMPLETE, MANIFEST, MANIFEST_SCHEMA, Manifest, read_manifest, verify_files
from .markers import read_marker
from .registry import StageSpec, pipeline


def not_done_reason(store: Store, manifest: Manifest | None, expected: str | None, verify: str | None) -> str | None:
    """Why a published stage is not done (None when it is): the single test of "done".

    ``expected`` is the fingerprint computed now (None when an input is not done); ``verify`` is
    ``"sha256"``, ``"size"`` or None (trust the manifest's file list without looking).
    """
    if manifest is None:
        return "not published"
    if expected is None:
        return "an input is not done"
    if manifest.fingerprint != expected:
        return "fingerprint changed (config, code or inputs)"
    if verify:
        problems = verify_files(store, manifest, verify)
        if problems:
            return f"{len(problems)} file(s) fail verification: {problems[0]}"
    return None


@dataclass
class StageStatus:
    name: str
    state: str  # done | stale | missing | running | incomplete | failed
    reason: str = ""
    fingerprint: str | None = None
    expected: str | None = None
    manifest: Manifest | None = None
    marker: dict[str, Any] | None = None

    @property
    def rows(self) -> int | None:
        return self.manifest.data.get("rows") if self.manifest else None

    @property
    def bytes(self) -> int | None:
        return self.manifest.data.get("bytes") if self.manifest else None

    @property
    def duration_s(self) -> float | None:
        return self.manifest.data.get("duration_s") if self.manifest else None

    @property
    def slurm_job_id(self) -> str | None:
        """The Slurm job of the stage's marker (running, failed or killed), else of its manifest."""
        if self.marker and self.marker.get("slurm"):
            return self.marker["slurm"].get("job_id")
        return self.manifest.slurm_job_id if self.manifest else None


def compute_status(cfg: Config, verify: str | None = "size") -> list[StageStatus]:
    """The state of every enabled stage, in pipeline order (shared stages read where they live)."""
    check_shared_stages(cfg)
    out: list[StageStatus] = []
    by_name: dict[str, StageStatus] = {}
    for spec in pipeline(cfg):
        store = stage_store(cfg, spec.name)
        manifest = read_manifest(store, spec.name)
        ups = [by_name[i] for i in spec.inputs]
        expected = None
        if all(u.state == "done" for u in ups):
            expected, _ = stage_fingerprint(cfg, spec, {u.name: u.manifest for u in ups})  # type: ignore[misc]
        if is_imported(cfg, spec.name):
            st = _imported(spec, store, manifest, verify)
        elif manifest is not None:
            st = StageStatus(spec.name, "done", fingerprint=manifest.fingerprint, expected=expected, manifest=manifest)
            if expected is None:
                st.state, st.reason = "stale", _inputs_not_done(ups)
            else:
                reason = not_done_reason(store, manifest, expected, verify)
                if reason is not None:
                    st.state, st.reason = "stale", reason
        else:
            st = _unpublished(cfg, store, spec.name, expected)
        out.append(st)
        by_name[spec.name] = st
    return out


def _inputs_not_done(ups: list[StageStatus]) -> str:
    """Why a published stage cannot be trusted when some of its inputs are not done: inputs never
    run here (missing upstream, e.g. a stage copied in from elsewhere) or inputs that changed."""
    missing = [u.name for u in ups if u.state == "missing"]
    other = [f"{u.name} {u.state}" for u in ups if u.state not in ("done", "missing")]
    parts = [f"input {', '.join(missing)} never run here (missing upstream)"] if missing else []
    return "; ".join(parts + ([f"input {', '.join(other)}"] if other else []))


def imported_reason(spec: StageSpec, store: Store, manifest: Manifest | None, verify: str | None) -> str | None:
    """Why a stage published elsewhere (``data.chunks``) cannot be read (None when it can): its
    manifest must exist, its files verify, and the stage's own validator accept it."""
    if manifest is None:
        if store.exists(spec.name, MANIFEST):
            return f"{store.url(spec.name, MANIFEST)} is not a {spec.name} manifest of schema {MANIFEST_SCHEMA}"
        return f"nothing is published at {store.url(spec.name)} (no {MANIFEST})"
    if verify:
        problems = verify_files(store, manifest, verify)
        if problems:
            return f"{len(problems)} file(s) fail verification: {problems[0]}"
    try:
        spec.load_import_validator()(manifest)
    except StageError as exc:
        return str(exc)
    return None


def _imported(spec: StageSpec, store: Store, manifest: Manifest | None, verify: str | None) -> StageStatus:
    reason = imported_reason(spec, store, manifest, verify)
    if reason is None:
        assert manifest is not None
        note = f"imported from {store.url(spec.name)}"
        return StageStatus(spec.name, "done", reason=note, fingerprint=manifest.fingerprint, manifest=manifest)
    return StageStatus(spec.name, "missing" if manifest is None else "stale", reason=reason, manifest=manifest)


def _unpublished(cfg: Config, store: Store, stage: str, expected: str | None) -> StageStatus:
    """A stage without a manifest: ``running`` (a live runner holds its lease), ``failed``,
    ``incomplete`` (started, and its runner stopped: rerun to resume) or ``missing``."""
    lease_now, lease, why = lease_state(store, stage, cfg.runner.lease_expiry_s)
    incomplete = read_marker(store, stage, INCOMPLETE)
    if lease_now == "live" and lease is not None:
        reason = f"{lease.owner()}, heartbeat {lease.heartbeat_age():.0f} s ago"
        return StageStatus(stage, "running", reason=reason, marker=incomplete or lease.record, expected=expected)
    failed = read_marker(store, stage, FAILED)
    if failed is not None:
        return StageStatus(stage, "failed", reason=str(failed.get("error", ""))[:200], marker=failed, expected=expected)
    if incomplete is not None:
        reason = "started but never published; rerun to resume"
        if lease_now == "dead" and lease is not None:
            reason = f"{lease.owner()} stopped ({why}); rerun to resume"
        return StageStatus(stage, "incomplete", reason=reason, marker=incomplete, expected=expected)
    return StageStatus(stage, "missing", expected=expected)


def format_status(rows: list[StageStatus], extra_cols: dict[str, dict[str, str]] | None = None) -> str:
    header = ["stage", "state", "rows", "bytes", "duration", "fingerprint"]
    extra_names: list[str] = []
    if extra_cols:
        for cols in extra_cols.values():
            for k in cols:
                if k not in extra_names:
                    extra_names.append(k)
    header += extra_names + ["note"]
    table = [header]
    for r in rows:
        dur = f"{r.duration_s:.1f}s" if r.duration_s is not None else "-"
        line = [
            r.name,
            r.state,
            f"{r.rows:,}" if r.rows is not None else "-",
            format_bytes(r.bytes),
            dur,
            (r.fingerprint or r.expected or "-")[:12],
        ]
        cols = (extra_cols or {}).get(r.name, {})
        line += [cols.get(k, "-") for k in extra_names]
        line.append(r.reason)
        table.append(line)
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


def iter_status_rows(statuses: Iterable[StageStatus]) -> list[dict[str, Any]]:
    return [
        {
            "stage": s.name,
            "state": s.state,
            "rows": s.rows,
            "bytes": s.bytes,
            "duration_s": s.duration_s,
            "fingerprint": s.fingerprint,
            "slurm_job_id": s.slurm_job_id,
            "reason": s.reason,
        }
        for s in statuses
    ]
