"""Slurm: job state queries (one place), job records, resources, submission, Dask in an allocation.

Modules: :mod:`.query` (squeue/sacct/scontrol),
:mod:`.records` (``{run_dir}/_slurm/jobs.json``), :mod:`.resources` (a stage's resources as
sbatch flags and submitit parameters), :mod:`.scripts` (the sbatch scripts, rendered from the
registry), :mod:`.plan` (pending stages), :mod:`.submit` (submitit, requeue, cancel),
:mod:`.dask_allocation` (Dask scheduler/worker commands) and :mod:`.commands` (the CLI's Slurm
subcommands). Nothing here imports :mod:`microparade.cli`.
"""
