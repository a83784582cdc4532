"""What a stage's ``run(ctx)`` receives: :class:`StageContext`, and the :class:`RunSession` its
stages share (one Dask client per ``run`` invocation)."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from ..config import Config
from ..errors import StageError
from ..storage import Store
from .manifest import STAGING, WORK, Manifest
from .registry import StageSpec

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger("microparade")


@dataclass
class StageContext:
    """What a stage's ``run(ctx)`` gets: config, inputs, where to write, shared services."""

    cfg: Config
    spec: StageSpec
    store: Store
    inputs: dict[str, Manifest]
    fingerprint: str
    session: RunSession
    #: Per-file metadata the stage knows (``rows``, ``sha256``, ``bytes`` or anything else),
    #: keyed by path relative to the staging dir; merged into the manifest's file entries.
    file_meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Stage-specific manifest content (``manifest["extra"]``).
    extra: dict[str, Any] = field(default_factory=dict)
    #: The manifest's total ``rows`` when not every file holds data rows (e.g. a quarantine file);
    #: default: the sum over files.
    total_rows: int | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def staging_rel(self) -> str:
        return f"{self.name}/{STAGING}"

    def out_url(self, rel: str = "") -> str:
        """Full URL under the stage's staging directory (give this to writers, Dask included)."""
        return self.store.url(self.staging_rel, rel)

    def out_path(self, rel: str = "") -> str:
        """Filesystem path under staging (for ``ctx.store.fs`` calls)."""
        return self.store.path(self.staging_rel, rel)

    def open_out(self, rel: str, mode: str = "wb") -> IO[Any]:
        return self.store.open(f"{self.staging_rel}/{rel}", mode)

    def work_url(self, rel: str = "") -> str:
        """Persistent scratch (survives failures, e.g. checkpoints); removed after publishing."""
        return self.store.url(self.name, WORK, rel)

    @property
    def work_rel(self) -> str:
        return f"{self.name}/{WORK}"

    def input(self, name: str) -> Manifest:
        try:
            return self.inputs[name]
        except KeyError:
            raise StageError(f"stage {self.name} needs the outputs of {name}, which is not an input") from None

    def client(self) -> Client:
        """The run's Dask client (started on first use, shared by the stages of one run)."""
        return self.session.client()

    def log(self, msg: str, *args: Any) -> None:
        log.info(f"[{self.name}] " + msg, *args)


class RunSession:
    """State shared by the stages of one ``run`` invocation (the Dask client)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self._stack = ExitStack()
        self._client: Client | None = None

    def client(self) -> Client:
        if self._client is None:
            from ..compute.cluster import dask_client

            self._client = self._stack.enter_context(dask_client(self.cfg))
        return self._client

    def close(self) -> None:
        self._stack.close()
        self._client = None
