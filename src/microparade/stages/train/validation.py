"""Validation during training: a fixed sample of valid rows, scored every ``train.eval_every`` steps.

The sample is the first ``train.eval_rows`` rows of the valid split in chunk order. The chunks
stage orders rows by a seeded hash of their id, so these rows are a seeded random sample, the same
at every evaluation, on every rank and after a resume. They are read and encoded once.

Scores are the official metrics (:func:`microparade.metrics.compute_metrics`); model selection
uses the average AP over the four engagements.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ...compute.backends import Backend
from ...errors import StageError
from ...metrics import compute_metrics
from ...model.batching import Examples, ModelBatch
from ...model.loader import ChunkLoader
from ...recsys_format import TARGETS
from ..chunks.contract import ChunksManifest

SPLIT = "valid"


@dataclass
class _Part:
    batch: ModelBatch
    rows: int


class Validator:
    """The encoded validation sample and the scoring of a model on it."""

    def __init__(
        self,
        chunks: ChunksManifest,
        rows: int,
        batch_size: int,
        encode: Callable[[Examples], ModelBatch],
        storage_options: dict[str, Any] | None,
        pad_batches: bool,
    ) -> None:
        if not chunks.files(SPLIT):
            raise StageError(
                "train.eval_every needs chunks of the valid split to select the best model; "
                "these chunks have none (set train.eval_every=0)"
            )
        self.parts: list[_Part] = []
        labels, followers = [], []
        with ChunkLoader(
            chunks, SPLIT, batch_size=batch_size, shuffle=False, storage_options=storage_options
        ) as loader:
            for batch in loader.epoch(0):
                ex = batch.examples
                take = min(len(ex), rows - sum(p.rows for p in self.parts))
                ex = ex.take(np.arange(take))
                if np.isnan(ex.labels).any():
                    raise StageError("the valid split has rows without labels: it cannot select a model")
                labels.append(ex.labels)
                followers.append(ex.a_follower_count)
                if pad_batches:  # static shapes: a full batch, repeats dropped
                    ex = ex.padded_to(batch_size)
                self.parts.append(_Part(encode(ex), take))
                if sum(p.rows for p in self.parts) >= rows:
                    break
        self.labels = np.concatenate(labels).astype(np.int8)
        self.followers = np.concatenate(followers)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def _items(self) -> Iterator[tuple[int, ModelBatch]]:
        for p in self.parts:
            yield p.rows, p.batch

    def score(self, model: nn.Module, backend: Backend) -> dict[str, Any]:
        """The official metrics of ``model`` on the sample (the model is left in train mode)."""
        probs = []
        model.eval()
        try:
            with torch.no_grad():
                for rows, mb in backend.feed(self._items()):
                    p = torch.sigmoid(model(mb).float())
                    backend.step_end()
                    probs.append(p.cpu().numpy()[:rows])
        finally:
            model.train()
        return compute_metrics(self.labels, np.concatenate(probs).astype(np.float64), self.followers)


def summary(metrics: dict[str, Any]) -> dict[str, float | None]:
    """The validation record's scalars: average and per-engagement AP and RCE."""
    out: dict[str, float | None] = {}
    for name in ("ap", "rce"):
        values = metrics.get(name, {})
        out[f"valid_{name}"] = values.get("avg")
        for t in TARGETS:
            out[f"valid_{name}_{t}"] = values.get(t)
    return out


@dataclass
class Selection:
    """Model selection state: every validation so far and the best model (checkpointed)."""

    best_step: int | None = None
    best_score: float | None = None
    #: Validations since the best one (early stopping compares it with ``train.patience``).
    since_best: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    #: The best model's weights on the CPU (main process only).
    best_state: dict[str, torch.Tensor] | None = None
    stopped_early: bool = False

    def add(self, record: dict[str, Any], state: Callable[[], dict[str, torch.Tensor]]) -> bool:
        """Record one validation; keep the model (``state()``) when its avg AP is a new best."""
        self.history.append(record)
        score = record.get("valid_ap")
        if score is not None and (self.best_score is None or score > self.best_score):
            self.best_step, self.best_score, self.since_best = int(record["step"]), float(score), 0
            self.best_state = state()
            return True
        self.since_best += 1
        return False

    def to_dict(self) -> dict[str, Any]:
        return {
            "best_step": self.best_step,
            "best_score": self.best_score,
            "since_best": self.since_best,
            "history": list(self.history),
            "best_state": self.best_state,
            "stopped_early": self.stopped_early,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Selection:
        return cls(
            best_step=d["best_step"],
            best_score=d["best_score"],
            since_best=int(d["since_best"]),
            history=list(d["history"]),
            best_state=d["best_state"],
            stopped_early=bool(d["stopped_early"]),
        )
