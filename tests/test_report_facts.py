"""The report describes the run from its manifests: the model label, and a chunks manifest that
breaks its contract (the report still builds; the baseline says why it did not run)."""

from __future__ import annotations

import json

import tests.test_report as tr
from microparade.config import build_config
from microparade.engine import run_pipeline
from microparade.engine.manifest import Manifest
from microparade.stages.chunks.contract import ChunksManifest, Normalization
from microparade.stages.report.inputs import model_label
from microparade.storage import Store
from tests.test_report import fake_pipeline  # noqa: F401  (the fixture)


def _chunks(history_size: int) -> ChunksManifest:
    return ChunksManifest(
        url="memory://run/chunks",
        feature_names=("f0",),
        normalization=Normalization((0.0,), (1.0,)),
        history_size=history_size,
        max_length=64,
        encoder_tokenizer="minilm",
        special_tokens={"cls": 101, "sep": 102, "pad": 0},
        splits={},
    )


def _train(model: dict[str, object] | None, tmp_path) -> Manifest:
    inputs = {"config": {"model": model}} if model is not None else {}
    return Manifest("train", {"files": [], "fingerprint_inputs": inputs}, b"{}", Store(str(tmp_path)))


def test_model_label_reads_the_manifests(tmp_path):
    train = _train({"heads": "multi", "encoder": "/models/bert", "hidden_dim": 192}, tmp_path)
    assert model_label(_chunks(6), train) == "MicroParade (H=6, multi head, /models/bert)"
    assert model_label(None, train) == "MicroParade (multi head, /models/bert)"
    assert model_label(_chunks(4), _train(None, tmp_path)) == "MicroParade (H=4)"
    assert model_label(None, None) == "MicroParade"


def test_report_with_a_chunks_manifest_that_breaks_its_contract(tmp_path, fake_pipeline, monkeypatch):  # noqa: F811
    def chunks_without_tokenizer(ctx) -> None:
        tr._fake_chunks(ctx)
        del ctx.extra["encoder_tokenizer"]

    monkeypatch.setitem(tr.FAKES, "chunks", chunks_without_tokenizer)
    fake_pipeline(("chunks",))
    cfg = build_config({"run_dir": str(tmp_path / "run"), "report": {"baseline_threads": 1}})
    assert run_pipeline(cfg)["report"] == "ran"
    rdir = tmp_path / "run" / "report"
    summary = json.loads((rdir / "summary.json").read_text())
    status = summary["baseline"]["status"]
    assert status.startswith("chunks: the chunks manifest ") and "extra.encoder_tokenizer is missing" in status
    assert summary["metrics"] == {}
    page = (rdir / "index.html").read_text()
    # The data statistics still come from the manifest as written.
    assert 'id="fig-data_chunk_sizes"' in page and "extra.encoder_tokenizer is missing" in page
