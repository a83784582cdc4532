"""Test helpers for the model / loader / train / evaluate tests: hand-built chunks published by the
real stage runner (docs/data-format.md §7), without the upstream pipeline.

``publish_chunks`` runs a test-only ``chunks`` stage (this module's :func:`run`, registered by its
package path ``tests.helpers.train``) through :func:`microparade.engine.run_stage`, so the manifest,
hashes and fingerprint are the real thing. :func:`patch_stages` swaps that stage into
:data:`microparade.engine.registry.STAGES` (in place of the pipeline's upstream stages) so
``microparade run CONFIG --only train`` finds it done. Child processes import this module through
``PYTHONPATH`` = the repository root (:func:`subprocess_env`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from microparade.recsys_format import TARGETS
from tests.helpers.paths import ROOT

PYTHON = str(ROOT / ".venv" / "bin" / "python")

SPECIAL_TOKENS = {"cls": 101, "sep": 102, "pad": 0, "unk": 100, "link": 1000}
#: Content token ids drawn from MiniLM's whole-word range.
VOCAB_RANGE = (1996, 29000)

#: Small, fast, deterministic training settings (tiny encoder, one thread), as config overrides.
TRAIN = {
    "model.encoder": "tiny",
    "model.dropout": 0.1,
    "train.batch_size": 8,
    "train.lr": 0.001,
    "train.warmup_steps": 3,
    "train.log_every": 2,
    "train.checkpoint_every": 1000,
    "train.num_threads": 1,
    "train.seed": 5,
}

#: What :func:`run` writes; set by :func:`publish_chunks` (the stage runs in this process).
_PENDING: dict[str, Any] = {}


def chunk_table(
    n: int,
    *,
    history_size: int = 4,
    n_features: int = 5,
    seed: int = 0,
    row_id_start: int = 0,
    labelled: bool = True,
    empty_fraction: float = 0.7,
    max_length: int = 64,
    cand_len: tuple[int, int] = (20, 60),
) -> pa.Table:
    """A chunk table per §7 with realistic lengths: candidates ``cand_len`` tokens (content),
    history tweets 10–60 tokens, about ``empty_fraction`` of history slots empty (valid first)."""
    rng = np.random.default_rng(seed)
    h = history_size
    limit = max_length - 2
    c_len = rng.integers(cand_len[0], min(cand_len[1], limit) + 1, size=n)
    tokens = [rng.integers(*VOCAB_RANGE, size=k).astype(np.int32).tolist() for k in c_len]
    p_valid = 1.0 - empty_fraction
    hist_len = rng.binomial(h, p_valid, size=n).astype(np.int8)
    hist_tokens, hist_eng, hist_hour, hist_mask = [], [], [], []
    for i in range(n):
        k = int(hist_len[i])
        lens = rng.integers(10, limit + 1, size=k)
        hist_tokens.append(
            [rng.integers(*VOCAB_RANGE, size=m).astype(np.int32).tolist() for m in lens] + [[]] * (h - k)
        )
        hist_eng.append(rng.integers(1, 16, size=k).tolist() + [0] * (h - k))
        hist_hour.append(rng.integers(0, 24, size=k).tolist() + [24] * (h - k))
        hist_mask.append([True] * k + [False] * (h - k))
    feats = rng.normal(size=(n, n_features)).astype(np.float32) * np.arange(1, n_features + 1, dtype=np.float32)
    cols: dict[str, pa.Array] = {
        "row_id": pa.array(np.arange(row_id_start, row_id_start + n, dtype=np.int64)),
        "tweet_id": pa.array([f"{rng.integers(0, 2**63):032X}" for _ in range(n)], pa.string()),
        "b_user_id": pa.array([f"{rng.integers(0, 2**63):032X}" for _ in range(n)], pa.string()),
        "a_follower_count": pa.array(rng.integers(0, 1_000_000, size=n).astype(np.int64)),
    }
    rates = (0.4, 0.1, 0.03, 0.01)
    for t, r in zip(TARGETS, rates):
        if labelled:
            cols[t] = pa.array((rng.random(n) < r).astype(np.int8))
        else:
            cols[t] = pa.nulls(n, pa.int8())
    cols.update(
        tokens=pa.array(tokens, pa.list_(pa.int32())),
        hour=pa.array(rng.integers(0, 24, size=n).astype(np.int8)),
        hist_tokens=pa.array(hist_tokens, pa.list_(pa.list_(pa.int32()))),
        hist_engagement=pa.array(hist_eng, pa.list_(pa.int8())),
        hist_hour=pa.array(hist_hour, pa.list_(pa.int8())),
        hist_mask=pa.array(hist_mask, pa.list_(pa.bool_())),
        hist_len=pa.array(hist_len),
        features=pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1)), n_features),
    )
    return pa.table(cols)


def model_chunks(n_features: int, history_size: int, max_length: int = 64):
    """A parsed chunks manifest without chunks: what building a model needs."""
    from microparade.stages.chunks.contract import ChunksManifest

    extra = {
        "schema_version": 1,
        "feature_names": [f"f{i}" for i in range(n_features)],
        "normalization": {"mean": [0.5] * n_features, "std": [2.0] * n_features},
        "history_size": history_size,
        "max_length": max_length,
        "encoder_tokenizer": "minilm",
        "special_tokens": dict(SPECIAL_TOKENS),
        "splits": {},
    }
    return ChunksManifest.from_dict({"files": [], "extra": extra}, "memory://model-test/chunks")


def run(ctx) -> None:
    """The test-only chunks stage: write ``_PENDING``'s tables as chunk files + manifest extra."""
    spec = _PENDING
    splits_extra = {}
    for split, tables in spec["tables"].items():
        rows = 0
        for i, table in enumerate(tables):
            rel = f"{split}/chunk-{i:05d}.parquet"
            with ctx.open_out(rel) as f:
                pq.write_table(table, f, compression="zstd", row_group_size=256)
            ctx.file_meta[rel] = {"rows": table.num_rows, "split": split}
            rows += table.num_rows
        full = pa.concat_tables(tables)
        labelled = all(full.column(t).null_count == 0 for t in TARGETS)
        rates = {t: float(np.mean(full.column(t).to_numpy())) for t in TARGETS} if labelled else None
        splits_extra[split] = {"rows": rows, "chunks": len(tables), "label_rates": rates}
    train = pa.concat_tables(spec["tables"]["train"]) if "train" in spec["tables"] else None
    f = spec["n_features"]
    if train is not None:
        x = np.asarray(train.column("features").combine_chunks().flatten()).reshape(-1, f)
        mean, std = x.mean(0).tolist(), np.maximum(x.std(0), 1e-6).tolist()
    else:
        mean, std = [0.0] * f, [1.0] * f
    ctx.extra.update(
        schema_version=1,
        feature_names=[f"f{i}" for i in range(f)],
        normalization={"mean": mean, "std": std},
        history_size=spec["history_size"],
        max_length=spec["max_length"],
        encoder_tokenizer="minilm",
        special_tokens=dict(SPECIAL_TOKENS),
        splits=splits_extra,
    )


