"""train stage: MicroParade trained end to end on the chunks, with exact, resumable checkpoints.

Reads ``{run_dir}/chunks`` (training split) through the hot-swap :class:`~microparade.model.loader.ChunkLoader`
and writes, under the stage directory:

- ``model.pt`` — weights + everything inference needs (:mod:`microparade.model`);
- ``metrics.jsonl`` — one JSON object per log step: ``step``, ``epoch``, ``examples`` (all ranks,
  cumulative), ``loss`` and ``loss_{like,retweet,reply,quote}`` (means over the steps since the
  previous record, all ranks), ``lr``, ``examples_per_s``, ``data_efficiency`` (content tokens /
  encoded tokens over the same steps);
- ``tb/`` — the same scalars as TensorBoard events;
- manifest ``extra``: steps, examples, final loss, data efficiency, backend, world size, …

Optimisation: Adam (or AdamW) at ``train.lr`` after a linear warm-up of ``train.warmup_steps``,
gradient-norm clipping, mean binary cross-entropy over the 4 engagements. ``train.batch_size`` is
per process. Training stops after ``train.epochs`` epochs or ``train.max_steps`` steps
(when > 0), whichever comes first.

Determinism: Python, NumPy and torch generators are seeded from ``train.seed``, the data order from
the loader's seeded permutations, and deterministic algorithms are requested; on CPU the same
config gives bit-identical weights and losses. Only timing fields (``examples_per_s``, TensorBoard
wall times) vary between runs.

Checkpoints (model, optimizer, scheduler, every rank's RNG states, the loader position, the metrics
so far) are written every ``train.checkpoint_every`` steps and when SIGUSR2 or SIGTERM arrives (the
handler only sets a flag; the checkpoint is taken at the next step boundary, then the stage raises
:class:`~microparade.errors.PreemptedError` and the CLI exits 124 so a launcher can requeue).
They live under ``{run_dir}/train/_work/checkpoints/``, written atomically, the last two kept. On
start the newest checkpoint whose fingerprint equals the stage's is restored and training goes on
from the exact example where it stopped, giving the same result as an uninterrupted run.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from ...compute.backends import Backend, cpu_threads
from ...compute.factory import make_backend
from ...console import progress_bar
from ...engine.context import StageContext
from ...errors import PreemptedError, StageError
from ...model import MicroParade, build_model, encode_batch, model_bundle
from ...model.batching import Examples, ModelBatch, ShapeBuckets
from ...model.loader import Batch, ChunkLoader, LoaderState
from ...recsys_format import TARGETS
from ...storage import retry
from ..chunks.contract import ChunksManifest
from .optim import build_optimizer, freeze_encoder
from .validation import Selection, Validator, summary

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

CHECKPOINT_FORMAT = "microparade.train-checkpoint/1"
CHECKPOINT_DIR = "checkpoints"
KEEP_CHECKPOINTS = 2
STOP_SIGNALS = ("SIGUSR2", "SIGTERM")
#: Training rows (the first, in chunk order: a seeded random sample) the feature transform is fit on.
FEATURE_SAMPLE_ROWS = 50_000


# ----------------------------------------------------------------------------------------------
# signals
# ----------------------------------------------------------------------------------------------
class StopFlag:
    """Set by SIGUSR2 / SIGTERM; read at step boundaries (a handler must not do real work)."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, Any] = {}

    def __bool__(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signal.Signals(signum).name

    def install(self) -> bool:
        """Install the handlers (only possible in the main thread); False if they could not be."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for name in STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._handle)
        return True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


# ----------------------------------------------------------------------------------------------
# RNG state
# ----------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(backend: Backend) -> dict[str, Any]:
    """This process's generator states as plain types and tensors (``weights_only`` loadable)."""
    np_state = cast(tuple[Any, ...], np.random.get_state())
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        **backend.rng_state(),
    }


def set_rng_state(state: dict[str, Any], backend: Backend) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    backend.set_rng_state(state)


# ----------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------
@dataclass
class Interval:
    """Sums over the steps since the last log record (this process only)."""

    steps: int = 0
    loss: list[float] = field(default_factory=lambda: [0.0] * len(TARGETS))
    examples: int = 0
    valid_tokens: int = 0
    encoded_tokens: int = 0

    def add(self, per_target: list[float], examples: int, valid: int, encoded: int) -> None:
        self.steps += 1
        self.loss = [a + b for a, b in zip(self.loss, per_target)]
        self.examples += examples
        self.valid_tokens += valid
        self.encoded_tokens += encoded

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "loss": list(self.loss),
            "examples": self.examples,
            "valid_tokens": self.valid_tokens,
            "encoded_tokens": self.encoded_tokens,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Interval:
        return cls(
            int(d["steps"]),
            [float(x) for x in d["loss"]],
            int(d["examples"]),
            int(d["valid_tokens"]),
            int(d["encoded_tokens"]),
        )


