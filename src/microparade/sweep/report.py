"""The comparison report of a sweep: ``{sweep_dir}/report/``.

- ``index.html`` — self-contained (inline CSS, embedded plots), links to every run's own report;
- ``report.md`` — the same tables, plots referenced as ``plots/*.png``;
- ``summary.json`` — every cell, difference, interval and cost for machines;
- ``_MANIFEST.json`` — written last, like a stage's (:mod:`microparade.engine.runner`): the files with
  bytes and sha256, and a fingerprint of the code, the experiment's comparisons and report settings,
  and every run's train and evaluate manifests. :func:`report_state` compares it with the plan's.

Content: :mod:`.report_data` (the rows, the GBDT, the bootstrap), :mod:`.report_cost` (wall time,
Slurm accounting), :mod:`.report_sections` (the document). Rendering is the run report's
(:mod:`microparade.stages.report.render`).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from ..engine.fingerprint import canonical_json, code_version
from ..engine.layout import stage_store
from ..engine.lease import stage_lease
from ..engine.manifest import INCOMPLETE, STAGING, read_manifest, sha256_bytes
from ..engine.runner import begin_publication, commit_publication, manifest_document, move_into_place
from ..engine.status import not_done_reason
from ..errors import StageError
from ..recsys_format import TARGETS
from ..stages.report.render import figures, render_html, render_markdown
from ..storage import Store
from .plan import SweepPlan
from .report_cost import Cost, collect_cost
from .report_data import GBDT, SweepData, collect, gbdt_run, tables
from .report_sections import build_sections, seed_stats
from .state import run_statuses

log = logging.getLogger("microparade")

#: The report's directory under ``{sweep_dir}``.
REPORT = "report"
SUMMARY_SCHEMA = "microparade.sweep-report/1"


def _fingerprint_parts(plan: SweepPlan) -> tuple[dict[str, Any], list[str]]:
    """What the report depends on, and the runs whose train or evaluate stage has no manifest."""
    spec = plan.experiment.spec
    runs: dict[str, dict[str, str]] = {}
    missing = []
    for run in plan.runs:
        for stage in ("train", "evaluate"):
            m = read_manifest(stage_store(run.cfg, stage), stage)
            if m is None:
                missing.append(run.label)
                break
            runs.setdefault(run.label, {})[stage] = m.hash
    experiment = {
        "name": spec.name,
        "description": spec.description,
        "variants": list(spec.variants),
        "comparisons": {k: c.model_dump(mode="json") for k, c in tables(plan).items()},
        "report": spec.report.model_dump(mode="json"),
        "gbdt_max_rows": gbdt_run(plan).cfg.report.baseline_max_rows,
    }
    return {"code": code_version(), "experiment": experiment, "runs": runs}, missing


def _what_changed(old: dict[str, Any], new: dict[str, Any]) -> str:
    if old.get("code") != new["code"]:
        return "code changed"
    if old.get("experiment") != new["experiment"]:
        return "experiment settings changed"
    changed = [label for label, hashes in new["runs"].items() if (old.get("runs") or {}).get(label) != hashes]
    return f"runs changed: {', '.join(changed)}" if changed else "fingerprint changed"


def report_state(plan: SweepPlan) -> str | None:
    """None when the published comparison report is current, else why not (``missing``, ``runs changed: ...``)."""
    return _state(plan)[0]


def _state(plan: SweepPlan) -> tuple[str | None, dict[str, Any]]:
    """:func:`report_state` and the fingerprint's parts."""
    parts, missing = _fingerprint_parts(plan)
    store = plan.store()
    manifest = read_manifest(store, REPORT)
    if manifest is None:
        return "missing", parts
    if missing:
        return f"run(s) not done: {', '.join(missing)}", parts
    expected = sha256_bytes(canonical_json(parts))
    if manifest.fingerprint != expected:
        return _what_changed(manifest.data.get("fingerprint_inputs") or {}, parts), parts
    return not_done_reason(store, manifest, expected, "size"), parts


def _require_done(plan: SweepPlan) -> None:
    """A :class:`StageError` naming every run with a model stage that is not done."""
    pending = []
    for run in plan.runs:
        bad = [f"{s.name} {s.state}" for s in run_statuses(run) if s.state != "done"]
        if bad:
            pending.append(f"{run.label} ({', '.join(bad)})")
    if pending:
        raise StageError(
            f"sweep {plan.experiment.name}: the comparison report needs every run, and {len(pending)} run(s) are "
            f"not done: {'; '.join(pending)}; `microparade sweep run|submit {plan.experiment.path}` computes them"
        )


