"""UCX for the Dask stages (``cluster.protocol=ucx``, UCXX through distributed-ucxx).

The transports follow the config, never the hardware UCX happens to find: TCP always; CUDA copies
and a CUDA context only with ``cluster.gpu``; NVLink (``cuda_ipc``) only with ``cluster.gpu`` and
``cluster.enable_nvlink``; InfiniBand (``rc``) only with ``cluster.enable_infiniband``. They go to
scheduler, workers and client as distributed-ucxx's settings in the environment (and under the
legacy ``distributed.comm.ucx`` names older releases read), from which distributed-ucxx derives
``UCX_TLS``. Site variables already in the environment (``UCX_TLS``, ``UCX_NET_DEVICES``...) win:
UCX itself lets the environment override distributed-ucxx's choice.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from ..config import Config
from ..errors import ConfigError

#: Environment prefixes of distributed-ucxx's settings and of the legacy ``distributed.comm.ucx`` ones.
SETTING_PREFIXES = ("DASK_DISTRIBUTED_UCXX__", "DASK_DISTRIBUTED__COMM__UCX__")


def ucx_flags(cfg: Config) -> dict[str, bool]:
    """distributed-ucxx's transport settings for this config (empty unless ``cluster.protocol=ucx``)."""
    c = cfg.cluster
    if c.protocol != "ucx":
        return {}
    return {
        "CREATE_CUDA_CONTEXT": c.gpu,
        "CUDA_COPY": c.gpu,
        "TCP": True,
        "INFINIBAND": c.enable_infiniband,
        "NVLINK": c.gpu and c.enable_nvlink,
    }


def ucx_environment(cfg: Config) -> dict[str, str]:
    """The environment that configures UCX for this config (empty unless ``cluster.protocol=ucx``)."""
    flags = ucx_flags(cfg)
    env = {f"{prefix}{key}": str(value) for key, value in flags.items() for prefix in SETTING_PREFIXES}
    if flags:
        # distributed-ucxx sets UCX_MEMTYPE_CACHE, which UCX 1.21 no longer knows: a warning per process.
        env["UCX_WARN_UNUSED_ENV_VARS"] = "n"
    return env


def require_ucx(cfg: Config) -> None:
    """One clear error when ``cluster.protocol=ucx`` but distributed-ucxx cannot be imported."""
    if cfg.cluster.protocol != "ucx":
        return
    try:
        import distributed_ucxx  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"cluster.protocol=ucx needs distributed-ucxx, which cannot be imported ({exc}): "
            "pip install -e '.[ucx]' (bash env/install.sh dev installs it; GPU nodes: the gpu extra)"
        ) from None


@contextmanager
def ucx_settings(cfg: Config) -> Iterator[None]:
    """This process (as Dask config) and the Dask processes it starts (through the environment)
    with :func:`ucx_environment`; settings the environment already has are kept. Restored on exit."""
    import dask

    require_ucx(cfg)
    added = {k: v for k, v in ucx_environment(cfg).items() if k not in os.environ}
    mine = {
        f"distributed-ucxx.{key.lower().replace('_', '-')}": value
        for key, value in ucx_flags(cfg).items()
        if f"{SETTING_PREFIXES[0]}{key}" in added
    }
    os.environ.update(added)
    try:
        with dask.config.set(mine):
            yield
    finally:
        for key in added:
            os.environ.pop(key, None)
