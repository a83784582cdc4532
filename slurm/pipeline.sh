#!/usr/bin/env bash
# Submit the stages of a run that are not done as chained sbatch jobs, and print their job ids.
#
#   slurm/pipeline.sh CONFIG [key=value ...]
#
# Each pending stage becomes one job of slurm/<stage>.sbatch with --dependency=afterok on the
# jobs of its pending inputs (a failed stage cancels the ones waiting on it). Resources come from
# the config (slurm.<stage> over slurm.default, else the scripts' #SBATCH defaults); logs go to
# {slurm.log_dir}/mp-<stage>-<jobid>.out. A second call while nothing changed submits nothing.
# Extra sbatch options for every job: MICROPARADE_SBATCH_ARGS="--partition=x --account=y".
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export MICROPARADE_HOME="${MICROPARADE_HOME:-$(cd "$here/.." && pwd)}"
# shellcheck disable=SC1091
source "$here/common.sh"

if [ $# -lt 1 ]; then
  echo "usage: $0 CONFIG [key=value ...]" >&2
  exit 2
fi
config="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
shift
overrides=("$@")
command -v sbatch >/dev/null || { echo "pipeline: sbatch not found: run this on a Slurm login node" >&2; exit 2; }

log_dir=$(mp config "$config" "${overrides[@]}" --get slurm.log_dir)
mkdir -p "$log_dir"
plan=$(mp plan "$config" "${overrides[@]}")
if [ -z "$plan" ]; then
  echo "pipeline: every stage is done; nothing submitted"
  exit 0
fi

declare -A job=()
read -r -a site_args <<< "${MICROPARADE_SBATCH_ARGS:-}"
while IFS=$'\t' read -r stage inputs state active; do
  if [ -n "$active" ]; then
    job[$stage]=$active
    echo "$stage $active (already queued; not resubmitted)"
    continue
  fi
  dep=""
  for input in ${inputs//,/ }; do
    if [ -n "${job[$input]:-}" ]; then dep="${dep:+$dep:}${job[$input]}"; fi
  done
  args=(--parsable --job-name="mp-$stage" --output="$log_dir/%x-%j.out"
        --export="ALL,MICROPARADE_HOME=$MICROPARADE_HOME,MICROPARADE_PYTHON=$MICROPARADE_PYTHON")
  if [ -n "$dep" ]; then args+=(--dependency="afterok:$dep" --kill-on-invalid-dep=yes); fi
  read -r -a res <<< "$(mp sbatch-args "$config" "${overrides[@]}" --stage "$stage")"
  out=$(sbatch "${args[@]}" "${res[@]}" "${site_args[@]}" "$here/$stage.sbatch" "$config" "${overrides[@]}")
  jid="${out%%;*}"
  job[$stage]=$jid
  mp record-job "$config" "${overrides[@]}" --stage "$stage" --job-id "$jid" --launcher sbatch
  echo "$stage $jid ($state${dep:+, after $dep})"
done <<< "$plan"
