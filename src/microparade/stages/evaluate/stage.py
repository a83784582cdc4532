"""evaluate stage: predictions of the trained model, calibrated, and the official metrics per split.

Inputs: ``train`` (``model.pt``, or ``model_last.pt`` with ``evaluate.model=last``) and ``chunks``.
For every split of ``evaluate.splits`` that the chunks hold (others are skipped, with a log line),
writes (docs/evaluation.md):

- ``predictions/{split}.parquet`` — ``row_id``, ``tweet_id``, ``b_user_id``; the final (calibrated)
  probabilities ``like``, ``retweet``, ``reply``, ``quote`` and the model's own ``like_raw``, …,
  ``quote_raw`` (float32); ``calibration_holdout`` (True on the valid rows that fit the
  calibrators); sorted by ``row_id``;
- ``metrics.json`` — ``{split: microparade.metrics.compute_metrics(...)}`` of the final
  probabilities for the splits whose rows are all labelled (AP, RCE, their fair versions, positive
  rates), on the rows *scored*: every row, except on valid, whose calibration hold-out is left out;
  also the manifest ``extra`` (with ``model``: best or last, and the calibration's summary);
- ``calibration.json`` — the calibrators (``evaluate.calibration``: isotonic, platt or none) and,
  per labelled split, the metrics and reliability bins before and after calibration.

Calibration (:mod:`microparade.calibration`): one calibrator per engagement, fit on the valid rows
that :func:`~microparade.calibration.holdout_mask` holds out (``evaluate.calibration_fraction``,
chosen by row id), applied to every split. Valid is predicted for the fit even when
``evaluate.splits`` does not list it (then nothing of it is published); without labelled valid
rows in the chunks, calibration is skipped with a log line and a note in ``calibration.json``.

Inference runs in one process (``evaluate.backend``: cpu, the first GPU, or every XLA device of
the host), in eval mode, with the efficient encoding (same logits as the naive one up to float
rounding), chunk by chunk through the hot-swap loader in manifest order, so the outputs do not
depend on how training was parallelised. The text encoder computes at ``evaluate.precision``
(fp32 as trained, the encoder cast to bf16, or dynamic int8: :mod:`microparade.model.inference`). On ``xla``
batches have static shapes (``train.shape_buckets``): a split's short last batch is padded with
repeats of its rows, whose predictions are dropped, and the manifest ``extra`` records the
``compilations``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ...calibration import Calibrator, Identity, fit_calibrator, holdout_mask, reliability_bins
from ...compute.backends import Backend, cpu_threads
from ...compute.factory import make_backend
from ...compute.progress import Progress
from ...engine.context import StageContext
from ...errors import StageError
from ...metrics import compute_metrics
from ...model import SpecialTokens, encode_batch, load_model_bundle
from ...model.batching import ShapeBuckets
from ...model.inference import for_inference
from ...model.loader import ChunkLoader
from ...recsys_format import TARGETS
from ..chunks.contract import ChunksManifest

#: The train stage's file of each ``evaluate.model``.
MODEL_FILES = {"best": "model.pt", "last": "model_last.pt"}
#: Bins of the reliability diagrams in ``calibration.json``.
RELIABILITY_BINS = 10


def _load_bundle(ctx: StageContext, which: str) -> dict[str, Any]:
    train = ctx.input("train")
    name = MODEL_FILES[which]
    url = train.url(name)
    if not any(f["path"] == name for f in train.files):
        older = " (train outputs older than evaluate.model=last have none)" if which == "last" else ""
        raise StageError(
            f"evaluate.model={which} reads {url}, which the train stage did not publish{older}: rerun train"
        )
    raw = train.store.read_bytes(f"{train.stage}/{name}")
    try:
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise StageError(f"cannot read the trained model {url}: {exc}") from exc


def _check_bundle(bundle: dict[str, Any], chunks: ChunksManifest) -> None:
    h_model = int(bundle["history_size"])
    if h_model != chunks.history_size:
        raise StageError(f"the model was trained with history size {h_model} but the chunks have {chunks.history_size}")
    if tuple(bundle["feature_names"]) != chunks.feature_names:
        raise StageError("the model's feature names differ from the chunks' (rerun train on these chunks)")


def predict_split(
    model: torch.nn.Module,
    loader: ChunkLoader,
    bundle: dict[str, Any],
    backend: Backend,
    token_budget: int,
    buckets: ShapeBuckets | None,
    log: Callable[..., None],
) -> dict[str, np.ndarray]:
    """Probabilities for every row of one split, with ids, labels and follower counts."""
    specials = SpecialTokens.from_mapping(bundle["special_tokens"], "the model's special_tokens")
    use_text = bundle["encoder_config"] is not None
    use_history = bool(bundle["model_config"].get("use_history", True))
    keys = ("row_id", "tweet_id", "b_user_id", "a_follower_count", "labels", "probs")
    cols: dict[str, list[Any]] = {k: [] for k in keys}
    progress = Progress(f"{loader.split} rows predicted", loader.examples_per_epoch(), log, items="rows")

    def encoded():
        for batch in loader.epoch(0):
            ex = batch.examples
            if buckets is not None:  # static shapes: a full batch
                ex = ex.padded_to(loader.batch_size)
            mb = encode_batch(
                ex,
                specials=specials,
                max_length=int(bundle["max_length"]),
                encoding="efficient",
                token_budget=token_budget,
                buckets=buckets,
                use_text=use_text,
                use_history=use_history,
            )
            yield batch.examples, mb

    # inference_mode tensors are not for compiled backends; no_grad is what torch-xla documents.
    with torch.no_grad() if backend.static_shapes else torch.inference_mode(), progress:
        for ex, mb in backend.feed(encoded()):
            probs_dev = torch.sigmoid(model(mb).float())
            backend.step_end()
            probs = probs_dev.cpu().numpy()[: len(ex)]
            for key, val in (
                ("row_id", ex.row_id),
                ("tweet_id", ex.tweet_id),
                ("b_user_id", ex.b_user_id),
                ("a_follower_count", ex.a_follower_count),
                ("labels", ex.labels),
                ("probs", probs),
            ):
                cols[key].append(val)
            progress.add(items=len(ex))
    out = {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}
    order = np.argsort(out["row_id"], kind="stable")
    return {k: v[order] for k, v in out.items()}


@dataclass
class _Predictor:
    """The model on its backend, ready to predict any split of the chunks."""

    model: torch.nn.Module
    bundle: dict[str, Any]
    backend: Backend
    buckets: ShapeBuckets | None
    chunks: ChunksManifest
    ctx: StageContext

    def predict(self, split: str) -> dict[str, np.ndarray]:
        """:func:`predict_split` of ``split``."""
        ec = self.ctx.cfg.evaluate
        with ChunkLoader(
            self.chunks,
            split,
            batch_size=ec.batch_size,
            shuffle=False,
            with_ids=True,
            storage_options=self.ctx.store.storage_options,
        ) as loader:
            return predict_split(
                self.model, loader, self.bundle, self.backend, ec.token_budget, self.buckets, self.ctx.log
            )


def _make_predictor(ctx: StageContext, bundle: dict[str, Any], chunks: ChunksManifest) -> _Predictor:
    ec = ctx.cfg.evaluate
    backend = make_backend(ec.backend, environ={}).setup()
    # Same thread count whether or not a Dask cluster ran earlier in this process (see train).
    torch.set_num_threads(cpu_threads(ctx.cfg.train.num_threads))
    model = backend.wrap(for_inference(load_model_bundle(bundle), ec.precision, backend.device.type)).eval()
    buckets = None
    if backend.static_shapes:
        sb = ctx.cfg.train.shape_buckets
        buckets = ShapeBuckets.for_chunks(
            chunks, batch_size=ec.batch_size, rows=sb.rows, lengths=sb.lengths, multiple=backend.shape_multiple
        )
    ctx.log("predicting on %s (evaluate.model=%s, evaluate.precision=%s)", backend.describe(), ec.model, ec.precision)
    return _Predictor(model, bundle, backend, buckets, chunks, ctx)


# ----------------------------------------------------------------------------------------------
# calibration
# ----------------------------------------------------------------------------------------------
@dataclass
class _Calibration:
    """The calibrators applied to every split (none: the probabilities pass unchanged)."""

    kind: str
    fraction: float
    calibrators: dict[str, Calibrator] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)
    fit_rows: int = 0
    note: str | None = None

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated ``[N, 4]`` float32 probabilities of the model's ``raw`` ones."""
        if not self.calibrators:
            return raw.copy()
        cols = [self.calibrators[t].apply(raw[:, i]) for i, t in enumerate(TARGETS)]
        return np.stack(cols, 1).astype(np.float32).reshape(raw.shape)

    def summary(self) -> dict[str, Any]:
        """The top of ``calibration.json``."""
        out = {"kind": self.kind, "fraction": self.fraction, "fit_rows": self.fit_rows, "fit": self.fit}
        return out if self.note is None else {**out, "note": self.note}


