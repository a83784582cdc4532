"""Read-only questions to Slurm, in one place: the queue (squeue), accounting (sacct), one job's state.

Every function answers "nothing known" (empty, or None) when Slurm is absent, times out or fails:
callers decide what that means. Nothing else in microparade runs squeue or sacct.
"""

from __future__ import annotations

import getpass
import shutil
import subprocess


def slurm_query(cmd: list[str]) -> str:
    """stdout of a read-only Slurm command; empty when Slurm is absent, times out or fails."""
    if shutil.which(cmd[0]) is None:
        return ""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout if out.returncode == 0 else ""


def queued_jobs() -> dict[str, str]:
    """``{job_id: state}`` of this user's jobs that Slurm still holds (pending, running, requeued...).

    Read from ``squeue`` (the controller itself) rather than ``sacct``: accounting lags the
    scheduler, and a job submitted a moment ago must already count as queued. Empty without Slurm.
    """
    out = slurm_query(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T"])
    jobs = {}
    for line in out.splitlines():
        jid, sep, state = line.strip().partition("|")
        if sep:
            # An array task is listed as ARRAY_TASK (``-r``: one line per task): it stands for
            # itself and, as any task of it is still queued, for its array job.
            jobs[jid] = state
            jobs.setdefault(jid.split("_")[0], state)
    return jobs


def sacct_info(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """``{job_id: {state, elapsed, start, end, exit_code, nodelist}}`` from sacct (main job lines).

    An array task ``ARRAY_TASK`` is keyed by that id (and, for the first task seen, by the array's id)."""
    ids = [str(j) for j in job_ids if j]
    if not ids:
        return {}
    out = slurm_query(
        ["sacct", "-n", "-P", "-X", "-j", ",".join(ids), "-o", "JobID,State,Elapsed,Start,End,ExitCode,NodeList"]
    )
    info: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) < 7:
            continue
        jid = parts[0]
        info[jid] = {
            "state": parts[1].split()[0] if parts[1] else "",
            "elapsed": parts[2],
            "start": parts[3],
            "end": parts[4],
            "exit_code": parts[5],
            "nodelist": parts[6],
        }
        info.setdefault(jid.split("_")[0], info[jid])
    return info


def _tres_count(tres: str, name: str) -> int:
    """The count of ``name`` (``cpu``, ``gres/gpu``) in a TRES string like ``cpu=4,mem=8G,gres/gpu=2``."""
    for item in tres.split(","):
        key, _, value = item.partition("=")
        if key == name and value.isdigit():
            return int(value)
    return 0


def sacct_usage(job_ids: list[str]) -> dict[str, dict[str, float | str]]:
    """``{job_id: {state, elapsed_s, cpu_hours, gpu_hours}}``: what each job cost, from sacct's
    elapsed time and allocated CPUs and GPUs (``AllocTRES``); array tasks keyed ``ARRAY_TASK``."""
    ids = [str(j) for j in job_ids if j]
    if not ids:
        return {}
    out = slurm_query(["sacct", "-n", "-P", "-X", "-j", ",".join(ids), "-o", "JobID,State,ElapsedRaw,AllocTRES"])
    usage: dict[str, dict[str, float | str]] = {}
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) < 4 or not parts[2].isdigit():
            continue
        seconds = float(parts[2])
        usage[parts[0]] = {
            "state": parts[1].split()[0] if parts[1] else "",
            "elapsed_s": seconds,
            "cpu_hours": seconds * _tres_count(parts[3], "cpu") / 3600,
            "gpu_hours": seconds * _tres_count(parts[3], "gres/gpu") / 3600,
        }
    return usage


def job_state(job_id: str) -> str | None:
    """The controller's current state of a job (``RUNNING``, ``COMPLETING``...), None if unknown."""
    return slurm_query(["squeue", "-h", "-j", str(job_id), "-o", "%T"]).strip() or None


#: Job states after which none of the job's processes runs any more (sacct's terms).
ENDED_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "TIMEOUT",
    }
)


def job_ended(job_id: str, step_id: str | None = None) -> str | None:
    """Why job ``job_id`` (or its step ``step_id``) has provably ended, e.g. ``"Slurm job 12 CANCELLED"``;
    None while it may still run, or when Slurm cannot tell (absent, unreachable, unknown job).

    A job the controller lists as queued again has ended its previous incarnation; one it lists as
    running is alive unless ``step_id`` is given and that step is no longer listed; a job it no
    longer lists has ended when accounting shows an end state.
    """
    if shutil.which("squeue") is None:
        return None
    listed = job_state(job_id)
    if listed in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"):
        # Queued again (requeued): whatever incarnation wrote the lease has stopped.
        return f"Slurm job {job_id} is {listed} (requeued)"
    if listed is not None:
        if step_id is None or listed != "RUNNING":
            return None
        steps = slurm_query(["squeue", "-h", "-s", "-j", str(job_id), "-o", "%i"]).split()
        if steps and f"{job_id}.{step_id}" not in steps:
            return f"step {job_id}.{step_id} of Slurm job {job_id} is no longer running"
        return None
    state = sacct_info([job_id]).get(str(job_id), {}).get("state", "")
    return f"Slurm job {job_id} {state}" if state in ENDED_STATES else None
