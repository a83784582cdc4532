"""Dask clusters for the preprocessing stages: ``local``, ``jobqueue`` (Slurm) and ``scheduler_file``.

``dask_client(cfg)`` is a context manager yielding a ``distributed.Client``; the runner opens it on
the first stage that asks and closes it at the end of the run. The dashboard link is logged.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .. import console
from ..config import Config
from ..errors import ConfigError
from ..storage import protocol_of
from .ucx import require_ucx, ucx_environment, ucx_settings

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger("microparade")


def require_cluster(cfg: Config) -> None:
    """Fail now, before any stage runs, when this Python lacks what ``cluster`` asks for: one
    :class:`ConfigError` naming the extra (``gpu`` for ``cluster.gpu``, ``ucx`` for UCX)."""
    require_ucx(cfg)
    if cfg.cluster.gpu:
        missing = [m for m in ("dask_cuda", "dask_cudf") if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(
                f"cluster.gpu=true needs {' and '.join(missing)}, which this Python ({sys.executable}) lacks: "
                "pip install -e '.[gpu]' with a CUDA build of torch (docs/slurm.md, GPU workers)"
            )


def _wait_workers(client: Client, n: int, timeout: float, what: str) -> None:
    try:
        client.wait_for_workers(n_workers=n, timeout=timeout)
    except TimeoutError as exc:
        have = len(client.scheduler_info().get("workers", {}))
        raise TimeoutError(f"{what}: only {have} of {n} Dask workers connected after {timeout:.0f}s") from exc


def expected_workers(cfg: Config) -> int:
    """Workers to wait for before computing: ``cluster.min_workers``, and at least the number of
    worker tasks ``slurm/dask-cluster.sh`` started (``$MICROPARADE_DASK_WORKERS``, one per node),
    so that every node of the allocation takes part from the first task on."""
    started = os.environ.get("MICROPARADE_DASK_WORKERS", "")
    return max(cfg.cluster.min_workers, int(started) if started.isdigit() else 0)


def describe_workers(client: Client) -> str:
    """``"2 worker(s): node1, node2"`` — worker names (the Slurm node for dask-cluster.sh workers)."""
    workers = client.scheduler_info().get("workers", {}).values()
    names = sorted(str(w.get("name", w.get("id", "?"))) for w in workers)
    return f"{len(names)} worker(s): {', '.join(names)}"


def jobqueue_kwargs(cfg: Config) -> dict[str, Any]:
    """Keyword arguments for ``dask_jobqueue.SLURMCluster`` from ``cluster.jobqueue``."""
    jq = cfg.cluster.jobqueue
    kw: dict[str, Any] = {
        "cores": jq.cores,
        "processes": jq.processes,
        "memory": jq.memory,
        "walltime": jq.walltime,
        "job_extra_directives": list(jq.job_extra_directives),
        "job_script_prologue": list(jq.job_script_prologue),
    }
    for key in ("queue", "account", "interface", "local_directory", "log_directory", "python"):
        val = getattr(jq, key)
        if val is not None:
            kw[key] = val
    if cfg.cluster.protocol == "ucx":
        kw["protocol"] = "ucx"
        # The worker jobs configure UCX like this process (export before the worker starts).
        kw["job_script_prologue"] += [f"export {k}={v}" for k, v in ucx_environment(cfg).items()]
    if jq.scheduler_host:
        kw["scheduler_options"] = {"host": jq.scheduler_host}
    return kw


#: How long a local cluster waits for a lost worker to come back before closing its nanny for good:
#: never, in practice. A nanny restarts its own killed worker; with Dask's default (15 s), a worker
#: lost again while restarting has its nanny closed, and the cluster stays smaller for the rest of
#: the run (with no worker left, the run hangs).
LOCAL_LOST_WORKER_TIMEOUT = "7 days"


def _local(cfg: Config) -> Iterator[Client]:
    """A ``LocalCluster`` client whose nannies stay up whatever happens to their workers."""
    import dask

    # Dask's distributed.* defaults must be loaded first: set() would otherwise shadow them all.
    importlib.import_module("distributed")
    with dask.config.set({"distributed.deploy.lost-worker-timeout": LOCAL_LOST_WORKER_TIMEOUT}):
        yield from _local_cluster(cfg)


def _local_cluster(cfg: Config) -> Iterator[Client]:
    from distributed import Client, LocalCluster

    c = cfg.cluster
    processes = c.processes and protocol_of(cfg.run_dir) != "memory"
    if c.processes and not processes:
        log.info("cluster: memory:// run_dir -> Dask workers run as threads in this process")
    cluster = LocalCluster(
        n_workers=c.n_workers,
        threads_per_worker=c.threads_per_worker,
        memory_limit=c.memory_limit,
        processes=processes,
        dashboard_address=":0",
        scheduler_kwargs=None if c.dashboard else {"dashboard": False},
        protocol="ucx" if c.protocol == "ucx" else None,
        # Worker processes log on their own (to stderr): WARNING+ only, everything with -v.
        silence_logs=False if console.SETTINGS.verbose else logging.WARNING,
    )
    client = Client(cluster)
    try:
        log.info(
            "cluster: local, %d worker(s) x %d thread(s), %s each; scheduler %s; dashboard %s",
            c.n_workers,
            c.threads_per_worker,
            c.memory_limit,
            cluster.scheduler_address,
            client.dashboard_link if c.dashboard else "off",
        )
        yield client
    finally:
        client.close()
        cluster.close()


def _scheduler_file(cfg: Config) -> Iterator[Client]:
    from distributed import Client

    path = cfg.cluster.scheduler_file or os.environ.get("MICROPARADE_SCHEDULER_FILE")
    if not path:
        raise ValueError("cluster.kind=scheduler_file needs cluster.scheduler_file (or $MICROPARADE_SCHEDULER_FILE)")
    deadline = time.time() + 120
    while not os.path.exists(path):
        if time.time() > deadline:
            raise TimeoutError(f"scheduler file {path} did not appear within 120s")
        time.sleep(0.5)
    client = Client(scheduler_file=path, timeout="60s")
    try:
        _wait_workers(client, expected_workers(cfg), 180, f"scheduler {path}")
        log.info(
            "cluster: scheduler_file %s at %s, %s; dashboard %s",
            path,
            client.scheduler_info().get("address", "?"),
            describe_workers(client),
            client.dashboard_link,
        )
        yield client
    finally:
        client.close()


def _jobqueue(cfg: Config) -> Iterator[Client]:
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    c = cfg.cluster
    cluster = SLURMCluster(**jobqueue_kwargs(cfg))
    cluster.scale(jobs=c.jobqueue.jobs)
    client = Client(cluster)
    try:
        script = cluster.job_script()
        log.info("cluster: dask-jobqueue SLURMCluster, %d job(s); job script:\n%s", c.jobqueue.jobs, script)
        _wait_workers(client, max(c.min_workers, 1), c.jobqueue.wait_timeout_s, "SLURMCluster")
        jobs = sorted(str(job.job_id) for job in cluster.workers.values() if getattr(job, "job_id", None))
        log.info(
            "cluster: %s in Slurm job(s) %s; scheduler %s; dashboard %s",
            describe_workers(client),
            ", ".join(jobs) or "?",
            cluster.scheduler_address,
            client.dashboard_link,
        )
        yield client
    finally:
        client.close()
        cluster.close()


#: One context manager per ``cluster.kind``.
_KINDS: dict[str, Callable[[Config], Iterator[Client]]] = {
    "local": _local,
    "scheduler_file": _scheduler_file,
    "jobqueue": _jobqueue,
}


@contextmanager
def dask_client(cfg: Config) -> Iterator[Client]:
    """A ``distributed.Client`` on the cluster ``cluster.kind`` names, closed (with the cluster it
    started) on exit."""
    kind = _KINDS.get(cfg.cluster.kind)
    if kind is None:  # pragma: no cover - validated by the config
        raise ValueError(f"unknown cluster.kind {cfg.cluster.kind!r}")
    with ucx_settings(cfg):
        yield from kind(cfg)
