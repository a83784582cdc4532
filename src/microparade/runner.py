"""The stage runner: fingerprints, staging, atomic publication, resumable reruns, status.

Layout of a stage's directory ``{run_dir}/{stage}/``:

- ``_MANIFEST.json`` — written last, the only proof that a stage's outputs are complete; it lists
  every published file with rows, bytes and sha256, and the stage's fingerprint.
- ``_INCOMPLETE.json`` — exists while the stage runs (host, pid, Slurm job); a stage killed before
  publishing leaves it behind, and no manifest.
- ``_FAILED.json`` — written when the stage raised; holds the error and traceback.
- ``_staging/`` — where the stage writes while it runs; moved into place on success.
- ``_work/`` — persistent scratch that survives failures (training checkpoints); removed on success.

A stage is *done* when its manifest exists, its fingerprint equals the fingerprint computed now
(code version + the stage's config sections + the input manifests' hashes) and its files verify.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import logging
import os
import socket
import sys
import time
import traceback
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .config import Config
from .stages import StageSpec, pipeline
from .storage import Store

log = logging.getLogger("microparade")

MANIFEST = "_MANIFEST.json"
INCOMPLETE = "_INCOMPLETE.json"
FAILED = "_FAILED.json"
STAGING = "_staging"
WORK = "_work"
MANIFEST_SCHEMA = "microparade.manifest/1"
_RESERVED = (MANIFEST, INCOMPLETE, FAILED, STAGING, WORK)


class StageError(RuntimeError):
    """A stage failed; the message says which and why."""


class PreemptedError(RuntimeError):
    """A stage stopped early on a signal after saving its state; rerun to resume."""

    exit_code = 124


# ----------------------------------------------------------------------------------------------
# fingerprints
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version + a hash of the package's source files (changes with any code change)."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return f"{__version__}+src.{h.hexdigest()[:16]}"


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    import subprocess

    root = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def slurm_info() -> dict[str, Any] | None:
    env = os.environ
    if "SLURM_JOB_ID" not in env:
        return None
    keys = {
        "job_id": "SLURM_JOB_ID",
        "array_job_id": "SLURM_ARRAY_JOB_ID",
        "array_task_id": "SLURM_ARRAY_TASK_ID",
        "job_name": "SLURM_JOB_NAME",
        "nodelist": "SLURM_JOB_NODELIST",
        "partition": "SLURM_JOB_PARTITION",
        "restart_count": "SLURM_RESTART_COUNT",
        "cluster": "SLURM_CLUSTER_NAME",
    }
    return {k: env[v] for k, v in keys.items() if v in env}


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


# ----------------------------------------------------------------------------------------------
# manifests
# ----------------------------------------------------------------------------------------------
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

    def url(self, rel: str = "") -> str:
        return self.store.url(self.stage, rel)

    def file_urls(self, prefix: str = "", suffix: str = "") -> list[str]:
        return [
            self.url(f["path"]) for f in self.files if f["path"].startswith(prefix) and f["path"].endswith(suffix)
        ]


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


# ----------------------------------------------------------------------------------------------
# stage context
# ----------------------------------------------------------------------------------------------
@dataclass
class StageContext:
    """What a stage's ``run(ctx)`` gets: config, inputs, where to write, shared services."""

    cfg: Config
    spec: StageSpec
    store: Store
    inputs: dict[str, Manifest]
    fingerprint: str
    session: RunSession
    #: Per-file metadata the stage knows (``rows``, ``sha256``, ``bytes`` or anything else),
    #: keyed by path relative to the staging dir; merged into the manifest's file entries.
    file_meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Stage-specific manifest content (``manifest["extra"]``).
    extra: dict[str, Any] = field(default_factory=dict)
    #: The manifest's total ``rows`` when not every file holds data rows (e.g. a quarantine file);
    #: default: the sum over files.
    total_rows: int | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def staging_rel(self) -> str:
        return f"{self.name}/{STAGING}"

    def out_url(self, rel: str = "") -> str:
        """Full URL under the stage's staging directory (give this to writers, Dask included)."""
        return self.store.url(self.staging_rel, rel)

    def out_path(self, rel: str = "") -> str:
        """Filesystem path under staging (for ``ctx.store.fs`` calls)."""
        return self.store.path(self.staging_rel, rel)

    def open_out(self, rel: str, mode: str = "wb"):
        return self.store.open(f"{self.staging_rel}/{rel}", mode)

    def work_url(self, rel: str = "") -> str:
        """Persistent scratch (survives failures, e.g. checkpoints); removed after publishing."""
        return self.store.url(self.name, WORK, rel)

    @property
    def work_rel(self) -> str:
        return f"{self.name}/{WORK}"

    def input(self, name: str) -> Manifest:
        try:
            return self.inputs[name]
        except KeyError:
            raise StageError(f"stage {self.name} needs the outputs of {name}, which is not an input") from None

    def client(self):
        """The run's Dask client (started on first use, shared by the stages of one run)."""
        return self.session.client()

    def log(self, msg: str, *args: Any) -> None:
        log.info(f"[{self.name}] " + msg, *args)


