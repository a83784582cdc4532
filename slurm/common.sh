# shellcheck shell=bash
# Sourced by every stage script: finds the checkout and its Python, loads site settings, and
# defines the helpers the scripts share. Not meant to be run.
#
#   MICROPARADE_HOME     the microparade checkout (slurm/pipeline.sh exports it; default: the
#                        submission directory)
#   MICROPARADE_PYTHON   Python to use (default: $MICROPARADE_HOME/.venv/bin/python, else python3)
#   MICROPARADE_XLA_PYTHON  Python of stages with backend xla (default: $MICROPARADE_HOME/.venv-tpu/bin/python)
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
# Math libraries (torch, BLAS) default to one thread per core of the node, not of the allocation:
# without cgroup CPU binding several jobs on a node then oversubscribe it badly.
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$SLURM_CPUS_PER_TASK}"
  export MKL_NUM_THREADS="${MKL_NUM_THREADS:-$SLURM_CPUS_PER_TASK}"
fi

mp() { "$MICROPARADE_PYTHON" -m microparade.cli "$@"; }
mp_log() { echo "[$(date +%H:%M:%S)] ${SLURM_JOB_NAME:-microparade} ${SLURM_JOB_ID:-}: $*" >&2; }

# mp_stage_python STAGE CONFIG [key=value ...]: the Python that runs STAGE: the XLA environment's
# (.venv-tpu, or $MICROPARADE_XLA_PYTHON) when the stage's backend is xla, else $MICROPARADE_PYTHON.
mp_stage_python() {
  local stage=$1; shift
  local py
  py=$(mp config "$@" --python-for "$stage")
  echo "${py:-$MICROPARADE_PYTHON}"
}

# mp_stage STAGE CONFIG [key=value ...]: run one stage in this job.
mp_stage() {
  local stage=$1; shift
  local py
  py=$(mp_stage_python "$stage" "$@")
  mp_log "stage $stage on ${SLURMD_NODENAME:-$(hostname)} (nodes: ${SLURM_JOB_NODELIST:-none}, restart ${SLURM_RESTART_COUNT:-0}, python $py)"
  "$py" "$MICROPARADE_HOME/jobs/$stage.py" "$@"
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
# The batch shell receives SIGUSR2 before the time limit (--signal=B:USR2@90) and forwards it to
# the stage, which saves a checkpoint and exits 124; the job then requeues itself and the rerun
# resumes from the checkpoint. SIGTERM (scancel, preemption, `scontrol requeue`) is forwarded too
# so the stage checkpoints, but the job is then already stopping and Slurm's decision stands: it
# is requeued only while it is still RUNNING (never after scancel). A stage killed by SIGUSR2
# before it installed its handler is requeued as well (it resumes from its last periodic
# checkpoint). Jobs need --requeue and --open-mode=append (the scripts of requeue stages set both).
mp_requeueing() {
  local stage=$1; shift
  local launcher=()
  if [ "${SLURM_NTASKS:-1}" -gt 1 ]; then
    launcher=(srun --kill-on-bad-exit=1)
  fi
  local py
  py=$(mp_stage_python "$stage" "$@")
  mp_log "stage $stage on ${SLURMD_NODENAME:-$(hostname)} (nodes: ${SLURM_JOB_NODELIST:-none}, tasks ${SLURM_NTASKS:-1}, restart ${SLURM_RESTART_COUNT:-0}, python $py)"
  MP_SIGNALLED=""
  "${launcher[@]}" "$py" "$MICROPARADE_HOME/jobs/$stage.py" "$@" &
  local pid=$!
  # shellcheck disable=SC2064
  trap "MP_SIGNALLED=USR2; mp_log 'SIGUSR2: asking $stage to checkpoint'; kill -USR2 $pid 2>/dev/null" USR2
  # shellcheck disable=SC2064
  trap "MP_SIGNALLED=TERM; mp_log 'SIGTERM: asking $stage to checkpoint'; kill -TERM $pid 2>/dev/null" TERM
  local rc
  while true; do
    # wait returns >128 when a trapped signal interrupts it; the stage may still be running.
    rc=0; wait "$pid" || rc=$?
    if [ "$rc" -le 128 ] || ! kill -0 "$pid" 2>/dev/null; then
      if [ "$rc" -gt 128 ]; then rc=0; wait "$pid" || rc=$?; fi
      break
    fi
  done
  trap - USR2 TERM
  if [ -n "${SLURM_JOB_ID:-}" ] && { [ "$rc" -eq 124 ] || { [ "$MP_SIGNALLED" = USR2 ] && [ "$rc" -ne 0 ]; }; }; then
    local state
    state=$(squeue -h -j "$SLURM_JOB_ID" -o %T 2>/dev/null || true)
    if [ "$state" != RUNNING ]; then
      mp_log "$stage stopped early (exit $rc); job $SLURM_JOB_ID is ${state:-gone} (Slurm is stopping it): not requeued by this script"
    else
      mp_log "$stage stopped early (exit $rc${MP_SIGNALLED:+ after SIG$MP_SIGNALLED}); requeueing job $SLURM_JOB_ID"
      local answer
      if answer=$(scontrol requeue "$SLURM_JOB_ID" 2>&1); then
        sleep 300 || true  # Slurm stops this run of the job; the requeued run resumes
      else
        mp_log "scontrol requeue $SLURM_JOB_ID refused: $answer"
      fi
    fi
  fi
  return "$rc"
}
