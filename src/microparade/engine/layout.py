"""Where each stage of a run lives: ``{run_dir}/{stage}/``, or ``{root}/{stage}/`` for a stage the run
shares with others (``shared_stages``: read-only here, published by the job that owns that root) or
imports (``data.chunks``: read-only, published by another run or checkout).

Every reader and writer of a stage directory gets its :class:`~microparade.storage.Store` here.
"""

from __future__ import annotations

from ..config import Config
from ..errors import ConfigError
from ..storage import Store
from .registry import STAGE_NAMES


def stage_store(cfg: Config, stage: str) -> Store:
    """The store whose ``{stage}/`` is the stage's directory."""
    return Store(cfg.stage_root(stage), cfg.storage_options)


def is_shared(cfg: Config, stage: str) -> bool:
    """Whether the run reads ``stage`` from another root (and must never write it)."""
    return stage in cfg.shared_stages


def is_imported(cfg: Config, stage: str) -> bool:
    """Whether the run starts from ``stage`` published elsewhere (``data.chunks``): read-only, trusted
    for its manifest and files rather than for a fingerprint of this config."""
    return stage == "chunks" and cfg.data.chunks is not None


def is_read_only(cfg: Config, stage: str) -> bool:
    """Whether the run only reads ``stage`` (shared or imported): never computed or submitted here."""
    return is_shared(cfg, stage) or is_imported(cfg, stage)


def check_shared_stages(cfg: Config) -> None:
    """One clear error for a ``shared_stages`` entry that names no stage or points at the run itself."""
    unknown = sorted(set(cfg.shared_stages) - set(STAGE_NAMES))
    if unknown:
        raise ConfigError(f"shared_stages: unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGE_NAMES)}")
    if cfg.data.chunks is not None and "chunks" in cfg.shared_stages:
        raise ConfigError("set either data.chunks (chunks published elsewhere) or shared_stages.chunks, not both")
    own = sorted(s for s, root in cfg.shared_stages.items() if root == cfg.run_dir)
    if own:
        raise ConfigError(f"shared_stages: {', '.join(own)} point(s) at run_dir itself; remove them from shared_stages")