def chunks_spec():
    from microparade.engine.registry import StageSpec

    return StageSpec(
        "chunks", inputs=(), config_keys=("chunks",), module="tests.helpers.train", description="test chunks"
    )


def patch_stages() -> None:
    """Make the pipeline = test chunks + the real train / evaluate stages."""
    import microparade.engine.registry as stages

    keep = [s for s in stages.STAGES if s.name in ("train", "evaluate")]
    stages.STAGES = (chunks_spec(), *keep)


def make_config(run_dir: str, overrides: dict[str, Any] | None = None):
    from microparade.config import build_config

    data = {"run_dir": str(run_dir)}
    return build_config(data, [f"{k}={json.dumps(v)}" for k, v in (overrides or {}).items()])


def publish_chunks(
    run_dir: str,
    splits: dict[str, list[int]],
    *,
    history_size: int = 4,
    n_features: int = 5,
    max_length: int = 64,
    seed: int = 0,
    empty_fraction: float = 0.7,
    cfg_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Publish chunks of the given sizes per split through the real runner; return the manifest."""
    from microparade.engine import RunSession, code_version, run_stage
    from microparade.storage import Store

    # Fingerprints include a hash of the package sources, cached per process; a subprocess that
    # checks this stage later hashes the sources as they are then.
    code_version.cache_clear()

    tables: dict[str, list[pa.Table]] = {}
    row = 0
    for s_i, (split, sizes) in enumerate(splits.items()):
        tables[split] = []
        for c_i, n in enumerate(sizes):
            tables[split].append(
                chunk_table(
                    n,
                    history_size=history_size,
                    n_features=n_features,
                    seed=seed * 1000 + s_i * 100 + c_i,
                    row_id_start=row,
                    labelled=split != "test",
                    empty_fraction=empty_fraction,
                    max_length=max_length,
                )
            )
            row += n
    _PENDING.clear()
    _PENDING.update(tables=tables, history_size=history_size, n_features=n_features, max_length=max_length)
    cfg = make_config(run_dir, cfg_overrides)
    store = Store(cfg.run_dir, cfg.storage_options)
    session = RunSession(cfg)
    try:
        manifest = run_stage(cfg, chunks_spec(), store, {}, session)
    finally:
        session.close()
    return manifest.data


def cli_command(config_path: str, *args: str) -> list[str]:
    """``microparade run CONFIG ...`` in a subprocess with the test chunks stage registered."""
    code = (
        "import sys; from tests.helpers.train import patch_stages; patch_stages(); "
        "from microparade.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    return [PYTHON, "-c", code, "run", config_path, *args]


def subprocess_env() -> dict[str, str]:
    """``os.environ`` with the repository root first on ``PYTHONPATH`` (so that a child process, from
    any working directory, imports ``tests.helpers.train``) and one OpenMP thread unless set."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env
