"""generate stage: synthetic RecSys 2021 raw files under ``{run_dir}/generate/{split}/``."""

from __future__ import annotations

from ...engine.context import StageContext
from ...errors import StageError
from .synth import generate_dataset


def run(ctx: StageContext) -> None:
    g = ctx.cfg.data.generate
    if g is None:  # the registry enables the stage only with data.generate set
        raise StageError("the generate stage needs data.generate in the config")
    tokenizer = g.tokenizer if g.tokenizer is not None else ctx.cfg.data.tokenizer
    summary = generate_dataset(
        ctx.out_url(),
        rows=g.rows,
        users=g.users,
        seed=g.seed,
        tokenizer=tokenizer,
        valid_fraction=g.valid_fraction,
        test_fraction=g.test_fraction,
        rows_per_file=g.rows_per_file,
        compression=g.compression,
        topics=g.topics,
        storage_options=ctx.store.storage_options,
        progress=False,  # the stage logs its own summary; a run's console stays short
    )
    for f in summary["files"]:
        ctx.file_meta[f["path"]] = {"rows": f["rows"], "split": f["split"]}
    ctx.extra.update(rows=summary["rows"], label_rates=summary["label_rates"], params=summary["params"])
