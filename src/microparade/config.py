"""The run configuration: one typed, validated tree, loaded from YAML plus ``key=value`` overrides.

Every field has a default that runs on a laptop (local Dask, local files, CPU, the offline MiniLM
encoder); a YAML file overrides what it names. Unknown keys and bad values are reported together
as one :class:`ConfigError` before anything runs. ``docs/config.md`` documents every key.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

SPLITS = ("train", "valid", "test")
Split = Literal["train", "valid", "test"]


def _splits(*names: Split) -> list[Split]:
    return list(names)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
class RawData(Section):
    """Raw RecSys 2021 files per split: a URL, a glob, a directory, or a list of those."""

    #: Training split: files, globs or directories (24 fields per line).
    train: list[str] = Field(default_factory=list)
    #: Validation split (24 fields; histories are filled from train + valid).
    valid: list[str] = Field(default_factory=list)
    #: Test split (20 fields without labels, or 24).
    test: list[str] = Field(default_factory=list)

    @field_validator("train", "valid", "test", mode="before")
    @classmethod
    def _as_list(cls, v: Any) -> Any:
        if v is None:
            return []
        if isinstance(v, str):
            return [v]
        return v


class GenerateConfig(Section):
    """Synthetic RecSys 2021 data written by the ``generate`` stage (see docs/synthetic-data.md)."""

    #: Total rows over the three splits.
    rows: int = Field(200_000, ge=100)
    #: Distinct users (readers and authors); null = max(200, rows // 25).
    users: int | None = Field(None, ge=10)
    #: Seed of every random choice: same seed, byte-identical files.
    seed: int = 0
    #: Tokenizer rendering the topic vocabularies; null = ``data.tokenizer``.
    tokenizer: str | None = None
    #: Share of rows in the validation split (first part of week 4).
    valid_fraction: float = Field(0.1, gt=0, lt=0.5)
    #: Share of rows in the test split (last part of week 4).
    test_fraction: float = Field(0.1, gt=0, lt=0.5)
    #: Rows per raw file ``part-NNNNN``.
    rows_per_file: int = Field(250_000, ge=1000)
    #: Compress raw files (``.gz``, ``.bz2``, ``.zst``); null = plain text.
    compression: Literal["gzip", "bz2", "zstd"] | None = None
    #: Number of latent topics (disjoint vocabularies) behind the text signal.
    topics: int = Field(48, ge=2)


class DataConfig(Section):
    #: Raw input files per split (when not generated).
    raw: RawData = Field(default_factory=RawData)
    #: When set, the ``generate`` stage writes synthetic raw files under ``{run_dir}/generate/`` and
    #: they become ``data.raw`` (which must then be empty).
    generate: GenerateConfig | None = None
    #: Tokenizer that produced ``text_tokens`` in the raw files: ``minilm`` (the generator's default)
    #: or a local directory (bert-base-multilingual-cased for the real challenge data).
    tokenizer: str | None = "minilm"
    #: Start from chunks published elsewhere: a root URL whose ``chunks/`` directory holds a
    #: published chunks stage (another run's ``run_dir``, or any root a ``chunks/`` was copied
    #: under). The run then reads them there, validated (contract, schema, files), and computes only
    #: train, evaluate and report: ``data.raw`` and ``data.generate`` are not used.
    chunks: str | None = None

    @field_validator("chunks")
    @classmethod
    def _chunks_root(cls, v: str | None) -> str | None:
        from .storage import normalize_url

        if v is not None and not v.strip():
            raise ValueError("data.chunks must be a root URL holding chunks/, or null")
        return None if v is None else normalize_url(v)

    @model_validator(mode="after")
    def _raw_or_generate(self) -> DataConfig:
        if self.generate is not None and (self.raw.train or self.raw.valid or self.raw.test):
            raise ValueError("set either data.generate (synthetic data) or data.raw.*, not both")
        return self


# --------------------------------------------------------------------------------------------
# execution
# --------------------------------------------------------------------------------------------
class JobqueueConfig(Section):
    """dask-jobqueue ``SLURMCluster``: Dask workers as separate Slurm jobs."""

    #: Worker jobs to submit.
    jobs: int = Field(2, ge=1)
    #: Cores per worker job.
    cores: int = Field(4, ge=1)
    #: Dask worker processes per job.
    processes: int = Field(1, ge=1)
    #: Memory per worker job.
    memory: str = "8GiB"
    #: Time limit of each worker job.
    walltime: str = "01:00:00"
    #: Slurm partition of the worker jobs.
    queue: str | None = None
    #: Slurm account of the worker jobs.
    account: str | None = None
    #: Network interface of the workers (e.g. ``ib0``).
    interface: str | None = None
    #: Address the scheduler listens on (``127.0.0.1`` for a single host).
    scheduler_host: str | None = None
    #: Worker scratch directory (node-local disk).
    local_directory: str | None = None
    #: Extra ``#SBATCH`` lines, e.g. ``--qos=high``.
    job_extra_directives: list[str] = Field(default_factory=list)
    #: Shell lines run before the worker starts (``module load``...).
    job_script_prologue: list[str] = Field(default_factory=list)
    #: Where worker job logs go.
    log_directory: str | None = None
    #: Python on the worker nodes (default: this one).
    python: str | None = None
    #: Fail when the workers have not connected after this many seconds.
    wait_timeout_s: float = Field(300, gt=0)


class ClusterConfig(Section):
    """Where the Dask stages (ingest, text, features, chunks) compute."""

    #: ``local`` (LocalCluster), ``jobqueue`` (workers as Slurm jobs) or ``scheduler_file`` (attach to
    #: workers started in this allocation).
    kind: Literal["local", "jobqueue", "scheduler_file"] = "local"
    #: Local cluster: worker processes.
    n_workers: int = Field(2, ge=1)
    #: Local cluster: threads per worker.
    threads_per_worker: int = Field(1, ge=1)
    #: Memory limit per worker (local cluster and dask-cluster.sh workers).
    memory_limit: str = "4GiB"
    #: Worker processes (True) or threads in the client process (False); memory:// run dirs force
    #: threads because worker processes cannot see the client's in-memory filesystem.
    processes: bool = True
    #: Start the Dask dashboard (its link is logged).
    dashboard: bool = True
    #: Scheduler file to attach to (``scheduler_file`` kind; slurm/dask-cluster.sh sets it).
    scheduler_file: str | None = None
    #: Wait for this many workers before computing (scheduler_file / jobqueue).
    min_workers: int = Field(1, ge=1)
    #: GPU workers: ``dask cuda worker`` per node, cuDF DataFrame backend (slurm/dask-cluster.sh).
    gpu: bool = False
    #: Dask comm protocol: ``tcp`` or ``ucx`` (UCXX through distributed-ucxx: InfiniBand, NVLink;
    #: over TCP on CPU nodes without either).
    protocol: Literal["tcp", "ucx"] = "tcp"
    #: Network interface for scheduler and workers (e.g. ``ib0`` for InfiniBand).
    interface: str | None = None
    #: GPU workers: RMM pool per GPU (fraction of GPU memory or a size), and UCX transports.
    rmm_pool_size: str | None = "0.9"
    #: With UCX: use InfiniBand (UCX's ``rc`` transport); off, UCX never tries IB. Turn it on for
    #: nodes on an InfiniBand fabric.
    enable_infiniband: bool = False
    #: GPU workers with UCX: use NVLink (``cuda_ipc``); never on CPU workers.
    enable_nvlink: bool = True
    #: Settings of the ``jobqueue`` kind.
    jobqueue: JobqueueConfig = Field(default_factory=JobqueueConfig)


class RunnerConfig(Section):
    #: How a done stage's files are verified before it is skipped: ``sha256`` re-hashes every file,
    #: ``size`` checks presence and size only (for very large runs on object stores).
    verify: Literal["sha256", "size"] = "sha256"
    #: Keep ``{stage}/_work`` (checkpoints) after a stage publishes.
    keep_work: bool = False
    #: Seconds between two heartbeats of the lease a runner holds on the stage it computes.
    lease_heartbeat_s: float = Field(30.0, gt=0)
    #: A lease whose heartbeat is older than this is dead and is taken over: the rule for an owner
    #: on another host outside Slurm (clocks must agree to well within it). At least 3 heartbeats.
    lease_expiry_s: float = Field(600.0, gt=0)
    #: Seconds to wait for a stage that a live runner elsewhere is computing before giving up
    #: (0: refuse at once; ``microparade run --wait`` waits without limit).
    lease_wait_s: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _expiry_covers_heartbeats(self) -> RunnerConfig:
        if self.lease_expiry_s < 3 * self.lease_heartbeat_s:
            raise ValueError(
                f"runner.lease_expiry_s ({self.lease_expiry_s:g}) must be at least 3 x runner.lease_heartbeat_s "
                f"({self.lease_heartbeat_s:g}): a live owner would be taken over"
            )
        return self


# --------------------------------------------------------------------------------------------
# stages
# --------------------------------------------------------------------------------------------
class IngestConfig(Section):
    #: Uncompressed files are parsed in blocks of this size (one output part per block);
    #: compressed files are one block each.
    blocksize: str = "64MiB"
    #: Fail the stage when more than this fraction of a split's lines is malformed.
    max_bad_fraction: float = Field(0.01, ge=0, le=1)
    #: Rows per Parquet row group of the ingest parts.
    row_group_size: int = Field(128 * 1024, ge=1024)


class HistoryConfig(Section):
    #: History items per example (H).
    size: int = Field(10, ge=1, le=64)
    #: ``past``: only engagements strictly before the target; ``centered``: the paper's window.
    window: Literal["past", "centered"] = "past"
    #: Prefix each history tweet with its engagement types (the paper's ablation).
    prefix: bool = False
    #: Splits whose engagements fill histories.
    sources: list[Split] = Field(default_factory=lambda: _splits("train", "valid"))


class TextConfig(Section):
    #: Max tokens kept per tweet (candidate or history item) after cleaning, specials included.
    max_length: int = Field(64, ge=8, le=512)
    #: Rows per user-hash partition of the history join (bounds worker memory; output does not depend on it).
    partition_rows: int = Field(200_000, ge=100)


class FeaturesConfig(Section):
    #: Out-of-fold target encoding on the training split: number of folds.
    te_folds: int = Field(5, ge=2)
    #: Target encoding smoothing ``p_smooth`` (pseudo-count of the prior).
    te_smoothing: float = Field(20.0, ge=0)
    #: Seed of the fold assignment (a hash of ``row_id`` and this seed).
    seed: int = 0


class ChunksConfig(Section):
    #: Chunk size in MB (1e6 bytes); each chunk within ±10% except a split's last.
    target_mb: float = Field(180.0, gt=0)
    #: Seed of the deterministic shuffle (splitmix64 of ``row_id`` xor seed).
    seed: int = 0
    #: Parquet compression of the chunks.
    compression: Literal["zstd", "snappy", "none"] = "zstd"
    #: Rows per Parquet row group of the chunks.
    row_group_rows: int = Field(8192, ge=64)
    #: Rows of the shuffled split (its first rows) encoded to estimate the bytes per row.
    sample_rows: int = Field(16384, ge=16)


class ModelConfig(Section):
    #: Hugging Face BERT-family encoder: ``minilm`` (offline all-MiniLM-L6-v2), a local directory,
    #: or ``tiny`` (a small randomly initialised BERT for fast tests).
    encoder: str = "minilm"
    #: ``single``: one compress+output net with 4 logits; ``multi``: one net per engagement (the paper's best).
    heads: Literal["single", "multi"] = "single"
    #: Add the learned hour-of-day embedding to each pair embedding (ablation switch).
    use_time: bool = True
    #: Use the text encoder; false = features-only model (ablation).
    use_text: bool = True
    #: Cross-encode the candidate with its history tweets; false = the candidate's own text only,
    #: every history slot empty (the no-history ablation: what the history earns over the candidate).
    use_history: bool = True
    #: Transformer aggregator layers.
    agg_layers: int = Field(2, ge=1)
    #: Transformer aggregator attention heads.
    agg_heads: int = Field(4, ge=1)
    #: Dropout in the aggregator and every feed-forward layer.
    dropout: float = Field(0.35, ge=0, lt=1)
    #: Width the aggregated text embedding is compressed to before the features are concatenated.
    compress_dim: int = Field(192, ge=8)
    #: Hidden width of the output feed-forward net.
    hidden_dim: int = Field(192, ge=8)
    #: Feature transform: ``log`` (fitted by train on a training sample: heavy-tailed features
    #: log-scaled, all standardised and clipped to ±8) or ``standard`` (the features stage's
    #: mean/std only).
    feature_transform: Literal["standard", "log"] = "log"


class ShapeBucketsConfig(Section):
    #: Encoder row-count buckets, spread evenly over (B, B·(1 + H)] sequences per batch.
    rows: int = Field(4, ge=1, le=64)
    #: Sequence-length buckets, spread evenly over (0, 2 × ``text.max_length``] tokens.
    lengths: int = Field(4, ge=1, le=32)


class TrainConfig(Section):
    #: ``cpu``, ``cuda`` (DDP from torchrun or Slurm variables) or ``xla`` (torch-xla SPMD over every
    #: TPU/XLA device of the host; one process per host; needs the ``.venv-tpu`` environment).
    backend: Literal["cpu", "cuda", "xla"] = "cpu"
    #: ``efficient``: only valid pairs, length-bucketed under a token budget; ``naive``: every slot
    #: padded to the longest possible pair, 2 × ``text.max_length`` (the paper's way).
    encoding: Literal["efficient", "naive"] = "efficient"
    #: Optimizer. ``adamw`` decays decoupled from the gradient; ``adam`` adds an L2 term to it.
    optimizer: Literal["adam", "adamw"] = "adamw"
    #: Peak learning rate of the pre-trained encoder (the paper: 1e-5).
    lr: float = Field(1e-5, gt=0)
    #: Peak learning rate of everything trained from scratch: aggregator, heads, the hour and
    #: empty-slot embeddings (and the whole features-only model).
    head_lr: float = Field(1e-3, gt=0)
    #: Weight decay, on the weight matrices only (never on biases, LayerNorm or embeddings).
    weight_decay: float = Field(0.01, ge=0)
    #: Linear warm-up steps (from 0 to the peak rates).
    warmup_steps: int = Field(0, ge=0)
    #: Learning-rate decay after the warm-up, to 0 at the last step: ``linear``, ``cosine`` or
    #: ``constant`` (no decay).
    schedule: Literal["constant", "linear", "cosine"] = "linear"
    #: Encoder layers fine-tuned, counted from the top: -1 = all (and the embeddings), 0 = a frozen
    #: encoder, k = the top k transformer layers. Frozen layers run forward only, which makes a
    #: step several times cheaper on CPUs (see docs/training.md).
    encoder_trainable_layers: int = Field(-1, ge=-1)
    #: Initialise the output biases to the log-odds of the training split's positive rates (the
    #: initial loss is then the prior's entropy instead of log 2 per engagement).
    prior_init: bool = True
    #: Examples per optimizer step (per process).
    batch_size: int = Field(32, ge=1)
    #: Passes over the training chunks.
    epochs: int = Field(1, ge=1)
    #: Stop after this many optimizer steps (0 = no limit, run ``epochs``).
    max_steps: int = Field(0, ge=0)
    #: Max gradient norm (0 = off).
    grad_clip: float = Field(1.0, ge=0)
    #: Seed of model init, dropout and the chunk order (CPU runs are bit-reproducible).
    seed: int = 0
    #: Score a fixed sample of validation rows (``eval_rows``) every N steps and at the last step;
    #: ``model.pt`` is then the model of the best valid average AP. 0 = no validation (``model.pt``
    #: is the last model). Needs chunks of the ``valid`` split.
    eval_every: int = Field(0, ge=0)
    #: Validation rows scored at every ``eval_every`` (a seeded sample, the same at every evaluation).
    eval_rows: int = Field(2000, ge=1)
    #: Stop early after this many validations without a new best (0 = never).
    patience: int = Field(0, ge=0)
    #: Checkpoint every N steps (and on SIGUSR2/SIGTERM).
    checkpoint_every: int = Field(200, ge=1)
    #: Log metrics (metrics.jsonl, TensorBoard) every N steps.
    log_every: int = Field(10, ge=1)
    #: Max tokens per encoder call in efficient encoding (pairs are bucketed by length under it).
    token_budget: int = Field(8192, ge=64)
    #: torch CPU threads of train and evaluate (0 = the physical cores this process may run on: its
    #: CPU affinity, at most Slurm's ``--cpus-per-task``; docs/training.md, "CPU threads on shared nodes").
    num_threads: int = Field(0, ge=0)
    #: Static shapes: each batch is one encoder call padded to a bucket of a fixed grid
    #: (``shape_buckets``) and short last batches are dropped, so a run compiles at most
    #: rows × lengths graphs. Always on with ``backend: xla``; costs data efficiency.
    static_shapes: bool = False
    #: The static-shape grid (also used by ``evaluate`` on ``xla``).
    shape_buckets: ShapeBucketsConfig = Field(default_factory=ShapeBucketsConfig)


class EvaluateConfig(Section):
    #: Splits to predict (metrics only where labels exist).
    splits: list[Split] = Field(default_factory=lambda: _splits("valid", "test"))
    #: Examples per inference batch.
    batch_size: int = Field(64, ge=1)
    #: Device for inference (one process): ``cpu``, ``cuda`` (the first visible GPU) or ``xla``
    #: (every XLA device of the host, static shapes from ``train.shape_buckets``).
    backend: Literal["cpu", "cuda", "xla"] = "cpu"
    #: Max tokens per encoder call (efficient encoding, as train.token_budget).
    token_budget: int = Field(8192, ge=64)
    #: Model to score: ``best`` (``model.pt``, the best validation AP when ``train.eval_every`` is
    #: on, else the last) or ``last`` (``model_last.pt``).
    model: Literal["best", "last"] = "best"
    #: Per-engagement probability calibration fit on a held-out part of the valid split
    #: (``calibration_fraction`` of its rows, chosen by row id) and applied to every split's
    #: predictions: ``isotonic``, ``platt`` (logistic on the logit) or ``none``. The valid
    #: metrics are then computed on the other rows only.
    calibration: Literal["none", "isotonic", "platt"] = "platt"
    #: Share of the valid split's rows held out to fit the calibrators.
    calibration_fraction: float = Field(0.5, gt=0, lt=1)
    #: Arithmetic of the text encoder when predicting (the rest of the model stays float32):
    #: ``fp32`` (as trained), ``bf16`` (the encoder cast to bfloat16: fast on CPUs with
    #: AVX512-BF16/AMX and on GPUs) or ``int8`` (dynamic int8 quantisation of its linear layers,
    #: CPU only). Measured speed and AP: docs/benchmarks.md, "Inference". Not on ``backend: xla``.
    precision: Literal["fp32", "bf16", "int8"] = "fp32"

    @model_validator(mode="after")
    def _precision_on_backend(self) -> EvaluateConfig:
        if self.precision != "fp32" and self.backend == "xla":
            raise ValueError(f"evaluate.precision={self.precision} is for backend cpu or cuda, not xla: use fp32")
        if self.precision == "int8" and self.backend != "cpu":
            raise ValueError(f"evaluate.precision=int8 runs on backend cpu only, not {self.backend}: use bf16 or fp32")
        return self


class ReportConfig(Section):
    #: Train the features-only HistGradientBoosting baseline.
    baseline: bool = True
    #: Training rows sampled for the baseline.
    baseline_max_rows: int = Field(200_000, ge=1000)
    #: Seed of the baseline's training-row sample and of its gradient-boosted trees.
    seed: int = 0
    #: OpenMP threads of the baseline's trees (0 = the CPUs this process may run on). Default 1:
    #: in a process that has run torch, or on a loaded node, more OpenMP threads made the trees
    #: 7-150x slower (782 s instead of 5 s at 6,000 rows on 2 cores), for identical trees.
    baseline_threads: int = Field(1, ge=0)
    #: Paired bootstrap resamples of the evaluation rows behind every model-vs-baseline
    #: difference's 95% interval (0 = no intervals).
    bootstrap: int = Field(1000, ge=0)
    #: URL of the comparison report of the experiment this run belongs to (``microparade sweep`` sets
    #: it; the run's report links to it).
    comparison: str | None = None


class SlurmStageConfig(Section):
    #: Slurm partition.
    partition: str | None = None
    #: Time limit (Slurm format, e.g. ``04:00:00`` or ``1-00:00:00``).
    time: str | None = None
    #: Nodes (multi-node Dask with ``scheduler_file``, multi-node DDP for train).
    nodes: int | None = Field(None, ge=1)
    #: GPUs per node (train: one task per GPU).
    gpus_per_node: int | None = Field(None, ge=0)
    #: CPUs per task.
    cpus_per_task: int | None = Field(None, ge=1)
    #: Memory per node (e.g. ``16G``).
    mem: str | None = None
    #: Slurm account.
    account: str | None = None
    #: Slurm QOS.
    qos: str | None = None


class SlurmConfig(Section):
    #: Job logs: ``{log_dir}/mp-<stage>-<jobid>.out`` (and submitit folders).
    log_dir: str = "logs"
    #: Resources for every stage unless the stage's own section sets them.
    default: SlurmStageConfig = Field(default_factory=SlurmStageConfig)
    #: Resources of the generate stage's job.
    generate: SlurmStageConfig = Field(default_factory=SlurmStageConfig)
    #: Resources of the ingest stage's job.
    ingest: SlurmStageConfig = Field(default_factory=SlurmStageConfig)
    #: Resources of the text stage's job.
    text: SlurmStageConfig = Field(default_factory=SlurmStageConfig)
    #: Resources of the features stage's job.
    features: SlurmStageConfig = Field(default_factory=SlurmStageConfig)
    #: Resources of the chunks stage's job.
    chunks: SlurmStageConfig = Field(default_factory=SlurmStageConfig)
    #: Resources of the train stage's job.
    train: SlurmStageConfig = Field(default_factory=SlurmStageConfig)
    #: Resources of the evaluate stage's job.
    evaluate: SlurmStageConfig = Field(default_factory=SlurmStageConfig)
    #: Resources of the report stage's job.
    report: SlurmStageConfig = Field(default_factory=SlurmStageConfig)


class Config(Section):
    #: Where every stage writes: a local path or an fsspec URL (file://, memory://, gs://, s3://).
    run_dir: str = Field("runs/default", validate_default=True)
    #: fsspec storage options for run_dir and raw data (e.g. gcsfs ``token``/``endpoint_url``).
    storage_options: dict[str, Any] = Field(default_factory=dict)
    #: Stages this run reads from another root instead of computing them: ``{stage: root URL}``, the
    #: stage living in ``{root}/{stage}/``. They are read-only here: ``run`` checks that each is done
    #: (fingerprint and files) and refuses to start a stage downstream of one that is not. ``microparade
    #: sweep`` sets this so that the variants of an experiment share one copy of their common stages.
    shared_stages: dict[str, str] = Field(default_factory=dict)
    data: DataConfig = Field(default_factory=DataConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    history: HistoryConfig = Field(default_factory=HistoryConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    chunks: ChunksConfig = Field(default_factory=ChunksConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)

    @field_validator("run_dir")
    @classmethod
    def _run_dir(cls, v: str) -> str:
        from .storage import normalize_url

        if not str(v).strip():
            raise ValueError("run_dir must not be empty")
        return normalize_url(v)

    @field_validator("shared_stages")
    @classmethod
    def _shared_stages(cls, v: dict[str, str]) -> dict[str, str]:
        from .storage import normalize_url

        if any(not str(root).strip() for root in v.values()):
            raise ValueError("a shared stage's root must not be empty")
        return {stage: normalize_url(root) for stage, root in v.items()}

    def stage_root(self, stage: str) -> str:
        """The root under which stage ``stage`` lives (``{root}/{stage}/``): ``run_dir`` unless shared,
        or imported (``data.chunks``)."""
        if stage == "chunks" and self.data.chunks is not None:
            return self.data.chunks
        return self.shared_stages.get(stage, self.run_dir)

    def section(self, dotted: str) -> Any:
        """The JSON-able value at a dotted path (``"data.generate"``, ``"history"``)."""
        node: Any = self
        for part in dotted.split("."):
            if not isinstance(node, BaseModel) or part not in type(node).model_fields:
                raise KeyError(f"no config key {dotted!r}")
            node = getattr(node, part)
        if isinstance(node, BaseModel):
            return node.model_dump(mode="json")
        return node

    def stage_backend(self, stage: str) -> str | None:
        """The torch backend stage ``stage`` computes on (``train.backend``, ``evaluate.backend``),
        or None for a stage without one."""
        backend = getattr(getattr(self, stage, None), "backend", None)
        return backend if isinstance(backend, str) else None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------
def parse_override(item: str) -> tuple[list[str], Any]:
    """``"history.size=10"`` → ``(["history", "size"], 10)``; values are parsed as YAML scalars."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {exc}") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = {}
                node[part] = child
            elif not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(path[: i + 1])} is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def format_validation_errors(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}): {exc.error_count()} problem(s)"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        value = err.get("input")
        shown = "" if err["type"] in ("extra_forbidden", "missing") else f" (got {value!r})"
        lines.append(f"  - {loc}: {msg}{shown}")
    return "\n".join(lines)


