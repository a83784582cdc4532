"""The experiment file: a base config, its variants as ``key=value`` overrides, seeds, and the
comparisons the report lays out as tables. Validated like the run config: every problem (an
unknown key, a bad value, a variant whose config does not validate, two variants that would
compute the same thing) is reported together as one :class:`ConfigError` before anything runs.

See ``docs/experiments.md`` and ``experiments/paper.yaml``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, ValidationInfo, field_validator

from ..config import (
    Config,
    Section,
    Split,
    apply_overrides,
    build_config,
    format_validation_errors,
    read_yaml_mapping,
)
from ..errors import ConfigError
from ..storage import join, normalize_url, protocol_of

#: Names of variants and comparisons: they become directory names and table labels.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
#: An override ``experiment.<key>=<value>`` on the command line sets a key of the experiment file.
EXPERIMENT_PREFIX = "experiment."


class ComparisonSpec(Section):
    """One table of the report: variants compared with the first (or ``baseline``)."""

    #: The table's title.
    title: str = ""
    #: Variants in the table's row order.
    variants: list[str] = Field(min_length=2)
    #: The reference of the table's paired differences; null = the first variant.
    baseline: str | None = None
    #: Row labels per variant (default: the variant's name).
    labels: dict[str, str] = Field(default_factory=dict)

    @property
    def reference(self) -> str:
        return self.baseline or self.variants[0]

    def label(self, variant: str) -> str:
        return self.labels.get(variant, variant)


class SweepLocalConfig(Section):
    #: Runs trained at once by ``sweep run`` (each is one process; on a 2-core laptop keep 1).
    parallel: int = Field(1, ge=1)


class SweepSlurmConfig(Section):
    #: Array tasks of one job array running at once (``--array=...%K``).
    array_parallelism: int = Field(4, ge=1)


class SweepReportConfig(Section):
    #: Split the comparison tables and confidence intervals are computed on.
    split: Split = "valid"
    #: Paired bootstrap resamples of the evaluation rows for the confidence intervals (0 = none).
    bootstrap: int = Field(1000, ge=0)
    #: Two-sided confidence level of the intervals.
    confidence: float = Field(0.95, gt=0.5, lt=1)
    #: Fit the features-only GBDT once on the shared rows and show it as a row of every table.
    gbdt: bool = True
    #: Seed of the bootstrap and the GBDT.
    seed: int = 0


class ExperimentFile(Section):
    """The validated content of an experiment file."""

    #: Experiment name (the default sweep directory is ``runs/sweep-<name>``).
    name: str = Field(pattern=NAME_PATTERN)
    #: What the experiment asks.
    description: str = ""
    #: Base run config, relative to the experiment file; null = the embedded defaults.
    base: str | None = None
    #: Overrides applied to the base config of every variant (before the variant's own).
    overrides: list[str] = Field(default_factory=list)
    #: Where the shared stages, the runs and the comparison report live (path or fsspec URL);
    #: null = ``runs/sweep-<name>``.
    sweep_dir: str | None = None
    #: Seeds: every variant runs once per seed.
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    #: Config keys set to the seed of each run (their stages are computed once per seed).
    seed_keys: list[str] = Field(default_factory=lambda: ["train.seed"], min_length=1)
    #: Variants: name -> overrides (applied after ``overrides``, before the seed).
    variants: dict[str, list[str]] = Field(min_length=1)
    #: The report's tables: name -> comparison.
    comparisons: dict[str, ComparisonSpec] = Field(default_factory=dict)
    local: SweepLocalConfig = Field(default_factory=SweepLocalConfig)
    slurm: SweepSlurmConfig = Field(default_factory=SweepSlurmConfig)
    report: SweepReportConfig = Field(default_factory=SweepReportConfig)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("seeds must be distinct")
        return v

    @field_validator("variants", "comparisons")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        import re

        bad = [k for k in v if not re.match(NAME_PATTERN, k)]
        if bad:
            raise ValueError(f"names must match {NAME_PATTERN} (letters, digits, _ . -): {', '.join(bad)}")
        return v

    @field_validator("comparisons")
    @classmethod
    def _comparisons_name_variants(
        cls, v: dict[str, ComparisonSpec], info: ValidationInfo
    ) -> dict[str, ComparisonSpec]:
        variants = info.data.get("variants")
        if variants is None:  # invalid itself: reported on its own
            return v
        problems = []
        for name, comp in v.items():
            unknown = [x for x in comp.variants if x not in variants]
            if unknown:
                problems.append(f"comparison {name!r} names unknown variant(s) {', '.join(unknown)}")
            if comp.baseline is not None and comp.baseline not in comp.variants:
                problems.append(f"comparison {name!r}: baseline {comp.baseline!r} is not one of its variants")
            if len(set(comp.variants)) != len(comp.variants):
                problems.append(f"comparison {name!r} lists a variant twice")
        if problems:
            raise ValueError("; ".join(problems))
        return v


class Experiment:
    """A loaded experiment: the validated file plus every run's resolved config."""

    def __init__(self, path: str, spec: ExperimentFile, base: dict[str, Any], overrides: list[str]):
        self.path = path
        self.spec = spec
        #: The base config's data (the YAML mapping), before any override.
        self.base = base
        #: Command-line overrides of the base config (after the file's ``overrides``).
        self.cli_overrides = overrides

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def sweep_dir(self) -> str:
        return normalize_url(self.spec.sweep_dir or f"runs/sweep-{self.spec.name}")

    @property
    def local_dir(self) -> str:
        """A local directory for the files Slurm jobs read (the runs' configs) and the logs of
        ``sweep run``: ``{sweep_dir}/_sweep`` when the sweep directory is local, else
        ``sweeps/<name>`` in the working directory."""
        if protocol_of(self.sweep_dir) in ("file", "local"):
            return join(self.sweep_dir, "_sweep")
        return str(Path("sweeps", self.name).resolve())

    def run_overrides(self, variant: str, seed: int) -> list[str]:
        """Every override of one run, in the order applied."""
        return [
            *self.spec.overrides,
            *self.cli_overrides,
            *self.spec.variants[variant],
            *(f"{key}={seed}" for key in self.spec.seed_keys),
        ]

    def run_config(self, variant: str, seed: int, run_dir: str, comparison: str | None = None) -> Config:
        """The resolved config of one run (``comparison``: the sweep report its own report links to)."""
        cfg = build_config(
            self.base, [*self.run_overrides(variant, seed), f"run_dir={run_dir}"], source=f"{self.path}: {variant}"
        )
        if comparison is not None:
            cfg.report.comparison = comparison
        return cfg