def _labelled(labels: np.ndarray) -> bool:
    return bool(len(labels)) and not np.isnan(labels).any()


def _fit_calibration(
    ctx: StageContext, predictor: _Predictor, present: set[str]
) -> tuple[_Calibration, dict[str, np.ndarray] | None]:
    """The calibrators of ``evaluate.calibration``, fit on the valid split's hold-out, and the valid
    predictions when they were made (their ``holdout`` marks the fit rows)."""
    ec = ctx.cfg.evaluate
    if ec.calibration == "none":
        return _Calibration("none", ec.calibration_fraction), None
    if "valid" not in present:
        return _skip_calibration(ctx, "the chunks hold no valid split to fit the calibrators on"), None
    if "valid" not in ec.splits:
        ctx.log("valid is not in evaluate.splits: predicting it only to fit the calibrators (not published)")
    res = predictor.predict("valid")
    if not _labelled(res["labels"]):
        return _skip_calibration(ctx, "the valid split is not labelled: no calibrators to fit"), res
    holdout = holdout_mask(res["row_id"], ec.calibration_fraction)
    cal = _Calibration(ec.calibration, ec.calibration_fraction, fit_rows=int(holdout.sum()))
    for i, target in enumerate(TARGETS):
        labels = res["labels"][holdout, i]
        calibrator = fit_calibrator(ec.calibration, res["probs"][holdout, i], labels)
        entry = {"positives": int(labels.sum()), "rows": cal.fit_rows, "params": calibrator.to_dict()}
        if isinstance(calibrator, Identity) and calibrator.note:
            entry["note"] = calibrator.note
            ctx.log("calibration of %s: %s", target, calibrator.note)
        cal.calibrators[target], cal.fit[target] = calibrator, entry
    ctx.log("%s calibrators fit on %d held-out valid rows", ec.calibration, cal.fit_rows)
    res["holdout"] = holdout
    return cal, res


