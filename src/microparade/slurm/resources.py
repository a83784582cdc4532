"""A stage's Slurm resources, and the one table that turns them into sbatch flags and submitit
parameters.

Resources of a stage's job, lowest precedence first: the stage's defaults in the registry
(:attr:`StageSpec.resources <microparade.engine.registry.StageSpec.resources>`, also the
``#SBATCH`` lines of ``slurm/<stage>.sbatch``), then ``slurm.default``, then ``slurm.<stage>``.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Config, SlurmStageConfig
from ..engine.registry import SIGNAL_WARNING_S, StageSpec, by_name, pipeline


def _text(value: Any) -> Any:
    return value


def parse_time_minutes(t: str) -> int:
    """A Slurm time limit → whole minutes, rounded up (submitit takes minutes).

    Accepts Slurm's formats: ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``.
    """
    text = str(t).strip()
    try:
        days = 0
        rest = text
        if "-" in text:
            d, rest = text.split("-", 1)
            days = int(d)
            parts = [int(p) for p in rest.split(":")]
            if len(parts) > 3:
                raise ValueError
            h, m, s = parts + [0] * (3 - len(parts))
        else:
            parts = [int(p) for p in rest.split(":")]
            if len(parts) == 1:
                h, m, s = 0, parts[0], 0
            elif len(parts) == 2:
                h, m, s = 0, parts[0], parts[1]
            elif len(parts) == 3:
                h, m, s = parts
            else:
                raise ValueError
        if min(days, h, m, s) < 0:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"slurm time {t!r} is not a Slurm time limit (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS)"
        ) from None
    return max(1, days * 1440 + h * 60 + m + (1 if s else 0))


#: ``SlurmStageConfig`` field → (sbatch option, submitit parameter, value for submitit), in the
#: order sbatch options are written. ``gpus_per_node=0`` means no GPU option at all.
RESOURCE_OPTIONS: tuple[tuple[str, str, str, Callable[[Any], Any]], ...] = (
    ("partition", "--partition", "slurm_partition", _text),
    ("time", "--time", "slurm_time", parse_time_minutes),
    ("nodes", "--nodes", "nodes", _text),
    ("cpus_per_task", "--cpus-per-task", "slurm_cpus_per_task", _text),
    ("mem", "--mem", "slurm_mem", _text),
    ("account", "--account", "slurm_account", _text),
    ("qos", "--qos", "slurm_qos", _text),
    ("gpus_per_node", "--gpus-per-node", "slurm_gpus_per_node", _text),
)


def spec_of(cfg: Config, stage: str | StageSpec) -> StageSpec:
    """The stage's spec as this config's pipeline has it (inputs pruned), else as registered."""
    if isinstance(stage, StageSpec):
        return stage
    return next((s for s in pipeline(cfg) if s.name == stage), None) or by_name(stage)


def _overlay(base: SlurmStageConfig, top: SlurmStageConfig) -> SlurmStageConfig:
    merged = base.model_dump()
    merged.update({k: v for k, v in top.model_dump().items() if v is not None})
    return SlurmStageConfig(**merged)


def stage_resources(cfg: Config, stage: str) -> SlurmStageConfig:
    """The configured resources: ``slurm.<stage>`` over ``slurm.default`` (a stage's value wins where set)."""
    return _overlay(cfg.slurm.default, getattr(cfg.slurm, stage))


def job_resources(cfg: Config, stage: str | StageSpec) -> SlurmStageConfig:
    """Everything a stage's job gets: the configured resources over the stage's registry defaults."""
    spec = spec_of(cfg, stage)
    return _overlay(spec.resources, stage_resources(cfg, spec.name))


def _options(res: SlurmStageConfig, spec: StageSpec) -> list[tuple[str, Any, str, Any]]:
    """``(sbatch option, its value, submitit parameter, its value)`` for every resource set in ``res``."""
    out = []
    for field, flag, param, convert in RESOURCE_OPTIONS:
        value = getattr(res, field)
        if value is None or (field == "gpus_per_node" and not value):
            continue
        out.append((flag, value, param, convert(value)))
        if field == "gpus_per_node" and spec.task_per_gpu:
            out.append(("--ntasks-per-node", value, "slurm_ntasks_per_node", value))
    return out


def sbatch_flags(res: SlurmStageConfig, spec: StageSpec) -> list[str]:
    """``res`` as sbatch options (``--mem=8G``...)."""
    return [f"{flag}={value}" for flag, value, _, _ in _options(res, spec)]


def sbatch_args(cfg: Config, stage: str) -> list[str]:
    """Command-line sbatch options for a stage's configured resources; they override the
    ``#SBATCH`` defaults of ``slurm/<stage>.sbatch`` (rendered from the registry)."""
    return sbatch_flags(stage_resources(cfg, stage), spec_of(cfg, stage))


def submitit_params(cfg: Config, stage: str | StageSpec) -> dict[str, Any]:
    """submitit ``update_parameters`` keywords for a stage's job: registry defaults + config."""
    spec = spec_of(cfg, stage)
    params: dict[str, Any] = {"slurm_job_name": f"mp-{spec.name}"}
    params.update({param: value for _, _, param, value in _options(job_resources(cfg, spec), spec)})
    if spec.requeue:
        params["slurm_signal_delay_s"] = SIGNAL_WARNING_S
    # As slurm/common.sh: the site's settings (module loads...), and math libraries that use the
    # allocation's CPUs, not every core of the node.
    setup = []
    site = site_script()
    if site is not None:
        setup.append(f"source {shlex.quote(str(site))}")
    setup.append(
        'if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then '
        'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$SLURM_CPUS_PER_TASK}"; fi'
    )
    params["slurm_setup"] = setup
    return params


#: Overrides the XLA environment's Python (default: ``.venv-tpu/bin/python`` of the checkout).
XLA_PYTHON_ENV = "MICROPARADE_XLA_PYTHON"


def stage_python(cfg: Config, stage: str | StageSpec) -> str | None:
    """The Python a stage's job must run, when not the default one: the XLA environment's
    (``bash env/install.sh tpu``) for a stage whose config section says ``backend: xla``."""
    if cfg.stage_backend(spec_of(cfg, stage).name) != "xla":
        return None
    return os.environ.get(XLA_PYTHON_ENV) or str(checkout() / ".venv-tpu" / "bin" / "python")


def checkout() -> Path:
    """The microparade checkout: ``$MICROPARADE_HOME``, else the one this package is in."""
    home = os.environ.get("MICROPARADE_HOME")
    return Path(home) if home else Path(__file__).resolve().parents[3]


def site_script() -> Path | None:
    """``slurm/site.sh`` of the :func:`checkout`, if any."""
    path = checkout() / "slurm" / "site.sh"
    return path if path.is_file() else None
