"""The pipeline's stages: the one place that holds every fact about a stage.

A :class:`StageSpec` names a stage's inputs, the config sections in its fingerprint, the package
that runs it, how it runs (on Dask, requeueing after a checkpoint, one task per GPU) and the
default Slurm resources of its job. The sbatch scripts (``slurm/<stage>.sbatch``), ``plan`` and
the submitit launcher all render from it. Adding a stage means adding a :class:`StageSpec` here,
a package ``microparade.stages.<name>`` exposing ``run(ctx: StageContext) -> None``, its
``slurm.<name>`` resources section in ``config.py``, and ``python -m microparade.slurm.scripts``
to render its sbatch script and jobs file (tests check all three agree).

Stage packages are imported only when a stage runs, so ``microparade status`` stays light.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ..config import Config, SlurmStageConfig

if TYPE_CHECKING:
    from .context import StageContext
    from .manifest import Manifest

#: Seconds between Slurm's time-limit warning (SIGUSR2) and the end of a requeueing stage's job.
SIGNAL_WARNING_S = 90


def _resources(cpus: int, mem: str, time: str) -> SlurmStageConfig:
    return SlurmStageConfig(nodes=1, cpus_per_task=cpus, mem=mem, time=time)


@dataclass(frozen=True)
class StageSpec:
    name: str
    #: Upstream stages whose outputs this stage reads (its fingerprint includes their manifests).
    inputs: tuple[str, ...]
    #: Dotted config paths whose values enter the fingerprint.
    config_keys: tuple[str, ...]
    module: str
    enabled: Callable[[Config], bool] = field(default=lambda cfg: True)
    description: str = ""
    #: Default Slurm resources of the stage's job; ``slurm.default`` then ``slurm.<stage>`` override them.
    resources: SlurmStageConfig = field(default_factory=lambda: _resources(4, "8G", "02:00:00"))
    #: Computes on Dask: with ``cluster.kind=scheduler_file`` its sbatch job starts the Dask
    #: cluster inside its own allocation first (slurm/dask-cluster.sh).
    dask: bool = False
    #: Checkpoints on SIGUSR2/SIGTERM and exits 124; its job gets ``--requeue`` and a time-limit
    #: warning signal, and requeues itself to resume.
    requeue: bool = False
    #: One task per GPU (torch DDP): ``--ntasks-per-node`` follows ``gpus_per_node``.
    task_per_gpu: bool = False
    #: In an experiment (``microparade sweep``): a data stage is computed once per distinct identity
    #: under ``{sweep_dir}/shared/`` and read by every run that needs it; a model stage (False) runs
    #: in each run's own directory, as one task of the sweep's job array.
    shared_in_sweep: bool = True

    #: For a stage a run can start from when it was published elsewhere (``data.chunks``): the
    #: module whose ``validate(manifest)`` checks such a directory (contract, schema), raising
    #: :class:`~microparade.errors.StageError` with the reason.
    validate_import: str | None = None

    def load(self) -> Callable[[StageContext], None]:
        run: Callable[[StageContext], None] = importlib.import_module(self.module).run
        return run

    def load_import_validator(self) -> Callable[[Manifest], None]:
        if self.validate_import is None:
            raise KeyError(f"stage {self.name} cannot be imported")
        validate: Callable[[Manifest], None] = importlib.import_module(self.validate_import).validate
        return validate


def _computes_chunks(cfg: Config) -> bool:
    """The data stages run unless the chunks come from elsewhere (``data.chunks``)."""
    return cfg.data.chunks is None


STAGES: tuple[StageSpec, ...] = (
    StageSpec(
        "generate",
        inputs=(),
        config_keys=("data.generate", "data.tokenizer"),
        module="microparade.stages.generate",
        enabled=lambda cfg: cfg.data.generate is not None and cfg.data.chunks is None,
        description="synthetic RecSys 2021 raw files with planted signal",
        resources=_resources(2, "4G", "01:00:00"),
    ),
    StageSpec(
        "ingest",
        inputs=("generate",),
        config_keys=("data.raw", "ingest"),
        module="microparade.stages.ingest",
        enabled=_computes_chunks,
        description="raw files -> validated typed Parquet per split + quarantine",
        resources=_resources(4, "8G", "02:00:00"),
        dask=True,
    ),
    StageSpec(
        "text",
        inputs=("ingest",),
        config_keys=("data.tokenizer", "text", "history", "model.encoder"),
        module="microparade.stages.text",
        enabled=_computes_chunks,
        description="cleaned text, per-user engagement histories, history windows",
        resources=_resources(4, "8G", "04:00:00"),
        dask=True,
    ),
    StageSpec(
        "features",
        inputs=("ingest",),
        config_keys=("features",),
        module="microparade.stages.features",
        enabled=_computes_chunks,
        description="categorical, count, target encoding, difference lags, datetime features",
        resources=_resources(4, "8G", "04:00:00"),
        dask=True,
    ),
    StageSpec(
        "chunks",
        inputs=("ingest", "text", "features"),
        config_keys=("chunks",),
        module="microparade.stages.chunks",
        validate_import="microparade.stages.chunks.imported",
        description="join + shuffle, ~target_mb Parquet chunks + manifest",
        resources=_resources(4, "8G", "02:00:00"),
        dask=True,
    ),
    StageSpec(
        "train",
        inputs=("chunks",),
        config_keys=("model", "train", "history.prefix"),
        module="microparade.stages.train",
        description="MicroParade training with checkpoints",
        resources=_resources(4, "8G", "1-00:00:00"),
        requeue=True,
        task_per_gpu=True,
        shared_in_sweep=False,
    ),
    StageSpec(
        "evaluate",
        inputs=("train", "chunks"),
        config_keys=("evaluate",),
        module="microparade.stages.evaluate",
        description="predictions, AP and RCE per engagement",
        resources=_resources(4, "8G", "02:00:00"),
        shared_in_sweep=False,
    ),
    StageSpec(
        "report",
        inputs=("evaluate", "train", "chunks", "features", "text", "ingest"),
        config_keys=("report",),
        module="microparade.stages.report",
        description="HTML + Markdown report with baseline",
        resources=_resources(2, "4G", "00:30:00"),
        shared_in_sweep=False,
    ),
)

STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def pipeline(cfg: Config) -> list[StageSpec]:
    """The enabled stages of this config, in order, with inputs pruned to enabled stages."""
    enabled = [s for s in STAGES if s.enabled(cfg)]
    names = {s.name for s in enabled}
    return [replace(s, inputs=tuple(i for i in s.inputs if i in names)) for s in enabled]


def by_name(name: str) -> StageSpec:
    """The registered stage ``name``, enabled by a config or not."""
    for s in STAGES:
        if s.name == name:
            return s
    raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGE_NAMES)}")
