#!/usr/bin/env bash
# Submit the stages of a run that are not done as chained sbatch jobs, and print their job ids.
#
#   slurm/pipeline.sh CONFIG [key=value ...]
#
# Each pending stage becomes one job of slurm/<stage>.sbatch with --dependency=afterok on the
# jobs of its pending inputs (a failed stage cancels the ones waiting on it). Resources come from
# the config (slurm.<stage> over slurm.default, else the scripts' #SBATCH defaults); logs go to
# {slurm.log_dir}/mp-<stage>-<jobid>.out. A stage whose job is still queued or running is not
# submitted again (its dependents wait on that job); a second call while nothing changed submits
# nothing. Extra sbatch options for every job: MICROPARADE_SBATCH_ARGS="--partition=x --account=y".
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export MICROPARADE_HOME="${MICROPARADE_HOME:-$(cd "$here/.." && pwd)}"
# shellcheck disable=SC1091
source "$here/common.sh"

if [ $# -lt 1 ]; then
  echo "usage: $0 CONFIG [key=value ...]" >&2
  exit 2
fi
[ -f "$1" ] || { echo "pipeline: config file $1 does not exist" >&2; exit 2; }
config="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
shift
overrides=("$@")
command -v sbatch >/dev/null || { echo "pipeline: sbatch not found: run this on a Slurm login node" >&2; exit 2; }

log_dir=$(mp config "$config" "${overrides[@]}" --get slurm.log_dir)
mkdir -p "$log_dir"
log_dir="$(cd "$log_dir" && pwd)"
# Fields: stage, inputs (comma-separated), state, job already queued, sbatch options ("-" = none).
plan=$(mp plan "$config" "${overrides[@]}")
if [ -z "$plan" ]; then
  echo "pipeline: every stage is done; nothing submitted"
  exit 0
fi

declare -A job=()
submitted=0
read -r -a site_args <<< "${MICROPARADE_SBATCH_ARGS:-}"
while IFS=$'\t' read -r stage inputs state active resources; do
  if [ "$active" != "-" ]; then
    job[$stage]=$active
    echo "$stage $active (already queued; not resubmitted)"
    continue
  fi
  dep=""
  if [ "$inputs" != "-" ]; then
    for input in ${inputs//,/ }; do
      if [ -n "${job[$input]:-}" ]; then dep="${dep:+$dep:}${job[$input]}"; fi
    done
  fi
  args=(--parsable --job-name="mp-$stage" --output="$log_dir/%x-%j.out"
        --export="ALL,MICROPARADE_HOME=$MICROPARADE_HOME,MICROPARADE_PYTHON=$MICROPARADE_PYTHON")
  if [ -n "$dep" ]; then args+=(--dependency="afterok:$dep" --kill-on-invalid-dep=yes); fi
  res=()
  if [ "$resources" != "-" ]; then read -r -a res <<< "$resources"; fi
  out=$(sbatch "${args[@]}" "${res[@]}" "${site_args[@]}" "$here/$stage.sbatch" "$config" "${overrides[@]}")
  jid="${out%%;*}"
  job[$stage]=$jid
  submitted=$((submitted + 1))
  mp record-job "$config" "${overrides[@]}" --stage "$stage" --job-id "$jid" --launcher sbatch
  echo "$stage $jid ($state${dep:+, after $dep})"
done <<< "$plan"
if [ "$submitted" -eq 0 ]; then
  echo "pipeline: every pending stage is already queued; nothing submitted"
else
  echo "pipeline: submitted $submitted job(s); logs in $log_dir"
fi
