"""The stage runner: staging, atomic publication, resumable reruns.

For each selected stage in pipeline order: skip it when it is done (:mod:`.status`), else run it
into ``{stage}/_staging/`` and publish: move the staged files into place, then write
``_MANIFEST.json`` atomically, the commit point (see :mod:`.manifest` for the directory layout).
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

from ..compute.backends import process_rank
from ..compute.cluster import require_cluster
from ..compute.factory import require_backend
from ..config import Config
from ..errors import PreemptedError, StageError
from ..storage import Store, format_bytes, parquet_rows, require_filesystem
from .context import RunSession, StageContext
from .fingerprint import code_version, git_commit, stage_fingerprint
from .layout import check_shared_stages, is_imported, is_read_only, is_shared, stage_store
from .lease import StageLease, follow_lease, stage_lease
from .manifest import (
    FAILED,
    INCOMPLETE,
    MANIFEST,
    MANIFEST_SCHEMA,
    RESERVED,
    STAGING,
    WORK,
    Manifest,
    now_iso,
    read_manifest,
)
from .markers import owner_marker
from .registry import StageSpec, by_name, pipeline
from .status import compute_status, imported_reason, not_done_reason

log = logging.getLogger("microparade")


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
            rows = parquet_rows(store.url(srel), store.storage_options)
        entry["rows"] = rows
        entry.update(meta)
        files.append(entry)
    return files


def run_stage(
    cfg: Config, spec: StageSpec, store: Store, inputs: dict[str, Manifest], session: RunSession
) -> Manifest | None:
    """Run one stage to completion under its lease and publish it atomically; raise
    :class:`StageError` on failure (or while another live runner holds the lease).

    Returns the published manifest, or None in a non-zero rank of a distributed launch.
    """
    done = _run_leased(cfg, spec, store, inputs, session, forced=True)
    return done[0] if done else None


def _compute_only(
    cfg: Config, spec: StageSpec, store: Store, inputs: dict[str, Manifest], session: RunSession
) -> tuple[Manifest, str] | None:
    """A non-zero rank of a multi-process stage (torchrun, or srun with several tasks): rank 0 owns
    the lease, the markers, the staging directory and the publication; this process computes once
    rank 0 holds the lease (:func:`~.lease.follow_lease`). Returns ``(manifest, "skipped")`` when rank
    0 found the stage done after waiting for another owner, else None."""
    lease = follow_lease(store, spec.name, cfg.runner)
    if lease.released:  # rank 0 let it go before this rank computed: published, or failed
        done = _done(cfg, spec, store, inputs)
        if done is None:
            raise StageError(f"stage {spec.name}: rank 0 of this launch released its lease without publishing")
        return done
    fingerprint, _ = stage_fingerprint(cfg, spec, inputs)
    spec.load()(StageContext(cfg, spec, store, inputs, fingerprint, session))
    return None


def _compute_and_publish(
    cfg: Config,
    spec: StageSpec,
    store: Store,
    inputs: dict[str, Manifest],
    session: RunSession,
    lease: StageLease,
) -> Manifest:
    fingerprint, fp_parts = stage_fingerprint(cfg, spec, inputs)
    ctx = StageContext(cfg, spec, store, inputs, fingerprint, session)
    started = time.time()
    marker = begin_publication(store, spec.name, fingerprint, lease)
    log.info("[%s] running (fingerprint %s)", spec.name, fingerprint[:12])
    _execute(ctx, marker)
    lease.check()
    return _publish(ctx, marker, fp_parts, started)


def begin_publication(store: Store, name: str, fingerprint: str, lease: StageLease) -> dict[str, Any]:
    """Distrust the previous outputs of directory ``name`` (whose ``lease`` this process holds), mark
    it incomplete and give it a fresh staging dir; returns the marker (also used by
    ``microparade sweep``'s comparison report)."""
    store.rm_file(f"{name}/{MANIFEST}")
    store.rm_file(f"{name}/{FAILED}")
    marker = owner_marker(name, fingerprint, lease.epoch)
    store.write_json_atomic(f"{name}/{INCOMPLETE}", marker)
    store.rm(f"{name}/{STAGING}")
    store.makedirs(f"{name}/{STAGING}")
    return marker


def _execute(ctx: StageContext, marker: dict[str, Any]) -> None:
    """Call the stage; a failure is recorded in ``_FAILED.json`` and raised as :class:`StageError`."""
    store, name = ctx.store, ctx.name
    try:
        ctx.spec.load()(ctx)
    except PreemptedError:
        # State was saved under _work; the stage stays incomplete and resumes on rerun.
        log.warning("[%s] stopped on a signal after saving its state; rerun to resume", name)
        raise
    except BaseException as exc:
        failed = dict(marker)
        failed.update(finished=now_iso(), error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        try:
            store.write_json_atomic(f"{name}/{FAILED}", failed)
            store.rm_file(f"{name}/{INCOMPLETE}")
        except Exception:  # pragma: no cover - storage gone; the incomplete marker stays
            log.exception("[%s] could not record the failure", name)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise StageError(f"stage {name} failed: {type(exc).__name__}: {exc}") from exc


def _publish(ctx: StageContext, marker: dict[str, Any], fp_parts: dict[str, Any], started: float) -> Manifest:
    """Describe the staged files, move them into place, then commit with the manifest."""
    store, name = ctx.store, ctx.name
    files = _collect_files(ctx)
    move_into_place(store, name, [f["path"] for f in files])
    finished = time.time()
    rows = ctx.total_rows
    if rows is None and any(f["rows"] is not None for f in files):
        rows = sum(f["rows"] or 0 for f in files)
    manifest = manifest_document(name, ctx.fingerprint, fp_parts, files, rows, marker, finished - started, ctx.extra)
    commit_publication(store, name, manifest)
    if not ctx.cfg.runner.keep_work:
        store.rm(f"{name}/{WORK}")
    published = read_manifest(store, name)
    if published is None:
        raise StageError(f"stage {name}: the manifest just written to {store.url(name, MANIFEST)} does not read back")
    shown_rows = f"{rows:,}" if rows is not None else "-"
    log.info(
        "[%s] done in %.1fs: %d file(s), %s rows, %s",
        name,
        finished - started,
        len(files),
        shown_rows,
        format_bytes(manifest["bytes"]),
    )
    return published


def move_into_place(store: Store, name: str, paths: list[str]) -> None:
    """Replace the published files of directory ``name`` by ``paths``, staged in ``{name}/_staging/``."""
    for rel in store.walk_files(name):
        if rel.split("/", 1)[0] not in RESERVED:
            store.rm_file(f"{name}/{rel}")
    for path in paths:
        store.move(f"{name}/{STAGING}/{path}", f"{name}/{path}")


def manifest_document(
    name: str,
    fingerprint: str,
    fp_parts: dict[str, Any],
    files: list[dict[str, Any]],
    rows: int | None,
    marker: dict[str, Any],
    duration_s: float,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The ``_MANIFEST.json`` of directory ``name`` published by the owner of ``marker`` (see docs/data-format.md)."""
    return {
        "schema": MANIFEST_SCHEMA,
        "stage": name,
        "fingerprint": fingerprint,
        "fingerprint_inputs": fp_parts,
        "code_version": code_version(),
        "git_commit": git_commit(),
        "files": files,
        "rows": rows,
        "bytes": sum(f["bytes"] for f in files),
        "started": marker["started"],
        "finished": now_iso(),
        "duration_s": round(duration_s, 3),
        "host": marker["host"],
        "pid": marker["pid"],
        "slurm": marker["slurm"],
        "extra": extra,
    }


def commit_publication(store: Store, name: str, manifest: dict[str, Any]) -> None:
    """Write ``{name}/_MANIFEST.json`` (the commit point), then drop the incomplete marker and the staging dir."""
    store.write_json_atomic(f"{name}/{MANIFEST}", manifest)
    store.rm_file(f"{name}/{INCOMPLETE}")
    store.rm(f"{name}/{STAGING}")


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


def preflight(
    cfg: Config, *, only: str | None = None, from_stage: str | None = None, until: str | None = None
) -> list[str]:
    """The checks a run makes before it writes anything; returns the selected stages.

    Raises (one line each) for a selection that does not exist or names a stage this run only
    reads, and for what this Python lacks for the config (s3fs for s3://, torch-xla, dask-cuda...):
    now, not as a traceback after hours of upstream work.
    """
    check_shared_stages(cfg)
    selected = select_stages(cfg, only, from_stage)
    if until is not None:
        if until not in selected:
            raise StageError(f"--until {until!r} is not among the selected stages {selected}")
        selected = selected[: selected.index(until) + 1]
    for url in (cfg.run_dir, *cfg.shared_stages.values(), *cfg.data.raw.train, *cfg.data.raw.valid, *cfg.data.raw.test):
        require_filesystem(url)
    if cfg.data.chunks is not None:
        require_filesystem(cfg.data.chunks)
    if any(by_name(name).dask for name in selected):
        require_cluster(cfg)
    for name in selected:
        if (only or from_stage) == name and is_read_only(cfg, name):
            how = "imported (data.chunks)" if is_imported(cfg, name) else "shared"
            raise StageError(f"stage {name} is {how} from {cfg.stage_root(name)}: this run only reads it")
        backend = cfg.stage_backend(name)
        if backend is not None:
            require_backend(backend, f"{name}.backend")
    return selected


def run_pipeline(
    cfg: Config,
    *,
    only: str | None = None,
    from_stage: str | None = None,
    until: str | None = None,
    force: bool = False,
) -> dict[str, str]:
    """Run the selected stages, skipping done ones; returns ``{stage: "ran" | "skipped" | "shared" |
    "imported"}``.

    ``from_stage`` forces that stage (and, through fingerprints, everything after it) to rerun;
    ``only`` runs one stage, whose inputs must be done; ``force`` reruns every selected stage.
    Stages in ``shared_stages`` are never run here: each must be done where it lives; so are chunks
    imported with ``data.chunks``, which must verify and validate where they live.
    """
    selected = preflight(cfg, only=only, from_stage=from_stage, until=until)
    store = Store(cfg.run_dir, cfg.storage_options)
    save_resolved_config(cfg, store)
    session = RunSession(cfg)
    outcome: dict[str, str] = {}
    manifests: dict[str, Manifest] = {}
    try:
        for spec in pipeline(cfg):
            ups = {i: manifests.get(i) or read_manifest(stage_store(cfg, i), i) for i in spec.inputs}
            if spec.name not in selected:
                m = read_manifest(stage_store(cfg, spec.name), spec.name)
                if m is not None:
                    manifests[spec.name] = m
                continue
            inputs = _published_inputs(spec, ups)
            refusal = _stale_inputs(cfg, spec, inputs) if (only or from_stage) and spec.name == selected[0] else None
            if refusal:
                raise StageError(refusal)
            if is_shared(cfg, spec.name):
                manifests[spec.name] = _shared_done(cfg, spec, inputs)
                outcome[spec.name] = "shared"
                continue
            if is_imported(cfg, spec.name):
                manifests[spec.name] = _imported_done(cfg, spec)
                outcome[spec.name] = "imported"
                continue
            forced = force or (from_stage == spec.name)
            done = None if forced else _done(cfg, spec, store, inputs)
            if done is None:
                done = _run_leased(cfg, spec, store, inputs, session, forced)
            if done is not None:
                manifests[spec.name], outcome[spec.name] = done
            else:  # a non-zero rank: rank 0 publishes
                outcome[spec.name] = "ran"
    finally:
        session.close()
    return outcome


def _done(cfg: Config, spec: StageSpec, store: Store, inputs: dict[str, Manifest]) -> tuple[Manifest, str] | None:
    """``(manifest, "skipped")`` when the stage is done; None (with the reason logged) when not."""
    existing, expected, reason = _published_state(cfg, spec, store, inputs)
    if existing is not None and reason is None:
        log.info("[%s] skipped: done (fingerprint %s)", spec.name, expected[:12])
        return existing, "skipped"
    if existing is not None and existing.fingerprint == expected:
        log.warning("[%s] published files fail verification, rerunning: %s", spec.name, reason)
    return None


def _run_leased(
    cfg: Config, spec: StageSpec, store: Store, inputs: dict[str, Manifest], session: RunSession, forced: bool
) -> tuple[Manifest, str] | None:
    """Run the stage under its lease (rank 0 takes it; the other ranks only compute); None in those."""
    if process_rank() > 0:
        return _compute_only(cfg, spec, store, inputs, session)
    with stage_lease(store, spec.name, cfg.runner) as (lease, waited):
        if waited and not forced:  # the owner we waited for may have published it
            done = _done(cfg, spec, store, inputs)
            if done is not None:
                return done
        return _compute_and_publish(cfg, spec, store, inputs, session, lease), "ran"


def _published_inputs(spec: StageSpec, ups: dict[str, Manifest | None]) -> dict[str, Manifest]:
    missing = [i for i, m in ups.items() if m is None]
    if missing:
        raise StageError(
            f"stage {spec.name} needs {', '.join(missing)}, which has not been published; "
            f"run without --only/--from (or with --from {missing[0]}) first"
        )
    return {i: m for i, m in ups.items() if m is not None}


def _published_state(
    cfg: Config, spec: StageSpec, store: Store, inputs: dict[str, Manifest]
) -> tuple[Manifest | None, str, str | None]:
    """The stage's published manifest in ``store``, the fingerprint expected now, and why the stage
    is not done (None when it is)."""
    existing = read_manifest(store, spec.name)
    expected, _ = stage_fingerprint(cfg, spec, inputs)
    return existing, expected, not_done_reason(store, existing, expected, cfg.runner.verify)


def _shared_done(cfg: Config, spec: StageSpec, inputs: dict[str, Manifest]) -> Manifest:
    """The manifest of a shared stage, which must be done where it lives (never run from here)."""
    store = stage_store(cfg, spec.name)
    existing, expected, reason = _published_state(cfg, spec, store, inputs)
    if existing is None or reason is not None:
        raise StageError(
            f"stage {spec.name} is shared from {store.url(spec.name)} and is not done ({reason}); this run only "
            f"reads it: the job that owns it computes it (`microparade sweep run|submit`, or "
            f"`microparade run {store.url('config.yaml')} --only {spec.name}`)"
        )
    log.info("[%s] shared: done at %s (fingerprint %s)", spec.name, store.url(spec.name), expected[:12])
    return existing


def _imported_done(cfg: Config, spec: StageSpec) -> Manifest:
    """The manifest of a stage published elsewhere (``data.chunks``), which must verify and validate."""
    store = stage_store(cfg, spec.name)
    manifest = read_manifest(store, spec.name)
    reason = imported_reason(spec, store, manifest, cfg.runner.verify)
    if manifest is None or reason is not None:
        raise StageError(f"data.chunks: the {spec.name} at {store.url(spec.name)} cannot be used: {reason}")
    rows = manifest.data.get("rows")
    shown = f"{rows:,}" if isinstance(rows, int) else "-"
    log.info("[%s] imported: %s (%s rows, verified)", spec.name, store.url(spec.name), shown)
    return manifest


def _stale_inputs(cfg: Config, spec: StageSpec, inputs: dict[str, Manifest]) -> str | None:
    """Why an input of the first selected stage is not done, for --only/--from (None when all are)."""
    status = {s.name: s for s in compute_status(cfg, verify=None)}
    bad = [status[i] for i in inputs if status.get(i) is not None and status[i].state != "done"]
    if not bad:
        return None
    first = bad[0]
    if "missing upstream" not in first.reason:
        return f"stage {spec.name}: input {first.name} is {first.state} ({first.reason}); rerun from {first.name}"
    hint = "run without --only/--from to compute them"
    if by_name(first.name).validate_import is not None:
        hint = (
            f"to start from {first.name} made elsewhere, set data.{first.name}=ROOT, the root holding "
            f'{first.name}/ (docs/training.md, "Starting from chunks made elsewhere"); else {hint}'
        )
    where = stage_store(cfg, first.name).url(first.name)
    return f"stage {spec.name}: input {first.name} at {where} cannot be trusted here: {first.reason}; {hint}"
