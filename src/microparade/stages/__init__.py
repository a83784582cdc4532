"""The pipeline's stages: names, data dependencies and the config sections they depend on.

Stage modules are imported only when a stage runs, so ``microparade status`` stays light.
Each module exposes ``run(ctx: microparade.runner.StageContext) -> None``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import Config


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

    def load(self) -> Callable:
        return importlib.import_module(self.module).run


STAGES: tuple[StageSpec, ...] = (
    StageSpec(
        "generate",
        inputs=(),
        config_keys=("data.generate", "data.tokenizer"),
        module="microparade.stages.generate",
        enabled=lambda cfg: cfg.data.generate is not None,
        description="synthetic RecSys 2021 raw files with planted signal",
    ),
    StageSpec(
        "ingest",
        inputs=("generate",),
        config_keys=("data.raw", "ingest"),
        module="microparade.stages.ingest",
        description="raw files -> validated typed Parquet per split + quarantine",
    ),
    StageSpec(
        "text",
        inputs=("ingest",),
        config_keys=("data.tokenizer", "text", "history", "model.encoder"),
        module="microparade.stages.text",
        description="cleaned text, per-user engagement histories, history windows",
    ),
    StageSpec(
        "features",
        inputs=("ingest",),
        config_keys=("features",),
        module="microparade.stages.features",
        description="categorical, count, target encoding, difference lags, datetime features",
    ),
    StageSpec(
        "chunks",
        inputs=("ingest", "text", "features"),
        config_keys=("chunks",),
        module="microparade.stages.chunks",
        description="join + shuffle, ~target_mb Parquet chunks + manifest",
    ),
    StageSpec(
        "train",
        inputs=("chunks",),
        config_keys=("model", "train", "history.prefix"),
        module="microparade.stages.train",
        description="MicroParade training with checkpoints",
    ),
    StageSpec(
        "evaluate",
        inputs=("train", "chunks"),
        config_keys=("evaluate",),
        module="microparade.stages.evaluate",
        description="predictions, AP and RCE per engagement",
    ),
    StageSpec(
        "report",
        inputs=("evaluate", "train", "chunks", "features", "text", "ingest"),
        config_keys=("report",),
        module="microparade.stages.report",
        description="HTML + Markdown report with baseline",
    ),
)

STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def available(spec: StageSpec) -> bool:
    """Whether the stage's module exists in this version of the package."""
    return importlib.util.find_spec(spec.module) is not None


def pipeline(cfg: Config) -> list[StageSpec]:
    """The enabled stages of this config, in order, with inputs pruned to enabled stages."""
    enabled = [s for s in STAGES if s.enabled(cfg) and available(s)]
    names = {s.name for s in enabled}
    out = []
    for s in enabled:
        out.append(
            StageSpec(
                s.name,
                tuple(i for i in s.inputs if i in names),
                s.config_keys,
                s.module,
                s.enabled,
                s.description,
            )
        )
    return out


def get(cfg: Config, name: str) -> StageSpec:
    for s in pipeline(cfg):
        if s.name == name:
            return s
    if name in STAGE_NAMES:
        raise KeyError(f"stage {name!r} is not enabled by this config (or not available in this version)")
    raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGE_NAMES)}")