def _skip_calibration(ctx: StageContext, why: str) -> _Calibration:
    ec = ctx.cfg.evaluate
    note = f"evaluate.calibration={ec.calibration} skipped: {why}"
    ctx.log("%s", note)
    return _Calibration("none", ec.calibration_fraction, note=note)


# ----------------------------------------------------------------------------------------------
# outputs
# ----------------------------------------------------------------------------------------------
def _write_predictions(
    ctx: StageContext, split: str, res: dict[str, np.ndarray], raw: np.ndarray, final: np.ndarray, holdout: np.ndarray
) -> None:
    def column(probs: np.ndarray, i: int) -> pa.Array:
        return pa.array(np.ascontiguousarray(probs[:, i], dtype=np.float32))

    table = pa.table(
        {
            "row_id": pa.array(res["row_id"].astype(np.int64)),
            "tweet_id": pa.array(res["tweet_id"], pa.string()),
            "b_user_id": pa.array(res["b_user_id"], pa.string()),
            **{t: column(final, i) for i, t in enumerate(TARGETS)},
            **{f"{t}_raw": column(raw, i) for i, t in enumerate(TARGETS)},
            "calibration_holdout": pa.array(holdout, pa.bool_()),
        }
    )
    rel = f"predictions/{split}.parquet"
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    with ctx.open_out(rel) as f:
        f.write(buf.getvalue())
    ctx.file_meta[rel] = {"rows": table.num_rows, "split": split}


