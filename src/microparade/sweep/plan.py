"""The plan of a sweep: its runs (variant × seed) and the shared stages they read, with where each
lives. Pure: computed from the experiment and the code, before anything runs, so every launcher
(``sweep run``, the sbatch and submitit submissions) and ``sweep status`` see the same plan.

Layout of ``{sweep_dir}`` (see docs/data-format.md):

- ``shared/{stage}-{identity[:12]}/`` — one *unit* per distinct identity of a data stage (see
  :func:`~microparade.engine.fingerprint.stage_identity`): its ``config.yaml`` and the stage's
  directory ``{stage}/``. Every run whose stage has that identity reads this one copy.
- ``runs/{variant}/seed-{seed}/`` — one run directory per variant and seed, holding its model
  stages (train, evaluate, report) and a ``config.yaml`` whose ``shared_stages`` point at the units.
- ``report/`` — the comparison report; ``sweep.json`` — the plan of the last launch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..config import Config
from ..engine.fingerprint import canonical_json, code_version, stage_identity
from ..engine.layout import is_imported
from ..engine.registry import StageSpec, pipeline
from ..errors import ConfigError
from ..storage import Store, join
from .experiment import Experiment

#: Schema of ``sweep.json``.
PLAN_SCHEMA = "microparade.sweep/1"


@dataclass
class SharedUnit:
    """One shared data stage: computed once, in its own root, by its own config."""

    stage: str
    identity: str
    #: Root URL: the stage lives in ``{root}/{stage}/``.
    root: str
    #: The config that computes it (``run_dir`` = ``root``; the stages it reads are shared units
    #: too): ``run --only {stage}`` of this config publishes the unit.
    cfg: Config
    #: Indices of the runs that read it.
    runs: list[int] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.stage}-{self.identity[:12]}"


@dataclass
class SweepRun:
    """One variant × seed: its own directory for the model stages."""

    index: int
    variant: str
    seed: int
    cfg: Config
    #: Model stages of the run (``shared_in_sweep`` False), in pipeline order.
    stages: list[str]
    #: The shared units it reads: stage -> unit key.
    units: dict[str, str]

    @property
    def run_dir(self) -> str:
        return self.cfg.run_dir

    @property
    def label(self) -> str:
        return f"{self.variant}/seed-{self.seed}"


@dataclass
class SweepPlan:
    experiment: Experiment
    runs: list[SweepRun]
    #: Shared units in pipeline order (a unit's inputs come before it).
    units: list[SharedUnit]

    @property
    def sweep_dir(self) -> str:
        return self.experiment.sweep_dir

    def store(self) -> Store:
        return Store(self.sweep_dir, self.runs[0].cfg.storage_options)

    def unit(self, key: str) -> SharedUnit:
        return next(u for u in self.units if u.key == key)

    def runs_of(self, variant: str) -> list[SweepRun]:
        return [r for r in self.runs if r.variant == variant]

    def config_path(self, what: SweepRun | SharedUnit) -> str:
        """The local file a job reads its config from (written by :func:`write_configs`)."""
        name = f"run-{what.index}" if isinstance(what, SweepRun) else f"shared-{what.key}"
        return join(self.experiment.local_dir, "configs", f"{name}.yaml")

    def array_config_path(self) -> str:
        """The config path of an array task: ``%a`` becomes ``$SLURM_ARRAY_TASK_ID`` (a run's index)."""
        return join(self.experiment.local_dir, "configs", "run-%a.yaml")

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": PLAN_SCHEMA,
            "experiment": self.experiment.name,
            "experiment_file": self.experiment.path,
            "code_version": code_version(),
            "sweep_dir": self.sweep_dir,
            "seeds": list(self.experiment.spec.seeds),
            "units": [
                {"key": u.key, "stage": u.stage, "identity": u.identity, "root": u.root, "runs": u.runs}
                for u in self.units
            ],
            "runs": [
                {
                    "index": r.index,
                    "variant": r.variant,
                    "seed": r.seed,
                    "run_dir": r.run_dir,
                    "stages": r.stages,
                    "shared": r.units,
                }
                for r in self.runs
            ],
        }


def comparison_report(sweep_dir: str) -> str:
    """URL of the sweep's comparison report (each run's own report links to it)."""
    return join(sweep_dir, "report", "index.html")


