#!/usr/bin/env bash
# Dask inside a Slurm allocation: a scheduler on the first node and one worker per node, started
# with srun; the scheduler file goes to shared storage; everything is torn down on exit.
#
# From a stage script (slurm/common.sh does this for cluster.kind=scheduler_file):
#     source slurm/dask-cluster.sh; dask_cluster_start CONFIG [key=value ...]
#     ... python jobs/STAGE.py CONFIG cluster.scheduler_file=$MP_SCHEDULER_FILE ...
#     dask_cluster_stop
# Or as a wrapper inside an allocation (COMMAND finds the scheduler file in
# $MICROPARADE_SCHEDULER_FILE, which cluster.kind=scheduler_file also reads):
#     slurm/dask-cluster.sh CONFIG [key=value ...] -- COMMAND [ARGS ...]
# or submitted as the batch script of that allocation, e.g. every preprocessing stage in one job:
#     sbatch --nodes=2 slurm/dask-cluster.sh CONFIG k=v -- python -m microparade.cli run CONFIG k=v --until chunks
# With cluster.gpu=true the workers are `dask cuda worker` (one per GPU, cuDF backend, --protocol
# ucx with InfiniBand/NVLink when cluster.protocol=ucx). Workers are named after their node
# ($SLURMD_NODENAME). The scheduler file and the logs (scheduler.log, worker-<task>.log) live in
# $MICROPARADE_SCHEDULER_DIR (default {slurm.log_dir}/dask-$SLURM_JOB_ID), which must be on a
# filesystem every node sees. Workers spill to $MICROPARADE_DASK_LOCAL_DIR (default $TMPDIR or
# /tmp, node-local).

_dc_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Submitted itself (`sbatch slurm/dask-cluster.sh ...`), this script runs from Slurm's spool
# directory: find the checkout as the stage scripts do.
[ -f "$_dc_here/common.sh" ] || _dc_here="${MICROPARADE_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm"
# shellcheck disable=SC1091
source "$_dc_here/common.sh"

dask_cluster_start() {
  : "${SLURM_JOB_ID:?dask-cluster.sh must run inside a Slurm allocation}"
  local nodes="${SLURM_JOB_NUM_NODES:-1}"
  local cpus="${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}"
  local log_dir
  log_dir=$(mp config "$@" --get slurm.log_dir)
  local dir="${MICROPARADE_SCHEDULER_DIR:-$log_dir/dask-$SLURM_JOB_ID}"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  MP_SCHEDULER_FILE="$dir/scheduler.json"
  export MP_SCHEDULER_FILE MICROPARADE_SCHEDULER_FILE="$MP_SCHEDULER_FILE"
  rm -f "$MP_SCHEDULER_FILE"
  local local_dir="${MICROPARADE_DASK_LOCAL_DIR:-${TMPDIR:-/tmp}}"
  # Sets MP_DASK_SCHEDULER_CMD and MP_DASK_WORKER_CMD (command lines for `bash -c`, so that the
  # worker name "${SLURMD_NODENAME}" expands on each node) and MP_DASK_ENV.
  eval "$(mp dask-commands "$@" --scheduler-file "$MP_SCHEDULER_FILE" --nthreads "$cpus" --local-directory "$local_dir" --python "$MICROPARADE_PYTHON")"
  if [ -n "$MP_DASK_ENV" ]; then
    # shellcheck disable=SC2086,SC2163  # NAME=value words, split on purpose
    export $MP_DASK_ENV
  fi
  # The stage waits for at least one worker per node before computing (cluster.py).
  export MICROPARADE_DASK_WORKERS="$nodes"
  local first
  first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  mp_log "dask: scheduler on $first, $nodes worker task(s) with $cpus thread(s); logs and scheduler file in $dir"
  # shellcheck disable=SC2153  # MP_DASK_SCHEDULER_CMD comes from the eval above
  srun --overlap --nodes=1 --ntasks=1 --nodelist="$first" --cpus-per-task=1 --mem=0 \
    --output="$dir/scheduler.log" bash -c "exec $MP_DASK_SCHEDULER_CMD" 2>>"$dir/srun.log" &
  MP_DASK_SCHEDULER_PID=$!
  trap dask_cluster_stop EXIT
  local waited=0
  while [ ! -s "$MP_SCHEDULER_FILE" ]; do
    sleep 0.5; waited=$((waited + 1))
    if ! kill -0 "$MP_DASK_SCHEDULER_PID" 2>/dev/null || [ $waited -gt 240 ]; then
      mp_log "dask: the scheduler did not write $MP_SCHEDULER_FILE; its log:"
      cat "$dir/scheduler.log" >&2 || true
      dask_cluster_stop
      return 1
    fi
  done
  srun --overlap --nodes="$nodes" --ntasks-per-node=1 --ntasks="$nodes" --cpus-per-task="$cpus" --mem=0 \
    --output="$dir/worker-%t.log" bash -c "exec $MP_DASK_WORKER_CMD" 2>>"$dir/srun.log" &
  MP_DASK_WORKERS_PID=$!
}

dask_cluster_stop() {
  for pid in ${MP_DASK_WORKERS_PID:-} ${MP_DASK_SCHEDULER_PID:-}; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in ${MP_DASK_WORKERS_PID:-} ${MP_DASK_SCHEDULER_PID:-}; do
    wait "$pid" 2>/dev/null || true
  done
  MP_DASK_WORKERS_PID="" MP_DASK_SCHEDULER_PID=""
  trap - EXIT
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  args=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do args+=("$1"); shift; done
  [ "${1:-}" = "--" ] || { echo "usage: $0 CONFIG [key=value ...] -- COMMAND [ARGS ...]" >&2; exit 2; }
  shift
  dask_cluster_start "${args[@]}"
  rc=0
  "$@" || rc=$?
  dask_cluster_stop
  exit $rc
fi
