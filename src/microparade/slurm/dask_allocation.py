"""Dask inside a Slurm allocation: the scheduler and worker commands and environment that
``slurm/dask-cluster.sh`` starts (one scheduler on the first node, one worker per node)."""

from __future__ import annotations

import shlex
import sys

from ..compute.ucx import ucx_environment
from ..config import Config


class ShellVar(str):
    """A command word that the shell must expand where the command runs (``$SLURMD_NODENAME``).

    :func:`shell_join` writes it double-quoted instead of single-quoted, so that a command rendered
    once in the batch script expands per task when each srun task runs it with ``bash -c``.
    """

    def __new__(cls, name: str) -> ShellVar:
        if not name.replace("_", "").isalnum() or name[0].isdigit():
            raise ValueError(f"not a shell variable name: {name!r}")
        return super().__new__(cls, name)


#: Dask worker name: the Slurm node the worker runs on (tells workers apart in the scheduler and
#: dashboard; ``dask cuda worker`` appends ``-<gpu index>`` when it starts several).
WORKER_NAME = ShellVar("SLURMD_NODENAME")


def shell_join(cmd: list[str]) -> str:
    """A command line for ``bash -c``: words quoted, :class:`ShellVar` words left to expand."""
    return " ".join(f'"${{{w}}}"' if isinstance(w, ShellVar) else shlex.quote(w) for w in cmd)


def dask_scheduler_command(cfg: Config, scheduler_file: str, python: str | None = None) -> list[str]:
    """The scheduler process started on the allocation's first node (random ports: several jobs may share a node)."""
    c = cfg.cluster
    cmd = [python or sys.executable, "-m", "dask", "scheduler", "--scheduler-file", scheduler_file]
    cmd += ["--port", "0", "--dashboard-address", ":0"]
    if c.protocol == "ucx":
        cmd += ["--protocol", "ucx"]
    if c.interface:
        cmd += ["--interface", c.interface]
    return cmd


def dask_worker_command(
    cfg: Config,
    scheduler_file: str,
    nthreads: int,
    local_directory: str,
    python: str | None = None,
    name: str | None = WORKER_NAME,
) -> list[str]:
    """The worker process started on every node of the allocation (one srun task per node).

    CPU nodes: ``dask worker`` with one process of ``nthreads`` threads. GPU nodes
    (``cluster.gpu``): ``dask cuda worker``, which starts one worker per visible GPU, with an RMM
    pool and, for ``cluster.protocol=ucx``, UCX over InfiniBand/NVLink (UCXX through
    distributed-ucxx). ``name`` defaults to the node name, expanded where the worker runs.
    """
    c = cfg.cluster
    py = python or sys.executable
    if c.gpu:
        cmd = [py, "-m", "dask", "cuda", "worker", "--scheduler-file", scheduler_file]
        cmd += ["--local-directory", local_directory]
        if c.protocol == "ucx":  # the same transports as ucx_environment
            cmd += ["--protocol", "ucx", "--enable-tcp-over-ucx"]
            cmd += ["--enable-infiniband" if c.enable_infiniband else "--disable-infiniband"]
            cmd += ["--enable-nvlink" if c.enable_nvlink else "--disable-nvlink"]
        if c.interface:
            cmd += ["--interface", c.interface]
        if c.rmm_pool_size:
            cmd += ["--rmm-pool-size", c.rmm_pool_size]
    else:
        cmd = [py, "-m", "dask", "worker", "--scheduler-file", scheduler_file]
        cmd += ["--nworkers", "1", "--nthreads", str(nthreads), "--memory-limit", c.memory_limit]
        cmd += ["--local-directory", local_directory]
        if c.protocol == "ucx":
            cmd += ["--protocol", "ucx"]
        if c.interface:
            cmd += ["--interface", c.interface]
    if name:
        cmd += ["--name", name]
    return cmd


def dask_environment(cfg: Config) -> dict[str, str]:
    """Environment for scheduler, workers and client: the cuDF backend on GPU nodes, and with
    ``cluster.protocol=ucx`` the UCX transports the config allows (:func:`~microparade.compute.ucx.ucx_environment`)."""
    env: dict[str, str] = {}
    if cfg.cluster.gpu:
        env["DASK_DATAFRAME__BACKEND"] = "cudf"
    env.update(ucx_environment(cfg))
    return env
