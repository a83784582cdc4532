"""Names and small helpers shared by the report's modules (split order, manifest files, numbers)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ...engine.manifest import Manifest
from ...metrics import Intervals
from ...recsys_format import TARGETS

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


#: A difference of the model minus a baseline: ``{"diff", "low", "high"}`` (bounds None without an interval).
Difference = dict[str, float | None]


@dataclass
class SplitScores:
    """The metrics of one split: the model's (evaluate), the baselines' on the same rows, the prior's,
    and the model-minus-baseline intervals."""

    split: str
    model: dict[str, Any] | None
    #: ``{baseline key: compute_metrics result}`` (see :data:`.baseline.BASELINES`).
    baselines: dict[str, dict[str, Any]]
    #: The metrics the split's other facts (rows, positives, groups) are read from: the model's, else a baseline's.
    ref: dict[str, Any]
    prior: dict[str, Any]
    #: ``{baseline key: paired bootstrap intervals of the model minus the baseline}``; empty when not computed.
    intervals: dict[str, Intervals] = field(default_factory=dict)
    #: Bootstrap resamples behind ``intervals``.
    resamples: int = 0
    #: Which rows were compared, and why there are no intervals.
    notes: list[str] = field(default_factory=list)

    def difference(self, key: str, metric: str, target: str = "avg") -> Difference | None:
        """The model minus baseline ``key`` for ``metric`` (``ap``/``rce``): the bootstrap interval when
        computed, else the point difference without bounds; None when either side is missing."""
        if key in self.intervals:
            return self.intervals[key][metric][target]
        base = self.baselines.get(key)
        if self.model is None or base is None:
            return None
        return {"diff": diff(self.model[metric][target], base[metric][target]), "low": None, "high": None}

    def positives(self) -> dict[str, int]:
        """Positive rows per engagement among the rows scored."""
        return {t: int(sum(self.ref["groups"]["positives"][t])) for t in TARGETS}


def verdict(d: Difference | None) -> str:
    """``beats`` / ``loses to`` when the 95% interval of the model minus the baseline lies above / below
    0, ``ties`` when it contains 0 (the difference is within the noise); ``no interval`` when only the
    point difference is known, ``n/a`` when not even that."""
    if d is None or d["diff"] is None:
        return "n/a"
    low, high = d["low"], d["high"]
    if low is None or high is None:
        return "no interval"
    if low > 0:
        return "beats"
    if high < 0:
        return "loses to"
    return "ties"