def load_experiment(path: str | os.PathLike[str], overrides: list[str] | None = None) -> Experiment:
    """Load and validate an experiment file.

    ``overrides``: ``key=value`` items for the base config of every variant, or
    ``experiment.<key>=<value>`` for the experiment file itself (e.g. ``experiment.seeds=[0]``).
    """
    p = Path(path)
    data = read_yaml_mapping(p, "experiment file")
    overrides = list(overrides or [])
    mine = [o[len(EXPERIMENT_PREFIX) :] for o in overrides if o.startswith(EXPERIMENT_PREFIX)]
    data = apply_overrides(data, mine)
    try:
        spec = ExperimentFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_errors(exc, f"experiment {p}")) from None
    base: dict[str, Any] = {}
    if spec.base is not None:
        base = read_yaml_mapping(p.parent / spec.base, f"{p}: base config")
    exp = Experiment(str(p), spec, base, [o for o in overrides if not o.startswith(EXPERIMENT_PREFIX)])
    _check_variants(exp)
    return exp


def _check_variants(exp: Experiment) -> None:
    """Every variant's config validates and every seed key exists: all problems in one error."""
    problems = []
    for variant in exp.spec.variants:
        try:
            cfg = exp.run_config(variant, exp.spec.seeds[0], "unused")
        except ConfigError as exc:
            problems.append(f"variant {variant!r}: {exc}")
            continue
        for key in exp.spec.seed_keys:
            try:
                value = cfg.section(key)
            except KeyError:
                problems.append(f"seed_keys: no config key {key!r}")
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                problems.append(f"seed_keys: {key!r} is not an integer setting (it holds {value!r})")
    if problems:
        lines = list(dict.fromkeys(problems))
        raise ConfigError(
            f"invalid experiment ({exp.path}): {len(lines)} problem(s)\n" + "\n".join(f"  - {x}" for x in lines)
        )
