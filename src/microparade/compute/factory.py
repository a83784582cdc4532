"""Backends by name: :func:`make_backend` (``train.backend`` / ``evaluate.backend``) and
:func:`require_backend`, the up-front check that a backend can work in this Python.

Apart from :mod:`.backends` so that the XLA backend (:mod:`.xla`), a subclass of
:class:`~.backends.Backend`, is imported only here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from ..errors import BackendError
from .backends import BACKENDS, Backend, dist_env


def require_backend(name: str, key: str) -> None:
    """Fail now, before any stage runs, when backend ``name`` (config key ``key``) cannot work in
    this Python: ``xla`` without torch-xla installed."""
    if name == "xla":
        try:
            import torch_xla  # noqa: F401
        except ImportError as exc:
            from .xla import INSTALL_HINT

            raise BackendError(
                f"{key}=xla needs torch-xla, which this Python ({sys.executable}) cannot import ({exc}); {INSTALL_HINT}"
            ) from None


def make_backend(name: str, environ: Mapping[str, str] | None = None) -> Backend:
    """The backend ``name`` (``train.backend``) for this process; not yet set up."""
    import torch

    env = dist_env(environ)
    if name == "cpu":
        return Backend("cpu", env, torch.device("cpu"), "gloo")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise BackendError(
                "train.backend=cuda but torch sees no CUDA device (is this a GPU node with a CUDA build of torch?)"
            )
        n = torch.cuda.device_count()
        if env.local_rank >= n:
            raise BackendError(f"local rank {env.local_rank} has no GPU: this node has {n}; launch one process per GPU")
        # Deterministic cuBLAS needs this before the first CUDA call (torch.use_deterministic_algorithms).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.cuda.set_device(env.local_rank)
        return Backend("cuda", env, torch.device("cuda", env.local_rank), "nccl")
    if name == "xla":
        from .xla import XlaBackend

        return XlaBackend(env)
    raise BackendError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
