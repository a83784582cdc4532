"""What the report reads: the upstream manifests, the metrics files they list, and Slurm accounting.

Facts about what was run (history size, model heads and encoder, data statistics) come from the
manifests rather than the report's config: the report describes the run that produced the outputs.
The chunks manifest is also parsed as its contract (:class:`ChunksManifest`), which the baselines
read; the model's per-row predictions (:func:`read_model_predictions`) are read when the comparison
needs them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...engine.context import StageContext
from ...engine.layout import stage_store
from ...engine.manifest import Manifest, read_manifest
from ...recsys_format import TARGETS
from ...slurm.query import sacct_info
from ...storage import read_parquet, read_parquet_schema
from ..chunks.contract import ChunksManifest, ChunksManifestError
from .common import NOT_RUN, UPSTREAM, job_id


@dataclass
class ReportInputs:
    """The upstream facts the report describes; each ``*_note`` says why its value is missing."""

    #: Every stage of :data:`UPSTREAM`, None when it did not run.
    manifests: dict[str, Manifest | None]
    #: The chunks manifest parsed as its contract (what the baseline reads).
    chunks: ChunksManifest | None
    chunks_note: str
    #: ``{split: compute_metrics result}`` from ``evaluate/metrics.json``.
    evaluation: dict[str, dict[str, Any]] | None
    eval_note: str
    #: ``evaluate/calibration.json``: how the model's probabilities were calibrated, and the metrics
    #: and reliability bins before and after.
    calibration: dict[str, Any] | None
    calibration_note: str
    #: ``train/metrics.jsonl`` records, by step.
    train_log: list[dict[str, Any]] | None
    train_note: str
    #: ``{job_id: {state, elapsed, ...}}`` from sacct for the stages' Slurm jobs.
    sacct: dict[str, dict[str, str]]
    sacct_note: str

    def manifest(self, stage: str) -> Manifest | None:
        return self.manifests.get(stage)

    def done(self) -> dict[str, Manifest]:
        """The upstream stages that published a manifest, in pipeline order."""
        return {s: m for s in UPSTREAM if (m := self.manifests.get(s)) is not None}


def read_inputs(ctx: StageContext) -> ReportInputs:
    """Read everything the report describes except the baseline (which the report computes)."""
    manifests = _manifests(ctx)
    chunks, chunks_note = _chunks_contract(manifests.get("chunks"))
    evaluation, eval_note = _read_evaluation(ctx, manifests.get("evaluate"))
    calibration, calibration_note = _read_calibration(ctx, manifests.get("evaluate"))
    train_log, train_note = read_step_records(manifests.get("train"))
    sacct, sacct_note = _sacct(manifests)
    return ReportInputs(
        manifests,
        chunks,
        chunks_note,
        evaluation,
        eval_note,
        calibration,
        calibration_note,
        train_log,
        train_note,
        sacct,
        sacct_note,
    )


def _manifests(ctx: StageContext) -> dict[str, Manifest | None]:
    """The upstream manifests: the stage's inputs, plus ``generate`` read from the store."""
    out: dict[str, Manifest | None] = {name: ctx.inputs.get(name) for name in UPSTREAM}
    if out["generate"] is None and ctx.cfg.data.generate is not None:
        out["generate"] = read_manifest(stage_store(ctx.cfg, "generate"), "generate")
    return out


def _chunks_contract(m: Manifest | None) -> tuple[ChunksManifest | None, str]:
    """The chunks manifest parsed as its contract, or None and why not (the error names the key and URL)."""
    if m is None:
        return None, NOT_RUN
    try:
        return ChunksManifest.from_manifest(m), ""
    except ChunksManifestError as exc:
        return None, str(exc)


def _has_file(m: Manifest, path: str) -> bool:
    return any(f["path"] == path for f in m.files)


def _read_evaluation(ctx: StageContext, m: Manifest | None) -> tuple[dict[str, dict[str, Any]] | None, str]:
    """The per-split metrics of ``evaluate/metrics.json``, or None and why not."""
    if m is None:
        return None, NOT_RUN
    if not _has_file(m, "metrics.json"):
        return None, "the evaluate stage published no metrics.json"
    data = json.loads(m.store.read_bytes(f"{m.stage}/metrics.json"))
    splits = {k: v for k, v in data.items() if isinstance(v, dict) and "ap" in v and "rce" in v}
    if not splits:
        return None, "evaluate/metrics.json holds no split metrics"
    return splits, ""


