"""Where each stage of a run lives: ``{run_dir}/{stage}/``, or ``{root}/{stage}/`` for a stage the run
shares with others (``shared_stages``: read-only here, published by the job that owns that root).

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


def check_shared_stages(cfg: Config) -> None:
    """One clear error for a ``shared_stages`` entry that names no stage or points at the run itself."""
    unknown = sorted(set(cfg.shared_stages) - set(STAGE_NAMES))
    if unknown:
        raise ConfigError(f"shared_stages: unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGE_NAMES)}")
    own = sorted(s for s, root in cfg.shared_stages.items() if root == cfg.run_dir)
    if own:
        raise ConfigError(f"shared_stages: {', '.join(own)} point(s) at run_dir itself; remove them from shared_stages")