# ----------------------------------------------------------------------------------------------
# status
# ----------------------------------------------------------------------------------------------
@dataclass
class StageStatus:
    name: str
    state: str  # done | stale | missing | incomplete | failed | blocked
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
        for src in (self.marker, self.manifest.data if self.manifest else None):
            if src and src.get("slurm"):
                return src["slurm"].get("job_id")
        return None


def stage_fingerprint(cfg: Config, spec: StageSpec, inputs: dict[str, Manifest]) -> tuple[str, dict[str, Any]]:
    parts = {
        "code": code_version(),
        "stage": spec.name,
        "config": {k: cfg.section(k) for k in spec.config_keys},
        "inputs": {name: inputs[name].hash for name in spec.inputs},
    }
    return sha256_bytes(canonical_json(parts)), parts


def _read_marker(store: Store, stage: str, name: str) -> dict[str, Any] | None:
    if not store.exists(stage, name):
        return None
    try:
        return store.read_json(f"{stage}/{name}")
    except (json.JSONDecodeError, OSError):
        return {"error": "unreadable marker"}


def compute_status(cfg: Config, store: Store, verify: str | None = "size") -> list[StageStatus]:
    """The state of every enabled stage, in pipeline order."""
    out: list[StageStatus] = []
    by_name: dict[str, StageStatus] = {}
    for spec in pipeline(cfg):
        manifest = read_manifest(store, spec.name)
        failed = _read_marker(store, spec.name, FAILED)
        incomplete = _read_marker(store, spec.name, INCOMPLETE)
        ups = [by_name[i] for i in spec.inputs]
        expected = None
        if all(u.state == "done" for u in ups):
            expected, _ = stage_fingerprint(cfg, spec, {u.name: u.manifest for u in ups})  # type: ignore[misc]
        if manifest is not None:
            st = StageStatus(spec.name, "done", fingerprint=manifest.fingerprint, expected=expected, manifest=manifest)
            if expected is None:
                bad = [u.name for u in ups if u.state != "done"]
                st.state, st.reason = "stale", f"input {', '.join(bad)} not done"
            elif manifest.fingerprint != expected:
                st.state, st.reason = "stale", "fingerprint changed (config, code or inputs)"
            elif verify:
                problems = verify_files(store, manifest, verify)
                if problems:
                    st.state, st.reason = "stale", f"{len(problems)} file(s) fail verification: {problems[0]}"
        elif failed is not None:
            st = StageStatus(spec.name, "failed", reason=str(failed.get("error", ""))[:200], marker=failed, expected=expected)
        elif incomplete is not None:
            st = StageStatus(spec.name, "incomplete", reason="started but never published (running or killed)", marker=incomplete, expected=expected)
        else:
            st = StageStatus(spec.name, "missing", expected=expected)
        out.append(st)
        by_name[spec.name] = st
    return out


def format_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)  # pragma: no cover


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