def _read_calibration(ctx: StageContext, m: Manifest | None) -> tuple[dict[str, Any] | None, str]:
    """``evaluate/calibration.json``, or None and why not (runs from before calibration have none)."""
    if m is None:
        return None, NOT_RUN
    if not _has_file(m, "calibration.json"):
        return None, "the evaluate stage published no calibration.json (a run from before calibration)"
    data = json.loads(m.store.read_bytes(f"{m.stage}/calibration.json"))
    if not isinstance(data, dict):
        return None, f"{m.url('calibration.json')} is not a JSON object"
    return data, ""


@dataclass
class ModelPredictions:
    """The model's predictions for one split (``evaluate/predictions/{split}.parquet``), by ``row_id``."""

    row_id: np.ndarray
    #: ``[n, 4]`` final (calibrated where the evaluate stage calibrates) probabilities, float64.
    probs: np.ndarray
    #: True for the rows that fit the calibrators (not scored); all False in files without the column.
    holdout: np.ndarray


def read_model_predictions(m: Manifest | None, split: str) -> tuple[ModelPredictions | None, str]:
    """The model's predictions of ``split`` in the evaluate manifest ``m``, or None and why not."""
    rel = f"predictions/{split}.parquet"
    if m is None:
        return None, f"evaluate: {NOT_RUN}"
    if not _has_file(m, rel):
        return None, f"the evaluate stage published no {rel}"
    url = m.url(rel)
    so = m.store.storage_options
    names = set(read_parquet_schema(url, so).names)
    missing = [c for c in ("row_id", *TARGETS) if c not in names]
    if missing:
        return None, f"{url} has no column {', '.join(missing)}"
    has_holdout = "calibration_holdout" in names
    table = read_parquet(url, so, columns=["row_id", *TARGETS] + (["calibration_holdout"] if has_holdout else []))
    row_id = table.column("row_id").to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    probs = np.stack(
        [table.column(t).to_numpy(zero_copy_only=False).astype(np.float64) for t in TARGETS], axis=1
    ).reshape(-1, len(TARGETS))
    holdout = (
        table.column("calibration_holdout").to_numpy(zero_copy_only=False).astype(bool)
        if has_holdout
        else np.zeros(row_id.shape[0], dtype=bool)
    )
    return ModelPredictions(row_id, probs, holdout), ""


def read_step_records(m: Manifest | None, name: str = "metrics.jsonl") -> tuple[list[dict[str, Any]] | None, str]:
    """The step records of the train manifest ``m``'s ``name`` (``metrics.jsonl``, ``validation.jsonl``)
    sorted by step, or None and why not."""
    if m is None:
        return None, NOT_RUN
    if not _has_file(m, name):
        return None, f"the train stage published no {name}"
    records = []
    for line in m.store.read_bytes(f"{m.stage}/{name}").decode().splitlines():
        line = line.strip()
        if not line:
            continue
        rec = json.loads(line)
        if isinstance(rec, dict) and isinstance(rec.get("step"), (int, float)):
            records.append(rec)
    if not records:
        return None, f"train/{name} holds no step records"
    records.sort(key=lambda r: r["step"])
    return records, ""


def _sacct(manifests: dict[str, Manifest | None]) -> tuple[dict[str, dict[str, str]], str]:
    """sacct state/elapsed of the stages' jobs; empty (with the reason) when unavailable."""
    ids = sorted({j for j in (job_id(m) for m in manifests.values()) if j})
    if not ids:
        return {}, ""
    info = sacct_info(ids)  # answers {} when Slurm is absent, times out or fails
    if not info:
        return {}, "sacct state not shown: sacct is not available or knows none of these jobs"
    return info, ""


def model_label(chunks: ChunksManifest | None, train: Manifest | None) -> str:
    """The trained model as its manifests record it: the history size the chunks were built with,
    and the heads and encoder of the model config the train stage was fingerprinted with (the
    train manifest's ``fingerprint_inputs.config.model``); what they do not record is left out."""
    history_size = chunks.history_size if chunks is not None else None
    model_cfg: dict[str, Any] = {}
    if train is not None:
        model_cfg = (train.data.get("fingerprint_inputs") or {}).get("config", {}).get("model") or {}
    parts = [
        f"H={history_size}" if history_size is not None else None,
        f"{model_cfg['heads']} head" if model_cfg.get("heads") else None,
        model_cfg.get("encoder"),
    ]
    known = [p for p in parts if p]
    return f"MicroParade ({', '.join(known)})" if known else "MicroParade"
