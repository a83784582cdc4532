"""The ``xla`` backend: torch-xla SPMD over every XLA device (TPU chips, or XLA:CPU devices) of the host.

One process per host drives all of the host's devices through torch-xla's SPMD mode
(``torch_xla.runtime.use_spmd``): the model's parameters are replicated, every input batch is
sharded along its first dimension over a 1-D ``data`` mesh of all devices, and the XLA compiler
partitions the step and inserts the collectives (the gradient all-reduce included). docs/tpu.md
says why SPMD rather than one process per device.

- ``train.batch_size`` is per process, as on the other backends: here the host's batch, split over
  its devices. A checkpoint holds one replicated state, so it resumes on any device count with
  the same batches (only the reduction order of the collectives changes).
- Batches have static shapes (:class:`~microparade.model.batching.ShapeBuckets`): XLA compiles
  one graph per distinct set of input shapes. :meth:`XlaBackend.compilations` reads torch-xla's
  ``CompileTime`` metric so the stages can record it.
- :class:`DeviceFeeder` encodes the next batch and sends it to the devices (sharded) in a
  background thread while the current step computes. It plays the part of torch-xla's
  ``MpDeviceLoader``, which would hide a failing source: its loader thread ends on an exception
  as on exhaustion, so a corrupt chunk would look like the end of the epoch. The feeder re-raises.
- The step ends with ``torch_xla.sync()`` (:meth:`XlaBackend.step_end`): the traced
  forward, backward and optimizer update run as one graph.
- Host-side control (stop flags, metric sums, RNG states, barriers) goes over a gloo process group
  between hosts, never through XLA, so it adds no graph.

Runtime: ``PJRT_DEVICE`` (``TPU`` on a TPU VM; ``CPU`` with ``CPU_NUM_DEVICES=N`` virtual devices
for XLA's CPU runtime, as the tests use). Multi-host slices (several processes in one SPMD
program) are not supported yet: :meth:`XlaBackend.setup` refuses them with a clear error.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import BackendError
from .backends import Backend, DistEnv

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..model.batching import ModelBatch

T = TypeVar("T")
INSTALL_HINT = (
    "run `bash env/install.sh tpu` and use .venv-tpu/bin/microparade, or install the `tpu` extra "
    "(torch==2.9.0, torch-xla==2.9.0)"
)


def import_torch_xla() -> Any:
    """``torch_xla``, or a :class:`BackendError` saying how to install it."""
    try:
        import torch_xla
        import torch_xla.runtime  # noqa: F401
    except ImportError as exc:
        raise BackendError(f"the xla backend needs torch-xla, which this Python lacks ({exc}); {INSTALL_HINT}") from exc
    return torch_xla


class DeviceFeeder:
    """Items of ``source`` passed through ``send`` in a background thread, ``depth`` ahead.

    Exceptions of the source or of ``send`` are raised by the consumer's ``next``; :meth:`close`
    stops the thread (the consumer may stop early, e.g. on preemption).
    """

    _END = object()

    def __init__(self, source: Iterator[T], send: Callable[[T], T], depth: int = 2) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(source, send), name="xla-feeder", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, source: Iterator[Any], send: Callable[[Any], Any]) -> None:
        try:
            for item in source:
                if not self._put(("item", send(item))):
                    return
        except BaseException as exc:  # handed to the consumer
            self._put(("error", exc))
            return
        self._put(("end", None))

    def __iter__(self) -> DeviceFeeder:
        return self

    def __next__(self) -> Any:
        kind, value = self._queue.get()
        if kind == "item":
            return value
        self._stop.set()
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()


class XlaBackend(Backend):
    """Training on XLA devices with SPMD data parallelism (see the module docstring)."""

    static_shapes = True

    def __init__(self, env: DistEnv) -> None:
        import torch

        super().__init__("xla", env, torch.device("cpu"), "gloo")
        self.xla = import_torch_xla()
        self.devices = 1
        self.kind = "?"
        self._spec: Any = None

    @property
    def shape_multiple(self) -> int:
        return self.devices

    def setup(self, timeout_s: float = 1800) -> Backend:
        import numpy as np
        import torch_xla.distributed.spmd as xs
        import torch_xla.runtime as xr

        if self.env.world_size > 1:
            raise BackendError(
                f"train.backend=xla runs one process per host over all of its devices; this job has "
                f"{self.env.world_size} processes ({self.env.source}). Multi-host TPU slices are not "
                f"supported in this version: launch one task on one host (docs/tpu.md)"
            )
        if not xr.is_spmd():
            xr.use_spmd()
        if xr.process_count() > 1:
            raise BackendError(
                f"torch-xla sees {xr.process_count()} processes: multi-host slices are not supported yet"
            )
        self.kind = str(xr.device_type() or "?")
        self.devices = xr.global_runtime_device_count()
        self.device = self.xla.device()
        mesh = xs.Mesh(np.arange(self.devices), (self.devices,), ("data",))
        # Tensors of rank 2 (every batch tensor but the 1-D slot indices) are split along dim 0;
        # others are replicated.
        self._spec = xs.ShardingSpec(mesh, ("data", None))
        return super().setup(timeout_s)

    def send(self, batch: ModelBatch) -> ModelBatch:
        """``batch`` on the devices, sharded along its first dimension."""
        import torch_xla.core.xla_model as xm

        return batch.with_tensors(xm.send_cpu_data_to_device(batch.tensors(), self.device, self._spec))

    def feed(self, items: Iterator[tuple[T, ModelBatch]]) -> Iterator[tuple[T, ModelBatch]]:
        feeder = DeviceFeeder(items, lambda item: (item[0], self.send(item[1])))
        try:
            yield from feeder
        finally:
            feeder.close()

    def step_end(self) -> None:
        self.xla.sync()

    def compilations(self) -> int:
        import torch_xla.debug.metrics as met

        data = met.metric_data("CompileTime")
        return int(data[0]) if data else 0

    def seed(self, seed: int) -> None:
        import torch_xla.core.xla_model as xm

        xm.set_rng_state(seed, str(self.device))

    def rng_state(self) -> dict[str, Any]:
        import torch_xla.core.xla_model as xm

        return {"xla": int(xm.get_rng_state(str(self.device)))}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        if "xla" in state:
            self.seed(int(state["xla"]))

    def _replicate(self, tensors: Iterator[torch.Tensor]) -> None:
        import torch_xla.distributed.spmd as xs

        for t in tensors:
            if t.dim() and t.device.type == "xla":
                xs.mark_sharding(t, self._spec.mesh, (None,) * t.dim())

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` on the devices, every parameter and buffer explicitly replicated (SPMD needs
        no wrapper: the compiler inserts the gradient all-reduce)."""
        model = model.to(self.device)
        self._replicate(iter([*model.parameters(), *model.buffers()]))
        return model

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Give Adam(W) its state as replicated device data now (again after a restore).

        torch creates the moments inside the first ``step()``, so the first step would trace a
        different graph (one more compilation) than every later one; and state without a sharding
        annotation would come back annotated from the first step, which changes the graph again.
        A fresh optimizer gets the state its first step would create (zero moments, step 0).
        """
        import torch

        if not optimizer.state:
            state = optimizer.state_dict()
            params = [p for group in optimizer.param_groups for p in group["params"]]
            amsgrad = any(group.get("amsgrad") for group in optimizer.param_groups)
            names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if amsgrad else ("exp_avg", "exp_avg_sq")
            for i, p in enumerate(params):
                state["state"][i] = {
                    "step": torch.tensor(0.0),
                    **{n: torch.zeros(p.shape, dtype=p.dtype) for n in names},
                }
            optimizer.load_state_dict(state)
        self._replicate(t for st in optimizer.state.values() for t in st.values() if isinstance(t, torch.Tensor))
        self.step_end()

    def to_cpu(self, obj: Any) -> Any:
        import torch

        if isinstance(obj, torch.Tensor):
            return obj.detach().cpu()
        if isinstance(obj, dict):
            return {k: self.to_cpu(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.to_cpu(v) for v in obj)
        return obj

    def replicas_identical(self, model: nn.Module) -> bool:
        """Whether every device holds bit-identical copies of every parameter and buffer."""
        import torch

        tensors = [t for t in (*model.parameters(), *model.buffers()) if t.dim()]
        for shards in self.xla._XLAC._get_local_shards(tensors):
            first = shards[0][0].cpu()
            if not all(torch.equal(first, s[0].cpu()) for s in shards[1:]):
                return False
        return True

    def describe(self) -> str:
        return f"xla ({self.devices} {self.kind} device(s), SPMD data parallel, one process)"
