# Sourced by every stage script: finds the checkout and its Python, loads site settings, and
# defines the helpers the scripts share. Not meant to be run.
#
#   MICROPARADE_HOME     the microparade checkout (slurm/pipeline.sh exports it; default: the
#                        submission directory)
#   MICROPARADE_PYTHON   Python to use (default: $MICROPARADE_HOME/.venv/bin/python, else python3)
#   slurm/site.sh        optional, yours: `module load`, conda activate, proxies, UCX settings...

MICROPARADE_HOME="${MICROPARADE_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}"
export MICROPARADE_HOME
if [ -f "$MICROPARADE_HOME/slurm/site.sh" ]; then
  # shellcheck disable=SC1091
  source "$MICROPARADE_HOME/slurm/site.sh"
fi
if [ -z "${MICROPARADE_PYTHON:-}" ]; then
  if [ -x "$MICROPARADE_HOME/.venv/bin/python" ]; then
    MICROPARADE_PYTHON="$MICROPARADE_HOME/.venv/bin/python"
  else
    MICROPARADE_PYTHON="$(command -v python3)"
  fi
fi
export MICROPARADE_PYTHON
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

mp() { "$MICROPARADE_PYTHON" -m microparade.cli "$@"; }
mp_log() { echo "[$(date +%H:%M:%S)] ${SLURM_JOB_NAME:-microparade} ${SLURM_JOB_ID:-}: $*" >&2; }

# mp_stage STAGE CONFIG [key=value ...]: run one stage in this job.
mp_stage() {
  local stage=$1; shift
  mp_log "stage $stage on $(hostname) (nodes: ${SLURM_JOB_NODELIST:-none}, restart ${SLURM_RESTART_COUNT:-0})"
  "$MICROPARADE_PYTHON" "$MICROPARADE_HOME/jobs/$stage.py" "$@"
}

# mp_dask_stage STAGE CONFIG [key=value ...]: a Dask stage. With cluster.kind=scheduler_file a
# scheduler and one worker per node are started inside this allocation (slurm/dask-cluster.sh)
# and the stage attaches to them; other kinds (local, jobqueue) start their own cluster.
mp_dask_stage() {
  local stage=$1; shift
  local kind
  kind=$(mp config "$@" --get cluster.kind)
  if [ "$kind" != "scheduler_file" ]; then
    mp_stage "$stage" "$@"
    return
  fi
  # shellcheck disable=SC1091
  source "$MICROPARADE_HOME/slurm/dask-cluster.sh"
  dask_cluster_start "$@"
  local rc=0
  mp_stage "$stage" "$@" "cluster.scheduler_file=$MP_SCHEDULER_FILE" || rc=$?
  dask_cluster_stop
  return $rc
}

# mp_requeueing STAGE CONFIG [key=value ...]: run a stage that checkpoints on SIGUSR2/SIGTERM.
# The batch shell receives the signal (--signal=B:USR2@90), forwards it to the stage, and when the
# stage exits with 124 (checkpoint saved) requeues this job; the rerun resumes from the checkpoint.
mp_requeueing() {
  local stage=$1; shift
  mp_log "stage $stage on $(hostname) (restart ${SLURM_RESTART_COUNT:-0})"
  local launcher=()
  if [ "${SLURM_NTASKS:-1}" -gt 1 ]; then
    launcher=(srun --kill-on-bad-exit=1)
  fi
  "${launcher[@]}" "$MICROPARADE_PYTHON" "$MICROPARADE_HOME/jobs/$stage.py" "$@" &
  local pid=$!
  trap 'mp_log "SIGUSR2: asking $stage to checkpoint"; kill -USR2 $pid 2>/dev/null' USR2
  trap 'mp_log "SIGTERM: asking $stage to checkpoint"; kill -TERM $pid 2>/dev/null' TERM
  local rc
  while true; do
    # wait returns >128 when a trapped signal interrupts it; the stage may still be running.
    rc=0; wait "$pid" || rc=$?
    if [ "$rc" -le 128 ]; then break; fi
    if ! kill -0 "$pid" 2>/dev/null; then rc=0; wait "$pid" || rc=$?; break; fi
  done
  trap - USR2 TERM
  if [ "$rc" -eq 124 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
    mp_log "checkpoint saved; requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    sleep 300  # Slurm stops this run of the job; the requeued run resumes
  fi
  return $rc
}
