"""Where training computes: the small device-specific part of the train and evaluate stages.

A :class:`Backend` knows its device, its rank in a distributed job, and how to all-reduce, wait at
a barrier and wrap a model for data parallelism. Everything else (model, loader, optimisation,
checkpoints) is device-agnostic and only talks to this interface.

- ``cpu``: one process; or, when launched as several processes (torchrun / srun), DDP over gloo.
- ``cuda``: one GPU per process (``LOCAL_RANK`` picks it); DDP over NCCL when world size > 1.
- ``xla``: torch-xla SPMD over every XLA device of the host, one process per host, static-shape
  batches (:mod:`microparade.compute.xla`; needs the ``.venv-tpu`` environment).

:func:`microparade.compute.factory.make_backend` builds the backend a config names.

The distributed layout comes from the launcher's environment (:func:`dist_env`): torchrun's
``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT``, or Slurm's
``SLURM_PROCID`` / ``SLURM_STEP_NUM_TASKS`` / ``SLURM_LOCALID`` inside an srun step (never in the
batch script itself) with ``MASTER_ADDR`` = the first host of
``SLURM_JOB_NODELIST`` (unless set) and ``MASTER_PORT`` derived from the job id (unless set), so
an ``srun python jobs/train.py ...`` with one task per GPU needs no wrapper script.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import BackendError

if TYPE_CHECKING:  # torch is imported lazily: the stage runner asks for the rank without it
    import torch
    from torch import nn

    from ..model.batching import ModelBatch

BACKENDS = ("cpu", "cuda", "xla")
T = TypeVar("T")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity: a Slurm allocation's cpuset), not the node's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def physical_cores(cpus: set[int]) -> int:
    """The physical cores among logical CPUs ``cpus`` (SMT siblings count once), from sysfs; every
    CPU counts as a core where the topology is not readable."""
    cores = set()
    for cpu in cpus:
        topology = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with open(f"{topology}/physical_package_id") as pkg, open(f"{topology}/core_id") as core:
                cores.add((pkg.read().strip(), core.read().strip()))
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))


def cpu_threads(configured: int = 0) -> int:
    """torch's intra-op threads: ``configured`` when positive, else the physical cores this process
    may run on (its CPU affinity: a Slurm allocation's cpuset), at most ``SLURM_CPUS_PER_TASK``.

    More threads than physical cores only adds contention: SMT siblings share a core's units, and
    OpenMP threads that outnumber the cores wait on each other at every barrier.
    """
    if configured > 0:
        return configured
    try:
        n = physical_cores(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = available_cpus()
    per_task = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if "SLURM_JOB_ID" in os.environ and per_task.isdigit():
        n = min(n, int(per_task))
    return max(1, n)


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str  # "torchrun" | "slurm" | "single"


def first_host(nodelist: str) -> str:
    """The first host of a Slurm hostlist: ``"gpu[03-05,9],cpu1"`` → ``"gpu03"``."""
    nodelist = nodelist.strip()
    if not nodelist:
        raise ValueError("empty Slurm node list")
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if m is None:  # pragma: no cover - the pattern matches any non-empty string not starting with , or [
        raise ValueError(f"cannot parse Slurm node list {nodelist!r}")
    prefix, ranges = m.group(1), m.group(2)
    if ranges is None:
        return prefix
    first = ranges.split(",", 1)[0].split("-", 1)[0]
    return f"{prefix}{first}"


def dist_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """The distributed layout of this process from the launcher's environment variables."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env and "RANK" in env:
        world = int(env["WORLD_SIZE"])
        return DistEnv(
            rank=int(env["RANK"]),
            world_size=world,
            local_rank=int(env.get("LOCAL_RANK", "0")),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", "29500")),
            source="torchrun" if world > 1 else "single",
        )
    # Only inside an srun job step: the batch script itself also has SLURM_PROCID=0 and
    # SLURM_NTASKS=N, but it is one process and must not wait for N - 1 peers.
    step_tasks = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env and step_tasks > 1:
        addr = env.get("MASTER_ADDR") or first_host(env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", ""))
        job = int(env.get("SLURM_JOB_ID", "0") or 0)
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=step_tasks,
            local_rank=int(env.get("SLURM_LOCALID", "0")),
            master_addr=addr,
            # Jobs sharing a node must not share a port: derive it from the job id.
            master_port=int(env.get("MASTER_PORT") or 20000 + job % 20000),
            source="slurm",
        )
    return DistEnv(0, 1, 0, "127.0.0.1", 29500, "single")


def process_rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's rank in a multi-process launch (0 when not distributed)."""
    return dist_env(environ).rank


def launch_id(environ: Mapping[str, str] | None = None) -> str | None:
    """What every process of one multi-process launch shares and no other launch does (None when not
    distributed): the Slurm job and step of an srun step, torchrun's run id, else its rendezvous."""
    env = os.environ if environ is None else environ
    d = dist_env(env)
    if d.world_size <= 1:
        return None
    if d.source == "slurm":
        return f"Slurm job {env.get('SLURM_JOB_ID', '?')} step {env.get('SLURM_STEP_ID', '?')}"
    run = env.get("TORCHELASTIC_RUN_ID", "")
    return f"torchrun {run}" if run and run != "none" else f"rendezvous {d.master_addr}:{d.master_port}"


class Backend:
    """Device + process group of one training process (see the module docstring).

    The hooks below the process-group methods (``feed``, ``step_end``, ``compilations``, ...) are
    no-ops here; the XLA backend (:class:`microparade.compute.xla.XlaBackend`) fills them in.
    """

    #: Whether batches must have static shapes (a compiler builds one graph per input shape).
    static_shapes = False

    def __init__(self, name: str, env: DistEnv, device: torch.device, dist_backend: str):
        self.name = name
        self.env = env
        self.device = device
        self._dist_backend = dist_backend
        self._initialised = False

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def is_main(self) -> bool:
        return self.env.rank == 0

    @property
    def distributed(self) -> bool:
        return self.env.world_size > 1

    def setup(self, timeout_s: float = 1800) -> Backend:
        """Join the process group (no-op for one process); call once before building the model."""
        if self.distributed and not self._initialised:
            import torch.distributed as dist

            if not dist.is_available():
                raise BackendError("torch.distributed is not available in this torch build")
            # env:// lets torchrun's agent store serve the rendezvous (TORCHELASTIC_USE_AGENT_STORE);
            # under Slurm the address and port come from dist_env.
            os.environ.setdefault("MASTER_ADDR", self.env.master_addr)
            os.environ.setdefault("MASTER_PORT", str(self.env.master_port))
            dist.init_process_group(
                backend=self._dist_backend,
                init_method="env://",
                rank=self.env.rank,
                world_size=self.env.world_size,
                timeout=_dt.timedelta(seconds=timeout_s),
            )
            self._initialised = True
        return self

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` on this device, wrapped in DDP when there are several processes."""
        model = model.to(self.device)
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Reduce ``tensor`` over all processes in place (``sum``, ``max`` or ``mean``) and return it."""
        if not self.distributed:
            return tensor
        import torch.distributed as dist

        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "mean": dist.ReduceOp.SUM}
        if op not in ops:
            raise ValueError(f"unknown reduce op {op!r}")
        dist.all_reduce(tensor, op=ops[op])
        if op == "mean":
            tensor /= self.world_size
        return tensor

    def all_reduce_values(self, values: list[float], op: str = "sum") -> list[float]:
        """All-reduce a few Python numbers at once (float64 on the backend's device)."""
        if not self.distributed:
            return list(values)
        import torch

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        return self.all_reduce(t, op).tolist()

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every process's ``obj`` (picklable), in rank order."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def shutdown(self) -> None:
        if self._initialised:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._initialised = False

    def rng_state(self) -> dict[str, Any]:
        """Device RNG state for checkpoints (the CPU generator is saved by the caller)."""
        import torch

        if self.device.type == "cuda":
            return {"cuda": torch.cuda.get_rng_state(self.device)}
        return {}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        import torch

        if self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)

    # -- hooks of compiled backends ----------------------------------------------------------------
    @property
    def shape_multiple(self) -> int:
        """Static-shape row buckets are rounded up to this (the number of devices a batch splits over)."""
        return 1

    def feed(self, items: Iterator[tuple[T, ModelBatch]]) -> Iterator[tuple[T, ModelBatch]]:
        """``(item, batch)`` pairs with each batch on this backend's device(s)."""
        for item, batch in items:
            yield item, batch.to(self.device)

    def step_end(self) -> None:
        """Called after each optimizer step / inference batch (XLA: run the traced graph)."""

    def compilations(self) -> int | None:
        """Graph compilations so far in this process (None: an eager backend compiles nothing)."""
        return None

    def seed(self, seed: int) -> None:
        """Seed the device's own generator (the CPU generators are seeded by the caller)."""

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Called once the optimizer exists, and again after a checkpoint restored its state."""

    def to_cpu(self, obj: Any) -> Any:
        """``obj`` (tensors, nested in dicts / lists) ready for ``torch.save``."""
        return obj

    def replicas_identical(self, model: nn.Module) -> bool | None:
        """Whether the devices hold identical weights (None: one copy, nothing to compare)."""
        return None

    def describe(self) -> str:
        where = f"{self.device}"
        if self.distributed:
            return f"{self.name} ({where}), rank {self.rank} of {self.world_size} via {self.env.source}"
        return f"{self.name} ({where})"