def _score(
    labels: np.ndarray, raw: np.ndarray, final: np.ndarray, followers: np.ndarray
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The final probabilities' metrics and the split's ``calibration.json`` entry."""
    y = labels.astype(np.int8)
    before = compute_metrics(y, raw.astype(np.float64), followers)
    after = compute_metrics(y, final.astype(np.float64), followers)

    def bins(probs: np.ndarray) -> dict[str, Any]:
        return {t: reliability_bins(y[:, i], probs[:, i], RELIABILITY_BINS) for i, t in enumerate(TARGETS)}

    entry = {
        "rows_scored": int(len(y)),
        "uncalibrated": before,
        "calibrated": after,
        "reliability": {"uncalibrated": bins(raw), "calibrated": bins(final)},
    }
    return after, entry


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _publish_split(
    ctx: StageContext, split: str, res: dict[str, np.ndarray], cal: _Calibration
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Write one split's predictions; return its metrics and calibration entry (None: unlabelled)."""
    raw = res["probs"].astype(np.float32)
    final = cal.apply(raw)
    holdout = res.get("holdout", np.zeros(len(raw), dtype=bool))
    _write_predictions(ctx, split, res, raw, final, holdout)
    if not _labelled(res["labels"]):
        ctx.log("split %s: %d rows predicted (unlabelled: no metrics)", split, len(raw))
        return None
    scored = ~holdout
    metrics, entry = _score(res["labels"][scored], raw[scored], final[scored], res["a_follower_count"][scored])
    before = entry["uncalibrated"]
    held = f" ({int(holdout.sum())} held out for calibration)" if holdout.any() else ""
    ctx.log(
        "split %s: %d rows scored%s, avg AP %s -> %s, avg RCE %s -> %s (calibration %s)",
        split,
        entry["rows_scored"],
        held,
        _fmt(before["ap"]["avg"], ".4f"),
        _fmt(metrics["ap"]["avg"], ".4f"),
        _fmt(before["rce"]["avg"], ".2f"),
        _fmt(metrics["rce"]["avg"], ".2f"),
        cal.kind,
    )
    return metrics, entry


def _write_json(ctx: StageContext, rel: str, data: dict[str, Any]) -> None:
    with ctx.open_out(rel) as f:
        f.write((json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())


def run(ctx: StageContext) -> None:
    ec = ctx.cfg.evaluate
    chunks = ChunksManifest.from_manifest(ctx.input("chunks"))
    bundle = _load_bundle(ctx, ec.model)
    _check_bundle(bundle, chunks)
    present = {split for split in chunks.splits if chunks.files(split)}
    for split in ec.splits:
        if split not in present:
            ctx.log("split %s: no chunks, skipped", split)
    # valid first: its predictions, made to fit the calibrators, are then published at once
    splits = sorted(dict.fromkeys(s for s in ec.splits if s in present), key=lambda s: s != "valid")
    if not splits:
        raise StageError(f"none of evaluate.splits {list(ec.splits)} has chunks (chunks hold {sorted(present)})")
    predictor = _make_predictor(ctx, bundle, chunks)
    cal, valid = _fit_calibration(ctx, predictor, present)
    metrics: dict[str, Any] = {}
    cal_splits: dict[str, Any] = {}
    for split in splits:
        res = valid if split == "valid" and valid is not None else predictor.predict(split)
        scored = _publish_split(ctx, split, res, cal)
        if scored is not None:
            metrics[split], cal_splits[split] = scored
    _write_json(ctx, "metrics.json", metrics)
    _write_json(ctx, "calibration.json", {**cal.summary(), "splits": cal_splits})
    ctx.extra.update(metrics)
    ctx.extra.update(model=ec.model, calibration={k: v for k, v in cal.summary().items() if k != "fit"})
    compilations = predictor.backend.compilations()
    if compilations is not None:
        ctx.extra.update(compilations=compilations, backend=predictor.backend.name)