def _efficiency(valid: float, encoded: float) -> float | None:
    return round(valid / encoded, 6) if encoded else None


def feature_sample(chunks: ChunksManifest, rows: int, storage_options: dict[str, Any] | None) -> torch.Tensor:
    """The features of the first ``rows`` training rows in chunk order, ``(N, F)``."""
    parts, n = [], 0
    with ChunkLoader(chunks, "train", batch_size=4096, shuffle=False, storage_options=storage_options) as loader:
        for batch in loader.epoch(0):
            parts.append(batch.examples.features)
            n += len(batch)
            if n >= rows:
                break
    return torch.from_numpy(np.concatenate(parts)[:rows])


# ----------------------------------------------------------------------------------------------
# the trainer
# ----------------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, ctx: StageContext, backend: Backend, stop: StopFlag) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.tc = ctx.cfg.train
        self.backend = backend
        self.stop = stop
        self.chunks = ChunksManifest.from_manifest(ctx.input("chunks"))
        self.specials = self.chunks.specials

        seed_everything(self.tc.seed)
        backend.seed(self.tc.seed)
        self.model = self._fresh_model()
        self.module = backend.wrap(self.model)
        self.static_shapes = self.tc.static_shapes or backend.static_shapes
        self.buckets = (
            ShapeBuckets.for_chunks(
                self.chunks,
                batch_size=self.tc.batch_size,
                rows=self.tc.shape_buckets.rows,
                lengths=self.tc.shape_buckets.lengths,
                multiple=backend.shape_multiple,
            )
            if self.static_shapes and self.tc.encoding == "efficient"
            else None
        )
        self.loader = ChunkLoader(
            self.chunks,
            "train",
            batch_size=self.tc.batch_size,
            rank=backend.rank,
            world_size=backend.world_size,
            seed=self.tc.seed,
            shuffle=True,
            remainder="drop",
            drop_last=self.static_shapes,
            storage_options=ctx.store.storage_options,
        )
        if not self.loader.chunks:
            raise StageError("the chunks manifest lists no chunk of the train split")
        per_epoch = self.loader.batches_per_epoch()
        if per_epoch == 0:
            raise StageError(
                f"the train split gives no batch of {self.tc.batch_size} per process "
                f"({self.loader.examples_per_epoch()} examples per process and epoch)"
            )
        total = per_epoch * self.tc.epochs
        self.total_steps = min(total, self.tc.max_steps) if self.tc.max_steps else total
        self.optimizer, self.scheduler = build_optimizer(self.model, self.tc, self.total_steps)
        backend.prepare_optimizer(self.optimizer)
        #: The validation sample (main process only; None without ``train.eval_every``).
        self.validator = (
            Validator(
                self.chunks,
                self.tc.eval_rows,
                self.tc.batch_size,
                self.encode,
                ctx.store.storage_options,
                pad_batches=self.buckets is not None,
            )
            if self.tc.eval_every and backend.is_main
            else None
        )
        self.selection = Selection()

        # progress state (restored from a checkpoint)
        self.step = 0
        self.position = LoaderState(0, 0, 0)
        self.records: list[dict[str, Any]] = []
        self.interval = Interval()
        self.totals = {"examples": 0, "valid_tokens": 0, "encoded_tokens": 0}
        self.last_lr = self._lrs()
        #: Steps whose loss is still a device tensor: read back at the next record or checkpoint, so
        #: an asynchronous device is not waited for at every step.
        self.pending: list[tuple[torch.Tensor, int, int, int]] = []
        #: Encoder-call shapes met so far (static shapes: each is one compiled graph).
        self.shapes: set[tuple[int, int]] = set()
        #: Examples since the interval timer started (not checkpointed: a resumed run's first
        #: interval is timed from the resume on).
        self.timed_examples = 0

    def _fresh_model(self) -> MicroParade:
        """The initial model: built from the seed, its feature transform fitted, its output at the prior."""
        model = build_model(self.cfg.model, self.chunks, seed=self.tc.seed)
        if self.cfg.model.feature_transform == "log":
            sample = feature_sample(self.chunks, FEATURE_SAMPLE_ROWS, self.ctx.store.storage_options)
            logged = model.fit_feature_transform(sample)
            names = ", ".join(self.chunks.feature_names[i] for i in logged) or "none"
            self.ctx.log("feature transform fitted on %d training rows; log-scaled: %s", len(sample), names)
        if self.tc.prior_init:
            model.init_output(self.chunks.positive_log_odds("train"))
        frozen = freeze_encoder(model, self.tc.encoder_trainable_layers)
        if frozen:
            self.ctx.log(
                "encoder: %d parameters frozen (train.encoder_trainable_layers=%d)",
                frozen,
                self.tc.encoder_trainable_layers,
            )
        return model

    # -- checkpoints ----------------------------------------------------------------------------
    @property
    def _ckpt_rel(self) -> str:
        return f"{self.ctx.work_rel}/{CHECKPOINT_DIR}"

    def _checkpoint_files(self) -> list[str]:
        names = self.ctx.store.walk_files(self._ckpt_rel)
        return sorted(f for f in names if f.startswith("ckpt-") and f.endswith(".pt"))

    def save_checkpoint(self) -> None:
        self.flush()
        states = self.backend.all_gather_object(rng_state(self.backend))
        if self.backend.is_main:
            payload = {
                "format": CHECKPOINT_FORMAT,
                "fingerprint": self.ctx.fingerprint,
                "step": self.step,
                "world_size": self.backend.world_size,
                "loader_state": self.position.to_dict(),
                "model": self.backend.to_cpu(self.model.state_dict()),
                "optimizer": self.backend.to_cpu(self.optimizer.state_dict()),
                "scheduler": self.scheduler.state_dict(),
                "rng": states,
                "records": self.records,
                "interval": self.interval.to_dict(),
                "totals": dict(self.totals),
                "selection": self.selection.to_dict(),
            }
            buf = io.BytesIO()
            torch.save(payload, buf)
            name = f"ckpt-{self.step:09d}.pt"
            self.ctx.store.write_bytes_atomic(f"{self._ckpt_rel}/{name}", buf.getvalue())
            for old in self._checkpoint_files()[:-KEEP_CHECKPOINTS]:
                self.ctx.store.rm_file(f"{self._ckpt_rel}/{old}")
            # On the console too: a Slurm job's log must show where a requeued job resumes from.
            self.ctx.log("checkpoint %s at step %d (%s)", name, self.step, self.position)
        self.backend.barrier()

    def restore_checkpoint(self) -> bool:
        """Restore the newest checkpoint of this fingerprint; False when there is none."""
        for name in reversed(self._checkpoint_files()):
            rel = f"{self._ckpt_rel}/{name}"
            try:
                raw = self.ctx.store.read_bytes(rel)
                ckpt = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
            except Exception as exc:  # a truncated or foreign file: fall back to an older one
                self.ctx.log("ignoring checkpoint %s: unreadable (%s)", name, exc)
                continue
            if ckpt.get("format") != CHECKPOINT_FORMAT or ckpt.get("fingerprint") != self.ctx.fingerprint:
                self.ctx.log(
                    "ignoring checkpoint %s: made for another fingerprint (config, code or inputs changed)", name
                )
                continue
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            # Restored state placed like fresh state. Before the RNG states: on XLA this runs the
            # pending transfers, and every graph run advances the device generator.
            self.backend.prepare_optimizer(self.optimizer)
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.step = int(ckpt["step"])
            self.position = LoaderState.from_dict(ckpt["loader_state"])
            old_world = int(ckpt["world_size"])
            if old_world == self.backend.world_size:
                set_rng_state(ckpt["rng"][self.backend.rank], self.backend)
            else:
                # Shards change size: RNG streams restart and the offset inside the current chunk
                # is scaled to the same fraction of the new shard.
                scaled = self.loader.rescale_position(self.position, old_world)
                self.ctx.log(
                    "checkpoint %s was written by %d process(es), now %d: RNG streams restart (not bit-exact); "
                    "loader position %s rescaled to %s (a few examples of that chunk may be repeated or skipped)",
                    name,
                    old_world,
                    self.backend.world_size,
                    self.position,
                    scaled,
                )
                seed_everything(self.tc.seed + self.step + self.backend.rank)
                self.position = scaled
            self.records = list(ckpt["records"])
            self.interval = Interval.from_dict(ckpt["interval"])
            self.totals = {k: int(v) for k, v in ckpt["totals"].items()}
            self.selection = Selection.from_dict(ckpt["selection"])
            self.ctx.log("resumed from checkpoint %s: step %d, %s", name, self.step, self.position)
            return True
        return False

    # -- one step ---------------------------------------------------------------------------------
    def encoded(self, epoch: int, start: LoaderState | None) -> Iterator[tuple[Batch, ModelBatch]]:
        """The epoch's batches with their model tensors (on the CPU: the backend moves them)."""
        for batch in self.loader.epoch(epoch, start):
            if not batch.examples.labelled:
                raise StageError("the train split has rows without labels; the chunks stage must not produce them")
            yield batch, self.encode(batch.examples)

    def encode(self, examples: Examples) -> ModelBatch:
        """The model tensors of ``examples`` (on the CPU) in this run's encoding."""
        return encode_batch(
            examples,
            specials=self.specials,
            max_length=self.chunks.max_length,
            encoding=self.tc.encoding,
            token_budget=self.tc.token_budget,
            buckets=self.buckets,
            use_text=self.cfg.model.use_text,
            use_history=self.cfg.model.use_history,
        )

    def train_step(self, mb: ModelBatch) -> torch.Tensor:
        """One optimizer step; the per-target losses (detached, on the device)."""
        self.module.train()
        logits = self.module(mb)
        per_target = F.binary_cross_entropy_with_logits(logits, mb.labels, reduction="none").mean(dim=0)
        loss = per_target.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.grad_clip)
        self.last_lr = self._lrs()
        self.optimizer.step()
        self.scheduler.step()
        self.backend.step_end()
        return per_target.detach()

    def flush(self) -> None:
        """Read the pending steps' losses back into the current interval (in step order)."""
        for per_target, examples, valid, encoded in self.pending:
            self.interval.add(per_target.cpu().double().tolist(), examples, valid, encoded)
        self.pending.clear()

    # -- logging --------------------------------------------------------------------------------
    def make_record(self, epoch: int, seconds: float) -> dict[str, Any]:
        self.flush()
        iv = self.interval
        vals = self.backend.all_reduce_values(
            [*iv.loss, iv.steps, iv.examples, iv.valid_tokens, iv.encoded_tokens, self.timed_examples], op="sum"
        )
        n = len(TARGETS)
        world = self.backend.world_size
        steps = vals[n] / world
        per_target = [v / (steps * world) for v in vals[:n]]
        examples, valid, encoded, timed = int(vals[n + 1]), vals[n + 2], vals[n + 3], vals[n + 4]
        self.totals["examples"] += examples
        record: dict[str, Any] = {
            "step": self.step,
            "epoch": epoch,
            "examples": self.totals["examples"],
            "loss": float(np.mean(per_target)),
            **{f"loss_{t}": per_target[i] for i, t in enumerate(TARGETS)},
            "lr": self.last_lr.get("encoder", self.last_lr.get("head")),
            "lr_head": self.last_lr.get("head"),
            "examples_per_s": round(timed / seconds, 3) if seconds > 0 else None,
            "data_efficiency": _efficiency(valid, encoded),
        }
        compilations = self.backend.compilations()
        if compilations is not None:
            record["compilations"] = compilations
        self.totals["valid_tokens"] += int(valid)
        self.totals["encoded_tokens"] += int(encoded)
        self.interval = Interval()
        self.timed_examples = 0
        return record

    # -- the loop -------------------------------------------------------------------------------
    def fit(self, writer) -> None:
        resumed = self.restore_checkpoint()
        if writer is not None:
            for r in self.records:
                _write_scalars(writer, r)
        if resumed and self.step >= self.total_steps:
            return
        self.ctx.log(
            "training on %s: %d step(s) of %d example(s) per process, %d chunk(s), encoding %s",
            self.backend.describe(),
            self.total_steps,
            self.tc.batch_size,
            len(self.loader),
            self.tc.encoding,
        )
        t_interval = time.perf_counter()
        done = False
        with self._bar() as bar:
            for epoch in range(self.position.epoch, self.tc.epochs):
                start = self.position if self.position.epoch == epoch else None
                for batch, mb in self.backend.feed(self.encoded(epoch, start)):
                    per_target = self.train_step(mb)
                    self.step += 1
                    self.position = batch.state
                    self.pending.append((per_target, len(batch), mb.valid_tokens, mb.encoded_tokens))
                    if mb.shape is not None:
                        self.shapes.add(mb.shape)
                    self.timed_examples += len(batch)
                    if bar is not None:
                        bar.update(1)
                    done = self.step >= self.total_steps
                    if self.step % self.tc.log_every == 0 or done:
                        now = time.perf_counter()
                        self._log(self.make_record(epoch, now - t_interval), writer)
                        t_interval = now
                    if self.tc.eval_every and (self.step % self.tc.eval_every == 0 or done):
                        if self.validate(epoch, writer):
                            self.selection.stopped_early = done = True
                    if done:
                        break
                    stop = self._stop_requested()
                    if stop or self.step % self.tc.checkpoint_every == 0:
                        self.save_checkpoint()
                    if stop:
                        raise PreemptedError(
                            f"stopped on {self.stop.signal or 'a signal on another rank'} at step {self.step}; "
                            f"checkpoint saved, rerun to resume"
                        )
                if done:
                    break
                self.position = LoaderState(epoch + 1, 0, 0)

    def _bar(self) -> AbstractContextManager[tqdm | None]:
        """The steps' progress bar (:func:`~microparade.console.progress_bar`), on the main process only."""
        if not self.backend.is_main:
            return nullcontext()
        return progress_bar(self.total_steps, "train", unit="step", initial=self.step)

    # -- model selection ------------------------------------------------------------------------
    def _lrs(self) -> dict[str, float]:
        """The current learning rate of each parameter group (``encoder``, ``head``, ...)."""
        return {str(g["name"]): float(g["lr"]) for g in self.optimizer.param_groups}

    def _state_copy(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the model's weights (training goes on changing the originals in place)."""
        state = self.backend.to_cpu(self.model.state_dict())
        return {k: v.detach().cpu().clone() for k, v in state.items()}

    def validate(self, epoch: int, writer) -> bool:
        """Score the validation sample and keep the best model; True when patience ran out."""
        out_of_patience = 0.0
        if self.validator is not None:
            t0 = time.perf_counter()
            scores = summary(self.validator.score(self.model, self.backend))
            record = {"step": self.step, "epoch": epoch, "rows": len(self.validator), **scores}
            record["seconds"] = round(time.perf_counter() - t0, 3)
            improved = self.selection.add(record, self._state_copy)
            if writer is not None:
                _write_scalars(writer, record)
            sel = self.selection
            self.ctx.log(
                "validation at step %d on %d rows: avg AP %s, avg RCE %s%s (best avg AP %s at step %s)",
                self.step,
                len(self.validator),
                _fmt(scores["valid_ap"]),
                _fmt(scores["valid_rce"], 2),
                ", new best" if improved else "",
                _fmt(sel.best_score),
                sel.best_step,
            )
            if self.tc.patience and sel.since_best >= self.tc.patience:
                self.ctx.log("early stop: %d validation(s) without a new best", sel.since_best)
                out_of_patience = 1.0
        return self.backend.all_reduce_values([out_of_patience], op="max")[0] > 0

    def _stop_requested(self) -> bool:
        """Whether any rank got a stop signal (all ranks must checkpoint at the same step)."""
        flag = 1.0 if self.stop else 0.0
        return self.backend.all_reduce_values([flag], op="max")[0] > 0

    def _log(self, record: dict[str, Any], writer) -> None:
        self.records.append(record)
        if writer is not None:
            _write_scalars(writer, record)
        if not self.backend.is_main:
            return
        eff = record["data_efficiency"]
        self.ctx.log(
            "step %d/%d epoch %d loss %.4f lr %.2e %s ex/s data efficiency %s",
            record["step"],
            self.total_steps,
            record["epoch"],
            record["loss"],
            record["lr"],
            record["examples_per_s"],
            f"{eff:.3f}" if eff is not None else "-",
        )

    # -- outputs --------------------------------------------------------------------------------
    def write_outputs(self) -> None:
        ctx = self.ctx
        sel = self.selection
        best = sel.best_state
        for name, state in (("model.pt", best), ("model_last.pt", None)):
            buf = io.BytesIO()
            torch.save(model_bundle(self.model, self.cfg.model, self.chunks, state_dict=state), buf)
            with ctx.open_out(name) as f:
                f.write(buf.getvalue())
        for name, rows in (("metrics.jsonl", self.records), ("validation.jsonl", sel.history)):
            lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
            with ctx.open_out(name) as f:
                f.write(lines.encode())
        ctx.extra["selection"] = {
            "model": "best" if best is not None else "last",
            "metric": "valid avg AP" if best is not None else None,
            "best_step": sel.best_step,
            "best_valid_ap": sel.best_score,
            "last_step": self.step,
            "validations": len(sel.history),
            "stopped_early": sel.stopped_early,
        }
        if best is not None:
            ctx.log(
                "model.pt: the best model (step %d, valid avg AP %.4f); model_last.pt: step %d",
                sel.best_step,
                sel.best_score,
                self.step,
            )
        last = self.records[-1] if self.records else {}
        ctx.extra.update(
            steps=self.step,
            examples=self.totals["examples"],
            epochs=self.tc.epochs,
            final_loss=last.get("loss"),
            final_loss_per_target={t: last.get(f"loss_{t}") for t in TARGETS},
            data_efficiency=_efficiency(self.totals["valid_tokens"], self.totals["encoded_tokens"]),
            encoding=self.tc.encoding,
            backend=self.backend.name,
            world_size=self.backend.world_size,
            devices=self.backend.shape_multiple,
            batch_size_per_process=self.tc.batch_size,
            parameters=sum(p.numel() for p in self.model.parameters()),
            static_shapes=self.static_shapes,
        )
        if self.buckets is not None:
            ctx.extra.update(
                shape_buckets={"rows": list(self.buckets.rows), "lengths": list(self.buckets.lengths)},
                shapes_used=sorted([list(s) for s in self.shapes]),
            )
        compilations = self.backend.compilations()
        if compilations is not None:
            ctx.extra.update(compilations=compilations, replicas_identical=self.backend.replicas_identical(self.model))


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _write_scalars(writer, record: dict[str, Any]) -> None:
    step = record["step"]
    for key in ("loss", *(f"loss_{t}" for t in TARGETS), "lr", "lr_head", "examples_per_s", "data_efficiency"):
        if record.get(key) is not None:
            writer.add_scalar(f"train/{key}", record[key], step)
    for key, value in record.items():
        if key.startswith("valid_") and value is not None:
            writer.add_scalar(f"valid/{key[len('valid_') :]}", value, step)


# ----------------------------------------------------------------------------------------------
# stage entry point
# ----------------------------------------------------------------------------------------------
def run(ctx: StageContext) -> None:
    stop = StopFlag()
    if not stop.install():
        ctx.log("not in the main thread: SIGUSR2/SIGTERM checkpointing is off")
    tc = ctx.cfg.train
    previous_threads = torch.get_num_threads()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    backend = make_backend(tc.backend).setup()
    try:
        # Always set the thread count: starting a Dask cluster earlier in the same process sets
        # OMP_NUM_THREADS=1, so relying on torch's default would make a full run and a resumed
        # train-only run use different thread counts (and different floating-point results).
        torch.set_num_threads(cpu_threads(tc.num_threads))
        torch.use_deterministic_algorithms(True, warn_only=True)
        trainer = Trainer(ctx, backend, stop)
        try:
            with _tensorboard(ctx, backend.is_main) as writer:
                trainer.fit(writer)
        finally:
            trainer.loader.close()
        if backend.is_main:
            trainer.write_outputs()
        backend.barrier()
    finally:
        stop.restore()
        backend.shutdown()
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)


