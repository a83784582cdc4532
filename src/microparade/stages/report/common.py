"""Names and small helpers shared by the report's modules (split order, manifest files, numbers)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ...engine.manifest import Manifest
from ...metrics import prior_metrics

#: Upstream stages described by the report, in pipeline order.
UPSTREAM = ("generate", "ingest", "text", "features", "chunks", "train", "evaluate")
SPLIT_ORDER = ("train", "valid", "test")
NOT_RUN = "stage not run"
#: ``train/metrics.jsonl`` series the report plots and summarises: ``(key, title, y label, log y)``.
TRAIN_SERIES = (
    ("loss", "training loss", "loss", False),
    ("lr", "learning rate", "lr", False),
    ("examples_per_s", "throughput", "examples / s", False),
    ("data_efficiency", "data efficiency", "as logged by train", False),
)


def ordered(splits: Iterable[str]) -> list[str]:
    """Split names in pipeline order (train, valid, test), unknown names after them, by name."""
    return sorted(splits, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s))


def files_by_split(m: Manifest, suffix: str = "") -> dict[str, list[dict[str, Any]]]:
    """A manifest's file entries whose path ends with ``suffix``, grouped by split (their ``split``
    metadata, else their top-level folder), in manifest order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for f in m.files:
        if f["path"].endswith(suffix):
            out.setdefault(f.get("split") or f["path"].split("/", 1)[0], []).append(f)
    return out


def job_id(m: Manifest | None) -> str | None:
    """The Slurm job id a manifest records, if the stage ran under Slurm."""
    return m.slurm_job_id if m is not None else None


def diff(a: float | None, b: float | None) -> float | None:
    """``a - b``, or None when either is unknown."""
    return None if a is None or b is None else a - b


def r2(v: float | None) -> str | None:
    """RCE is shown with 2 decimals (it is a percentage)."""
    return None if v is None else f"{v:.2f}"


def finite(v: Any) -> bool:
    """Whether ``v`` is a finite real number (bools excluded)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class SplitScores:
    """The metrics of one split: the model's (evaluate), the baseline's, and the prior's."""

    split: str
    model: dict[str, Any] | None
    baseline: dict[str, Any] | None
    #: The metrics the split's other facts (rows, groups) are read from: the model's, else the baseline's.
    ref: dict[str, Any]
    prior: dict[str, Any]


def split_scores(
    evaluation: dict[str, dict[str, Any]] | None, baseline_metrics: dict[str, dict[str, Any]]
) -> list[SplitScores]:
    """One entry per split scored by the model or the baseline, in split order."""
    out = []
    for split in ordered(set(evaluation or {}) | set(baseline_metrics)):
        model_m = (evaluation or {}).get(split)
        base_m = baseline_metrics.get(split)
        ref = model_m or baseline_metrics[split]
        out.append(SplitScores(split, model_m, base_m, ref, prior_metrics(ref)))
    return out
