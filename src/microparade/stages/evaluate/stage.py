"""evaluate stage: predictions of the trained model and the official metrics per split.

Inputs: ``train`` (``model.pt``) and ``chunks``. For every split of ``evaluate.splits`` that the
chunks hold (others are skipped, with a log line), writes:

- ``predictions/{split}.parquet`` — ``row_id``, ``tweet_id``, ``b_user_id`` and the probabilities
  ``like``, ``retweet``, ``reply``, ``quote`` (float32), sorted by ``row_id``;
- ``metrics.json`` — ``{split: microparade.metrics.compute_metrics(...)}`` for the splits whose rows
  are all labelled (AP, RCE, their fair versions, positive rates), also the manifest ``extra``.

Inference runs in one process (``evaluate.backend``: cpu, the first GPU, or every XLA device of
the host), in eval mode, with the efficient encoding (same logits as the naive one up to float
rounding), chunk by chunk through the hot-swap loader in manifest order, so the outputs do not
depend on how training was parallelised. On ``xla`` batches have static shapes
(``train.shape_buckets``): a split's short last batch is padded with repeats of its rows, whose
predictions are dropped, and the manifest ``extra`` records the ``compilations``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ...compute.backends import Backend, available_cpus
from ...compute.factory import make_backend
from ...engine.context import StageContext
from ...errors import StageError
from ...metrics import compute_metrics
from ...model import SpecialTokens, encode_batch, load_model_bundle
from ...model.batching import ShapeBuckets
from ...model.loader import ChunkLoader
from ...recsys_format import TARGETS
from ..chunks.contract import ChunksManifest


def _load_bundle(ctx: StageContext) -> dict[str, Any]:
    train = ctx.input("train")
    url = train.url("model.pt")
    raw = ctx.store.read_bytes(f"{train.stage}/model.pt")
    try:
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise StageError(f"cannot read the trained model {url}: {exc}") from exc


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
    keys = ("row_id", "tweet_id", "b_user_id", "a_follower_count", "labels", "probs")
    cols: dict[str, list[Any]] = {k: [] for k in keys}
    done = 0
    total = loader.examples_per_epoch()
    next_log = 0

    def encoded():
        for batch in loader.epoch(0):
            ex = batch.examples
            if buckets is not None and len(ex) < loader.batch_size:  # static shapes: a full batch
                ex = ex.take(np.resize(np.arange(len(ex)), loader.batch_size))
            mb = encode_batch(
                ex,
                specials=specials,
                max_length=int(bundle["max_length"]),
                encoding="efficient",
                token_budget=token_budget,
                buckets=buckets,
                use_text=use_text,
            )
            yield batch.examples, mb

    # inference_mode tensors are not for compiled backends; no_grad is what torch-xla documents.
    with torch.no_grad() if backend.static_shapes else torch.inference_mode():
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
            done += len(ex)
            if done >= next_log:
                log("%s: %d/%d rows predicted", loader.split, done, total)
                next_log += max(total // 10, 1)
    out = {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}
    order = np.argsort(out["row_id"], kind="stable")
    return {k: v[order] for k, v in out.items()}


def run(ctx: StageContext) -> None:
    ec = ctx.cfg.evaluate
    chunks = ChunksManifest.from_manifest(ctx.input("chunks"))
    bundle = _load_bundle(ctx)
    h_model = int(bundle["history_size"])
    if h_model != chunks.history_size:
        raise StageError(f"the model was trained with history size {h_model} but the chunks have {chunks.history_size}")
    if tuple(bundle["feature_names"]) != chunks.feature_names:
        raise StageError("the model's feature names differ from the chunks' (rerun train on these chunks)")
    backend = make_backend(ec.backend, environ={}).setup()
    # Same thread count whether or not a Dask cluster ran earlier in this process (see train).
    torch.set_num_threads(ctx.cfg.train.num_threads or available_cpus())
    model = backend.wrap(load_model_bundle(bundle)).eval()
    buckets = None
    if backend.static_shapes:
        sb = ctx.cfg.train.shape_buckets
        buckets = ShapeBuckets.for_chunks(
            chunks, batch_size=ec.batch_size, rows=sb.rows, lengths=sb.lengths, multiple=backend.shape_multiple
        )
    ctx.log("predicting on %s", backend.describe())
    present = {split for split in chunks.splits if chunks.files(split)}
    metrics: dict[str, Any] = {}
    predicted: dict[str, int] = {}
    for split in ec.splits:
        if split not in present:
            ctx.log("split %s: no chunks, skipped", split)
            continue
        with ChunkLoader(
            chunks,
            split,
            batch_size=ec.batch_size,
            shuffle=False,
            with_ids=True,
            storage_options=ctx.store.storage_options,
        ) as loader:
            res = predict_split(model, loader, bundle, backend, ec.token_budget, buckets, ctx.log)
        table = pa.table(
            {
                "row_id": pa.array(res["row_id"].astype(np.int64)),
                "tweet_id": pa.array(res["tweet_id"], pa.string()),
                "b_user_id": pa.array(res["b_user_id"], pa.string()),
                **{t: pa.array(res["probs"][:, i].astype(np.float32)) for i, t in enumerate(TARGETS)},
            }
        )
        rel = f"predictions/{split}.parquet"
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        with ctx.open_out(rel) as f:
            f.write(buf.getvalue())
        ctx.file_meta[rel] = {"rows": table.num_rows, "split": split}
        predicted[split] = table.num_rows
        labels = res["labels"]
        if len(labels) and not np.isnan(labels).any():
            probs = res["probs"].astype(np.float64)
            metrics[split] = compute_metrics(labels.astype(np.int8), probs, res["a_follower_count"])
            ap = metrics[split].get("ap", {}).get("avg")
            ctx.log("split %s: %d rows, avg AP %s", split, table.num_rows, f"{ap:.4f}" if ap is not None else "-")
        else:
            ctx.log("split %s: %d rows predicted (unlabelled: no metrics)", split, table.num_rows)
    if not predicted:
        raise StageError(f"none of evaluate.splits {list(ec.splits)} has chunks (chunks hold {sorted(present)})")
    with ctx.open_out("metrics.json") as f:
        f.write((json.dumps(metrics, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())
    ctx.extra.update(metrics)
    compilations = backend.compilations()
    if compilations is not None:
        ctx.extra.update(compilations=compilations, backend=backend.name)