def write_sweep_report(plan: SweepPlan) -> str:
    """Write the comparison report unless it is current; return the URL of its ``index.html``.

    Every run must be done (else :class:`StageError` naming those that are not). Published like a stage:
    written to ``report/_staging/``, moved into place, then ``report/_MANIFEST.json``.
    """
    _require_done(plan)
    store = plan.store()
    url = store.url(REPORT, "index.html")
    reason, parts = _state(plan)
    if reason is None:
        log.info("[sweep] the comparison report is current: %s", url)
        return url
    log.info("[sweep] writing the comparison report (%s)", reason)
    fingerprint = sha256_bytes(canonical_json(parts))
    started = time.time()
    with stage_lease(store, REPORT, plan.runs[0].cfg.runner) as (lease, _):
        marker = begin_publication(store, REPORT, fingerprint, lease)
        try:
            files = _write_staged(store, _documents(plan, store.url(REPORT)))
        except BaseException:
            store.rm_file(f"{REPORT}/{INCOMPLETE}")
            raise
        lease.check()
        move_into_place(store, REPORT, [f["path"] for f in files])
        extra = {"experiment": plan.experiment.name, "runs": [r.label for r in plan.runs]}
        manifest = manifest_document(REPORT, fingerprint, parts, files, None, marker, time.time() - started, extra)
        commit_publication(store, REPORT, manifest)
    log.info("[sweep] comparison report: %s", url)
    return url


def _write_staged(store: Store, documents: dict[str, bytes]) -> list[dict[str, Any]]:
    """Write the documents to ``report/_staging/``; their manifest entries."""
    files = []
    for rel in sorted(documents):
        data = documents[rel]
        with store.open(f"{REPORT}/{STAGING}/{rel}", "wb") as f:
            f.write(data)
        files.append({"path": rel, "bytes": len(data), "sha256": sha256_bytes(data), "rows": None})
    return files


def _documents(plan: SweepPlan, report_url: str) -> dict[str, bytes]:
    """``{path: content}`` of every file of the report."""
    data = collect(plan)
    cost = collect_cost(plan, data.runs)
    sections = build_sections(plan, data, cost, report_url)
    title = f"MicroParade experiment {plan.experiment.name}"
    meta: list[Any] = [
        f"experiment file: {plan.experiment.path}",
        f"sweep_dir: {plan.sweep_dir}",
        f"code {code_version()}",
    ]
    docs = {f"plots/{fig.name}.png": fig.png for fig in figures(sections)}
    docs["index.html"] = render_html(title, meta, sections).encode()
    docs["report.md"] = render_markdown(title, meta, sections, plot_dir="plots").encode()
    summary = build_summary(plan, data, cost)
    docs["summary.json"] = (json.dumps(summary, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
    return docs


def _cells(m: dict[str, Any]) -> dict[str, Any]:
    return {metric: {t: m[metric][t] for t in (*TARGETS, "avg")} for metric in ("ap", "rce")}


def _variant_summary(data: SweepData, variant: str, label: str, reference: str) -> dict[str, Any]:
    results = data.results_of(variant)
    out: dict[str, Any] = {
        "variant": variant,
        "label": label,
        "n": len(results),
        "seeds": [r.run.seed for r in results],
    }
    for metric in ("ap", "rce"):
        out[metric] = {}
        for t in (*TARGETS, "avg"):
            values = [r.metrics[metric][t] for r in results]
            mean, std, _ = seed_stats(values)
            out[metric][t] = {"mean": mean, "std": std, "values": values}
    if variant != reference:
        out["difference"] = {metric: data.difference(variant, reference, metric) for metric in ("ap", "rce")}
    return out


def build_summary(plan: SweepPlan, data: SweepData, cost: Cost) -> dict[str, Any]:
    """``summary.json``: every cell (mean, std and each seed's value), difference, interval and cost."""
    comparisons = {}
    for name, comp in tables(plan).items():
        entry: dict[str, Any] = {"title": comp.title, "reference": comp.reference}
        entry["variants"] = [_variant_summary(data, v, comp.label(v), comp.reference) for v in comp.variants]
        if data.gbdt is not None:
            entry["gbdt_difference"] = {m: data.difference(GBDT, comp.reference, m) for m in ("ap", "rce")}
        comparisons[name] = entry
    return {
        "schema": SUMMARY_SCHEMA,
        "experiment": plan.experiment.name,
        "split": data.split,
        "rows": int(data.rows.row_id.size),
        "confidence": data.confidence,
        "resamples": data.resamples,
        "comparisons": comparisons,
        "gbdt": {"note": data.gbdt_note, **(_cells(data.gbdt) if data.gbdt is not None else {})},
        "prior": _cells(data.prior),
        "runs": [
            {
                "label": r.run.label,
                "variant": r.run.variant,
                "seed": r.run.seed,
                "run_dir": r.run.run_dir,
                **_cells(r.metrics),
            }
            for r in data.runs
        ],
        "cost": {
            "stage_seconds": cost.stage_seconds,
            "shared_units": cost.units,
            "slurm": cost.slurm,
            "slurm_note": cost.slurm_note,
        },
    }
