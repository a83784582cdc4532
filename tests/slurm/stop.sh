#!/usr/bin/env bash
# Stop the single-host Slurm started by tests/slurm/start.sh: both slurmd, slurmctld, slurmdbd,
# MariaDB and munged (only a munged that start.sh started itself).
#
#   tests/slurm/stop.sh            # stop the daemons; jobs, accounting and logs are kept
#   tests/slurm/stop.sh --purge    # also cancel all jobs first and delete the whole state dir
#
# Environment: MICROPARADE_SLURM_DIR (default /var/tmp/microparade-slurm).
set -euo pipefail

DIR=${MICROPARADE_SLURM_DIR:-/var/tmp/microparade-slurm}
RUN=$DIR/run
CONF=$DIR/etc/slurm.conf
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
export SLURM_CONF=$CONF

purge=0
case "${1:-}" in
  "") ;;
  --purge) purge=1 ;;
  -h | --help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac

say() { echo "slurm/stop.sh: $*" >&2; }

# pid_alive PIDFILE COMM: as in start.sh; a zombie (PID 1 does not reap here) counts as stopped.
pid_alive() {
  local pid stat
  [[ -r $1 ]] || return 1
  read -r pid <"$1" || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  { read -r stat <"/proc/$pid/stat"; } 2>/dev/null || return 1
  [[ $stat == "$pid ($2) "[!ZX]* ]]
}

# stop_daemon NAME PIDFILE: SIGTERM, wait up to 20 s, then SIGKILL.
stop_daemon() {
  local name=$1 pidfile=$2 comm=${1%% *} pid i
  if ! pid_alive "$pidfile" "$comm"; then
    rm -f "$pidfile"
    return 0
  fi
  read -r pid <"$pidfile"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    pid_alive "$pidfile" "$comm" || break
    sleep 0.2
  done
  if pid_alive "$pidfile" "$comm"; then
    say "$name (pid $pid) ignored SIGTERM for 20 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
  say "stopped $name (pid $pid)"
}

if [[ ! -d $DIR ]]; then
  say "nothing to stop: $DIR does not exist"
  exit 0
fi
[[ $EUID -eq 0 ]] || { say "ERROR: stopping the daemons needs root (uid is $EUID)"; exit 1; }

if ((purge)) && pid_alive "$RUN/slurmctld.pid" slurmctld; then
  # Job steps (slurmstepd) outlive slurmd: end them while the controller can still do it.
  mapfile -t jobs < <(squeue -h -o %A 2>/dev/null || true)
  if ((${#jobs[@]})); then
    say "cancelling ${#jobs[@]} job(s)"
    scancel --full --quiet "${jobs[@]}" 2>/dev/null || true
  fi
  for ((i = 0; i < 50; i++)); do
    [[ -z "$(squeue -h -o %i 2>/dev/null)" ]] && break
    sleep 0.2
  done
fi

for pidfile in "$RUN"/slurmd-*.pid; do
  [[ -e $pidfile ]] || continue
  node=${pidfile##*/slurmd-}
  stop_daemon "slurmd -N ${node%.pid}" "$pidfile"
done
stop_daemon slurmctld "$RUN/slurmctld.pid"
stop_daemon slurmdbd "$RUN/slurmdbd.pid"
stop_daemon mariadbd "$RUN/mariadbd.pid"
stop_daemon munged "$RUN/munge/munged.pid"

if ((purge)); then
  if [[ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" == "$CONF" ]]; then
    rm -f /etc/slurm/slurm.conf
    if [[ -e /etc/slurm/slurm.conf.before-microparade ]]; then
      mv /etc/slurm/slurm.conf.before-microparade /etc/slurm/slurm.conf
    fi
  fi
  rm -rf -- "$DIR"
  say "purged $DIR"
fi