# ----------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------
class RunSession:
    """State shared by the stages of one ``run`` invocation (the Dask client)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self._stack = ExitStack()
        self._client = None

    def client(self):
        if self._client is None:
            from .cluster import dask_client

            self._client = self._stack.enter_context(dask_client(self.cfg))
        return self._client

    def close(self) -> None:
        self._stack.close()
        self._client = None


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _check_not_running(store: Store, stage: str) -> None:
    marker = _read_marker(store, stage, INCOMPLETE)
    if not marker:
        return
    if marker.get("host") == socket.gethostname() and isinstance(marker.get("pid"), int):
        if marker["pid"] != os.getpid() and _pid_alive(marker["pid"]):
            raise StageError(
                f"stage {stage} is already running in process {marker['pid']} on this host "
                f"(started {marker.get('started')}); wait for it or kill it first"
            )


def _collect_files(ctx: StageContext) -> list[dict[str, Any]]:
    store = ctx.store
    files = []
    for rel in store.walk_files(ctx.staging_rel):
        meta = dict(ctx.file_meta.get(rel, {}))
        srel = f"{ctx.staging_rel}/{rel}"
        entry: dict[str, Any] = {"path": rel}
        entry["bytes"] = int(meta.pop("bytes", None) or store.size(srel))
        entry["sha256"] = meta.pop("sha256", None) or store.sha256(srel)
        rows = meta.pop("rows", None)
        if rows is None and rel.endswith(".parquet"):
            import pyarrow.parquet as pq

            with store.open(srel, "rb") as f:
                rows = pq.ParquetFile(f).metadata.num_rows
        entry["rows"] = rows
        entry.update(meta)
        files.append(entry)
    return files


def run_stage(cfg: Config, spec: StageSpec, store: Store, inputs: dict[str, Manifest], session: RunSession) -> Manifest | None:
    """Run one stage to completion and publish it atomically; raise :class:`StageError` on failure.

    Returns the published manifest, or None in a non-zero rank of a distributed launch.
    """
    name = spec.name
    fingerprint, fp_parts = stage_fingerprint(cfg, spec, inputs)
    from .backends import process_rank

    if process_rank() > 0:
        # A non-zero rank of a multi-process stage (torchrun, or srun with several tasks): rank 0
        # owns the markers, the staging directory and the publication; this process only computes.
        spec.load()(StageContext(cfg, spec, store, inputs, fingerprint, session))
        return None
    _check_not_running(store, name)
    # 1. Nothing of the previous outputs is trusted from here on.
    store.rm_file(f"{name}/{MANIFEST}")
    store.rm_file(f"{name}/{FAILED}")
    started = time.time()
    marker = {
        "stage": name,
        "fingerprint": fingerprint,
        "started": now_iso(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm": slurm_info(),
        "argv": sys.argv,
    }
    store.write_json_atomic(f"{name}/{INCOMPLETE}", marker)
    store.rm(f"{name}/{STAGING}")
    store.makedirs(f"{name}/{STAGING}")
    ctx = StageContext(cfg, spec, store, inputs, fingerprint, session)
    log.info("[%s] running (fingerprint %s)", name, fingerprint[:12])
    try:
        spec.load()(ctx)
    except PreemptedError:
        # State was saved under _work; the stage stays incomplete and resumes on rerun.
        log.warning("[%s] stopped on a signal after saving its state; rerun to resume", name)
        raise
    except BaseException as exc:
        failed = dict(marker)
        failed.update(
            finished=now_iso(),
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
        )
        try:
            store.write_json_atomic(f"{name}/{FAILED}", failed)
            store.rm_file(f"{name}/{INCOMPLETE}")
        except Exception:  # pragma: no cover - storage gone; the incomplete marker stays
            log.exception("[%s] could not record the failure", name)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise StageError(f"stage {name} failed: {type(exc).__name__}: {exc}") from exc

    # 2. Describe the staged files, then move them into place and commit with the manifest.
    files = _collect_files(ctx)
    for rel in store.walk_files(name):
        top = rel.split("/", 1)[0]
        if top not in _RESERVED:
            store.rm_file(f"{name}/{rel}")
    for f in files:
        store.move(f"{name}/{STAGING}/{f['path']}", f"{name}/{f['path']}")
    finished = time.time()
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "stage": name,
        "fingerprint": fingerprint,
        "fingerprint_inputs": fp_parts,
        "code_version": code_version(),
        "git_commit": git_commit(),
        "files": files,
        "rows": ctx.total_rows
        if ctx.total_rows is not None
        else (sum(f["rows"] or 0 for f in files) if any(f["rows"] is not None for f in files) else None),
        "bytes": sum(f["bytes"] for f in files),
        "started": marker["started"],
        "finished": now_iso(),
        "duration_s": round(finished - started, 3),
        "host": marker["host"],
        "pid": marker["pid"],
        "slurm": marker["slurm"],
        "extra": ctx.extra,
    }
    store.write_json_atomic(f"{name}/{MANIFEST}", manifest)
    store.rm_file(f"{name}/{INCOMPLETE}")
    store.rm(f"{name}/{STAGING}")
    if not cfg.runner.keep_work:
        store.rm(f"{name}/{WORK}")
    m = read_manifest(store, name)
    assert m is not None
    log.info(
        "[%s] done in %.1fs: %d file(s), %s rows, %s",
        name,
        finished - started,
        len(files),
        f"{manifest['rows']:,}" if manifest["rows"] is not None else "-",
        format_bytes(manifest["bytes"]),
    )
    return m


def save_resolved_config(cfg: Config, store: Store) -> None:
    """``{run_dir}/config.yaml``: the resolved config, ``storage_options`` values redacted
    (they may hold credentials; the run dir is often shared)."""
    import yaml

    data = cfg.to_dict()
    data["storage_options"] = {k: "<redacted>" for k in data["storage_options"]}
    store.write_bytes_atomic("config.yaml", yaml.safe_dump(data, sort_keys=False).encode())


def select_stages(cfg: Config, only: str | None = None, from_stage: str | None = None) -> list[str]:
    names = [s.name for s in pipeline(cfg)]
    for n in (only, from_stage):
        if n is not None and n not in names:
            raise StageError(f"stage {n!r} is not in this pipeline; stages: {', '.join(names)}")
    if only:
        return [only]
    if from_stage:
        return names[names.index(from_stage) :]
    return names


def run_pipeline(
    cfg: Config,
    *,
    only: str | None = None,
    from_stage: str | None = None,
    until: str | None = None,
    force: bool = False,
) -> dict[str, str]:
    """Run the selected stages, skipping done ones; returns ``{stage: "ran" | "skipped"}``.

    ``from_stage`` forces that stage (and, through fingerprints, everything after it) to rerun;
    ``only`` runs one stage, whose inputs must be done; ``force`` reruns every selected stage.
    """
    store = Store(cfg.run_dir, cfg.storage_options)
    selected = select_stages(cfg, only, from_stage)
    if until is not None:
        if until not in selected:
            raise StageError(f"--until {until!r} is not among the selected stages {selected}")
        selected = selected[: selected.index(until) + 1]
    save_resolved_config(cfg, store)
    session = RunSession(cfg)
    outcome: dict[str, str] = {}
    manifests: dict[str, Manifest] = {}
    try:
        for spec in pipeline(cfg):
            ups = {i: manifests.get(i) or read_manifest(store, i) for i in spec.inputs}
            if spec.name not in selected:
                m = read_manifest(store, spec.name)
                if m is not None:
                    manifests[spec.name] = m
                continue
            missing = [i for i, m in ups.items() if m is None]
            if missing:
                raise StageError(
                    f"stage {spec.name} needs {', '.join(missing)}, which has not been published; "
                    f"run without --only/--from (or with --from {missing[0]}) first"
                )
            inputs = {i: m for i, m in ups.items() if m is not None}
            stale_inputs = _stale_inputs(cfg, store, spec, inputs) if (only or from_stage) and spec.name == selected[0] else []
            if stale_inputs:
                raise StageError(
                    f"stage {spec.name}: input {', '.join(stale_inputs)} is stale (its config or code changed); "
                    f"rerun from {stale_inputs[0]}"
                )
            forced = force or (from_stage == spec.name)
            if not forced:
                existing = read_manifest(store, spec.name)
                expected, _ = stage_fingerprint(cfg, spec, inputs)
                if existing is not None and existing.fingerprint == expected:
                    problems = verify_files(store, existing, cfg.runner.verify)
                    if not problems:
                        log.info("[%s] skipped: done (fingerprint %s)", spec.name, expected[:12])
                        manifests[spec.name] = existing
                        outcome[spec.name] = "skipped"
                        continue
                    log.warning("[%s] published files fail verification, rerunning: %s", spec.name, problems[0])
            published = run_stage(cfg, spec, store, inputs, session)
            if published is not None:
                manifests[spec.name] = published
            outcome[spec.name] = "ran"
    finally:
        session.close()
    return outcome


def _stale_inputs(cfg: Config, store: Store, spec: StageSpec, inputs: dict[str, Manifest]) -> list[str]:
    """Inputs whose own fingerprint no longer matches the config (only checked for --only/--from)."""
    status = {s.name: s for s in compute_status(cfg, store, verify=None)}
    return [i for i in inputs if status.get(i) is not None and status[i].state != "done"]


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
