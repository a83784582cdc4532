#!/usr/bin/env python
"""Training throughput of the efficient vs the naive (paper's) pair encoding.

Writes synthetic chunks (docs/data-format.md §7) with realistic lengths — candidate and history
tweets ~45 content tokens on average, ``--empty`` of the history slots empty — reads them back
through the hot-swap loader, and times forward + backward + optimizer step of the same model on
the same batches with both encodings, side by side, for each history size. Prints examples/s,
data efficiency (content tokens / encoded tokens) and the speed-up; ``--write-docs`` records the
table in docs/benchmarks.md under "## Training throughput".

    python benchmarks/train_throughput.py                       # MiniLM, H = 4 6 10
    python benchmarks/train_throughput.py --encoder tiny --steps 5
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from microparade.config import ModelConfig
from microparade.model import SpecialTokens, build_model, encode_batch
from microparade.model.loader import ChunkLoader
from microparade.recsys_format import TARGETS
from microparade.stages.chunks.contract import SCHEMA_VERSION, ChunksManifest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import update_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Training throughput"
SPECIALS = {"cls": 101, "sep": 102, "pad": 0, "unk": 100, "link": 1000}
N_FEATURES = 16


def _lengths(rng: np.random.Generator, n: int, mean: float, limit: int) -> np.ndarray:
    """Tweet lengths in content tokens: a right-skewed distribution with the given mean."""
    sigma = 0.45
    mu = np.log(mean) - sigma**2 / 2
    return np.clip(np.round(rng.lognormal(mu, sigma, size=n)), 3, limit).astype(np.int64)


def chunk_table(n: int, h: int, empty: float, max_length: int, seed: int) -> pa.Table:
    """n examples with history size h (vectorised; token ids are random MiniLM whole words)."""
    rng = np.random.default_rng(seed)
    limit = max_length - 2
    c_len = _lengths(rng, n, 45, limit)
    n_valid = rng.binomial(h, 1.0 - empty, size=n)
    mask = np.arange(h)[None, :] < n_valid[:, None]
    h_len = np.where(mask, _lengths(rng, n * h, 45, limit).reshape(n, h), 0)

    def ragged(lengths: np.ndarray) -> pa.ListArray:
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        values = rng.integers(1996, 29000, size=int(offsets[-1])).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))

    inner = ragged(h_len.reshape(-1))
    outer_off = pa.array((np.arange(n + 1) * h).astype(np.int32))
    fixed = lambda values, t: pa.ListArray.from_arrays(outer_off, pa.array(values.reshape(-1), t))  # noqa: E731
    hours = np.where(mask, rng.integers(0, 24, size=(n, h)), 24).astype(np.int8)
    return pa.table(
        {
            "row_id": pa.array(np.arange(n, dtype=np.int64) + seed * 10_000_000),
            "tweet_id": pa.array([f"{i:032X}" for i in range(n)]),
            "b_user_id": pa.array([f"{i % 997:032X}" for i in range(n)]),
            "a_follower_count": pa.array(rng.integers(0, 10**6, size=n)),
            **{t: pa.array((rng.random(n) < r).astype(np.int8)) for t, r in zip(TARGETS, (0.4, 0.09, 0.03, 0.006))},
            "tokens": ragged(c_len),
            "hour": pa.array(rng.integers(0, 24, size=n).astype(np.int8)),
            "hist_tokens": pa.ListArray.from_arrays(outer_off, inner),
            "hist_engagement": fixed(np.where(mask, 1, 0), pa.int8()),
            "hist_hour": fixed(hours, pa.int8()),
            "hist_mask": fixed(mask, pa.bool_()),
            "hist_len": pa.array(n_valid.astype(np.int8)),
            "features": pa.FixedSizeListArray.from_arrays(
                pa.array(rng.normal(size=n * N_FEATURES).astype(np.float32)), N_FEATURES
            ),
        }
    )


def write_chunks(directory: Path, h: int, rows: int, chunks: int, empty: float, max_length: int) -> ChunksManifest:
    """Chunk files + the parsed manifest the loader reads (what the chunks stage would publish)."""
    files = []
    positives = np.zeros(len(TARGETS))
    for c in range(chunks):
        rel = f"train/chunk-{c:05d}.parquet"
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        table = chunk_table(rows // chunks, h, empty, max_length, seed=h * 100 + c)
        positives += [np.sum(table.column(t).to_numpy()) for t in TARGETS]
        pq.write_table(table, path, compression="zstd")
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        files.append({"path": rel, "rows": table.num_rows, "bytes": len(data), "sha256": sha, "split": "train"})
    n = sum(f["rows"] for f in files)
    train = {"rows": n, "chunks": chunks, "label_rates": {t: float(p / n) for t, p in zip(TARGETS, positives)}}
    extra = {
        "schema_version": SCHEMA_VERSION,
        "feature_names": [f"f{i}" for i in range(N_FEATURES)],
        "normalization": {"mean": [0.0] * N_FEATURES, "std": [1.0] * N_FEATURES},
        "history_size": h,
        "max_length": max_length,
        "encoder_tokenizer": "minilm",
        "special_tokens": SPECIALS,
        "splits": {"train": train},
    }
    return ChunksManifest.from_dict({"files": files, "extra": extra}, str(directory))


def measure(model, batches, encoding: str, max_length: int, token_budget: int, warmup: int) -> dict:
    """examples/s of forward + backward + Adam step, and data efficiency, over ``batches``."""
    specials = SpecialTokens.from_mapping(SPECIALS)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    model.train()
    examples = valid = encoded = 0
    seconds = 0.0
    for i, ex in enumerate(batches):
        t0 = time.perf_counter()
        mb = encode_batch(ex, specials=specials, max_length=max_length, encoding=encoding, token_budget=token_budget)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(mb), mb.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        if i >= warmup:
            seconds += dt
            examples += len(ex)
            valid += mb.valid_tokens
            encoded += mb.encoded_tokens
    return {
        "examples_per_s": examples / seconds,
        "efficiency": valid / encoded,
        "seconds": seconds,
        "examples": examples,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="minilm", help="minilm (real weights, default) or tiny")
    ap.add_argument("--histories", type=int, nargs="+", default=[4, 6, 10])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per encoding and history size")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--empty", type=float, default=0.7, help="fraction of empty history slots")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--token-budget", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--write-docs", action="store_true", help=f"record the table in {DOC.relative_to(ROOT)}")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n_batches = args.steps + args.warmup
    rows = n_batches * args.batch_size
    results = []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mp-bench-") as tmp:
        for h in args.histories:
            directory = Path(tmp) / f"h{h}"
            manifest = write_chunks(directory, h, rows, chunks=2, empty=args.empty, max_length=args.max_length)
            with ChunkLoader(manifest, "train", batch_size=args.batch_size, seed=0) as lo:
                batches = [b.examples for b in lo.epoch(0)][:n_batches]
            slots = np.concatenate([b.hist_mask for b in batches])
            row = {"h": h, "empty": 1.0 - float(slots.mean())}
            for encoding in ("efficient", "naive"):
                torch.manual_seed(0)
                model = build_model(ModelConfig(encoder=args.encoder), manifest, seed=0)
                row[encoding] = measure(model, batches, encoding, args.max_length, args.token_budget, args.warmup)
                print(
                    f"H={h:2d} {encoding:9s} {row[encoding]['examples_per_s']:8.2f} ex/s  "
                    f"data efficiency {row[encoding]['efficiency']:.3f}  ({row[encoding]['seconds']:.1f}s)",
                    flush=True,
                )
            row["speedup"] = row["efficient"]["examples_per_s"] / row["naive"]["examples_per_s"]
            print(f"H={h:2d} speed-up efficient/naive: {row['speedup']:.2f}x", flush=True)
            results.append(row)
    table = render(results, args, started, load_start, os.getloadavg())
    print()
    print(table)
    if args.write_docs:
        update_doc(table)
        print(f"\nwrote {DOC}")
    return 0


def render(results: list[dict], args, started: str, load_start, load_end) -> str:
    cpu = f"{os.cpu_count()} CPU cores" if not torch.cuda.is_available() else torch.cuda.get_device_name()
    argv = " ".join(sys.argv[1:])
    lines = [
        f"Measured {started} on {cpu} ({platform.machine()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s); load average (1/5/15 min) "
        f"{'/'.join(f'{x:.1f}' for x in load_start)} at the start, {'/'.join(f'{x:.1f}' for x in load_end)} at the end "
        f"(the machine is shared). Encoder `{args.encoder}`, batch {args.batch_size}, max_length {args.max_length}, "
        f"token budget {args.token_budget}, tweets of ~45 content tokens, {args.empty:.0%} of history slots empty "
        f"(drawn); forward + backward + Adam step of the same model on the same batches, {args.steps} timed steps "
        f"after {args.warmup} warm-up per encoding. Command: `python benchmarks/train_throughput.py {argv}`.",
        "",
        "| H | empty slots | efficient ex/s | naive ex/s | speed-up "
        "| data efficiency (efficient) | data efficiency (naive) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['h']} | {r['empty']:.0%} | {r['efficient']['examples_per_s']:.2f} "
            f"| {r['naive']['examples_per_s']:.2f} "
            f"| {r['speedup']:.2f}x | {r['efficient']['efficiency']:.1%} | {r['naive']['efficiency']:.1%} |"
        )
    return "\n".join(lines)


def update_doc(table: str) -> None:
    """Replace (or append) this benchmark's section of docs/benchmarks.md, leaving others alone."""
    update_section(SECTION, table, doc=DOC)


if __name__ == "__main__":
    sys.exit(main())
