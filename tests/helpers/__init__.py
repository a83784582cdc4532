"""Test helpers: repository paths (:mod:`.paths`), the CLI in a subprocess (:mod:`.cli`), hand-built
chunks and a test ``chunks`` stage (:mod:`.train`), the local Slurm (:mod:`.slurm_cluster`) and the
object-store emulators (:mod:`.storage_servers`)."""
