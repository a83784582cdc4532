#!/usr/bin/env bash
# Submit the parts of an experiment that are not done as sbatch jobs, and print their job ids.
#
#   slurm/sweep.sh EXPERIMENT [key=value ...]
#
# Each shared stage that is not done becomes one job of slurm/<stage>.sbatch (afterok on the
# shared stages it reads); the runs (variant x seed) become one job array per model stage —
# train, evaluate, report — with --array=<run indices>%K (K: the experiment's
# slurm.array_parallelism), each array waiting task by task on the one before (aftercorr); then
# one job writes the comparison report. Jobs still queued are not submitted again, and a finished
# sweep submits nothing. The same as `microparade sweep submit --launcher sbatch` (see
# docs/experiments.md). Extra sbatch options for every job: MICROPARADE_SBATCH_ARGS="--account=y".
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export MICROPARADE_HOME="${MICROPARADE_HOME:-$(cd "$here/.." && pwd)}"
# shellcheck disable=SC1091
source "$here/common.sh"

if [ $# -lt 1 ]; then
  echo "usage: $0 EXPERIMENT [key=value ...]" >&2
  exit 2
fi
command -v sbatch >/dev/null || { echo "sweep: sbatch not found: run this on a Slurm login node" >&2; exit 2; }
mp sweep submit --launcher sbatch "$@"