def build_plan(exp: Experiment) -> SweepPlan:
    """Resolve every run's config and group the runs' data stages by identity."""
    sweep = exp.sweep_dir
    units: dict[str, SharedUnit] = {}
    runs: list[SweepRun] = []
    #: Each run's last stage's identity: equal for two runs that would compute the same thing.
    run_identities: list[str] = []
    for variant in exp.spec.variants:
        for seed in exp.spec.seeds:
            run_dir = join(sweep, "runs", variant, f"seed-{seed}")
            cfg = exp.run_config(variant, seed, run_dir, comparison_report(sweep))
            identities: dict[str, str] = {}
            shared: dict[str, str] = {}
            model_stages: list[str] = []
            for spec in pipeline(cfg):
                identities[spec.name] = stage_identity(cfg, spec, {i: identities[i] for i in spec.inputs})
                if is_imported(cfg, spec.name):  # every run reads it where it is (data.chunks)
                    continue
                if not spec.shared_in_sweep:
                    model_stages.append(spec.name)
                    continue
                unit = units.get(f"{spec.name}-{identities[spec.name][:12]}")
                if unit is None:
                    ancestors = _ancestors(cfg, spec.name)
                    upstream = {stage: key for stage, key in shared.items() if stage in ancestors}
                    unit = _new_unit(sweep, spec, identities[spec.name], cfg, upstream)
                    units[unit.key] = unit
                unit.runs.append(len(runs))
                shared[spec.name] = unit.key
            roots = {stage: units[key].root for stage, key in shared.items()}
            cfg = cfg.model_copy(update={"shared_stages": roots})
            runs.append(SweepRun(len(runs), variant, seed, cfg, model_stages, shared))
            run_identities.append(identities[spec.name])
    plan = SweepPlan(exp, runs, list(units.values()))
    _check_distinct(plan, run_identities)
    return plan


def _ancestors(cfg: Config, stage: str) -> set[str]:
    """The stages whose outputs ``stage`` reads, directly or through its inputs."""
    specs = {s.name: s for s in pipeline(cfg)}
    out: set[str] = set()
    todo = list(specs[stage].inputs)
    while todo:
        name = todo.pop()
        if name not in out:
            out.add(name)
            todo.extend(specs[name].inputs)
    return out


def _new_unit(sweep: str, spec: StageSpec, identity: str, cfg: Config, upstream: dict[str, str]) -> SharedUnit:
    root = join(sweep, "shared", f"{spec.name}-{identity[:12]}")
    roots = {stage: join(sweep, "shared", key) for stage, key in upstream.items()}
    unit_cfg = cfg.model_copy(update={"run_dir": root, "shared_stages": roots})
    return SharedUnit(spec.name, identity, root, unit_cfg)


def _check_distinct(plan: SweepPlan, run_identities: list[str]) -> None:
    """One error naming every run that would compute exactly what another run computes."""
    seen: dict[str, SweepRun] = {}
    problems = []
    for run, ident in zip(plan.runs, run_identities, strict=True):
        if ident in seen:
            problems.append(
                f"{run.label} computes exactly what {seen[ident].label} computes (same config after overrides): "
                "remove one variant, or make a seed key change it"
            )
        seen.setdefault(ident, run)
    if problems:
        raise ConfigError(f"invalid experiment ({plan.experiment.path}):\n" + "\n".join(f"  - {p}" for p in problems))


def write_configs(plan: SweepPlan) -> None:
    """Write every run's and unit's resolved config where jobs read them (the local configs dir)
    and ``{sweep_dir}/sweep.json``. (A run's ``config.yaml`` beside its stages is written by ``run``.)"""
    local = Store(plan.experiment.local_dir)
    items: list[SweepRun | SharedUnit] = [*plan.units, *plan.runs]
    for item in items:
        name = plan.config_path(item).rsplit("/", 1)[1]
        local.write_bytes_atomic(f"configs/{name}", yaml.safe_dump(item.cfg.to_dict(), sort_keys=False).encode())
    plan.store().write_bytes_atomic("sweep.json", json.dumps(plan.to_json(), indent=2).encode() + b"\n")


def plan_digest(plan: SweepPlan) -> str:
    from ..engine.manifest import sha256_bytes

    return sha256_bytes(canonical_json(plan.to_json()))