def build_config(data: dict[str, Any] | None, overrides: list[str] | None = None, source: str = "config") -> Config:
    data = apply_overrides(data or {}, list(overrides or []))
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_errors(exc, source)) from None


def array_task_path(path: str) -> str:
    """``path`` with ``%a`` replaced by ``$SLURM_ARRAY_TASK_ID`` (unchanged without ``%a``)."""
    if "%a" not in path:
        return path
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    if not task:
        raise ConfigError(
            f"config path {path!r} contains %a, the task id of a Slurm job array, but SLURM_ARRAY_TASK_ID "
            "is not set: only an array task can read it"
        )
    return path.replace("%a", task)


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config file (``None``: the embedded defaults) and apply ``key=value`` overrides.

    A ``%a`` in the path is the task id of a Slurm job array (``$SLURM_ARRAY_TASK_ID``), as in
    sbatch's file patterns: every task of a sweep's array reads its own run's config.
    """
    if path is None:
        return build_config({}, overrides, source="defaults")
    data = read_yaml_mapping(Path(array_task_path(str(path))), "config file", "of sections")
    return build_config(data, overrides, source=str(path))


def read_yaml_mapping(path: Path, what: str, of: str = "") -> dict[str, Any]:
    """The mapping at the top of the YAML file ``path`` (``what`` it is, for the errors): one
    :class:`ConfigError` when the file is missing, not YAML, or not a mapping (``of`` what)."""
    if not path.exists():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping{' ' + of if of else ''}")
    return data