class _tensorboard:
    """A SummaryWriter under ``tb/`` of the stage's outputs (main process only).

    Event files are written locally: straight into the staging directory for a local run_dir, else
    into a temporary directory uploaded when training ends. A resumed run starts a new event file
    and first rewrites the earlier scalars from the checkpoint's records (a rerun clears staging).
    """

    def __init__(self, ctx: StageContext, enabled: bool) -> None:
        self.ctx = ctx
        self.enabled = enabled
        self.writer: SummaryWriter | None = None
        self.tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self):
        if not self.enabled:
            return None
        from torch.utils.tensorboard import SummaryWriter

        if self.ctx.store.local:
            log_dir = self.ctx.out_path("tb")
        else:
            self.tmp = tempfile.TemporaryDirectory(prefix="microparade-tb-")
            log_dir = self.tmp.name
        self.writer = SummaryWriter(log_dir=log_dir)
        return self.writer

    def __exit__(self, *exc: Any) -> None:
        if self.writer is None:
            return
        self.writer.close()
        if self.tmp is not None:
            try:
                if exc[0] is None:
                    for root, _, files in os.walk(self.tmp.name):
                        for name in files:
                            local = os.path.join(root, name)
                            rel = os.path.relpath(local, self.tmp.name).replace(os.sep, "/")
                            target = self.ctx.out_path(f"tb/{rel}")
                            upload = partial(self.ctx.store.fs.pipe_file, target, Path(local).read_bytes())
                            retry(upload, what=f"upload tb/{rel}")
            finally:
                self.tmp.cleanup()
