"""Inference precision (``evaluate.precision``): bf16 and int8 agree with fp32 within their tolerance,
fp32 is the model as trained (bit for bit), and the config validates the option."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import tests.helpers.train as h
from microparade.config import ConfigError, ModelConfig
from microparade.engine import run_pipeline
from microparade.model import build_model, encode_batch
from microparade.model.batching import Examples, SpecialTokens
from microparade.model.inference import for_inference
from microparade.recsys_format import TARGETS

SPECIALS = SpecialTokens(cls=101, sep=102, pad=0)
#: Largest |probability difference| from fp32 that bf16 or int8 may make on these small untrained
#: models (measured: bf16 1.3e-3 tiny, 2.1e-3 MiniLM; int8 1.7e-4 tiny; the trained demo model:
#: bf16 1.9e-5, int8 7.2e-4, docs/benchmarks.md, "Inference").
TOLERANCE = {"bf16": 0.01, "int8": 0.01}


#: One torch thread: CPU results are bit-reproducible at a fixed thread count.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _probs(model: torch.nn.Module, ex: Examples) -> np.ndarray:
    mb = encode_batch(ex, specials=SPECIALS, max_length=64, token_budget=2048)
    with torch.inference_mode():
        return torch.sigmoid(model(mb).float()).numpy()


def _model_and_examples(encoder: str, n: int) -> tuple[torch.nn.Module, Examples]:
    table = h.chunk_table(n, history_size=4, n_features=5, seed=3, empty_fraction=0.3)
    ex = Examples.from_table(table, history_size=4, n_features=5)
    model = build_model(ModelConfig(encoder=encoder, heads="multi"), h.model_chunks(5, 4), seed=0)
    return model.eval(), ex


def _copy(model: torch.nn.Module, encoder: str) -> torch.nn.Module:
    """Another model with ``model``'s weights (``for_inference`` changes the model it is given)."""
    clone = build_model(ModelConfig(encoder=encoder, heads="multi"), h.model_chunks(5, 4), seed=1)
    clone.load_state_dict(model.state_dict())
    return clone.eval()


def test_fp32_leaves_the_model_as_trained():
    model, ex = _model_and_examples("tiny", 24)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = _probs(model, ex)
    same = for_inference(model, "fp32")
    assert same is model and all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert np.array_equal(_probs(model, ex), expected)  # bit for bit: the default path is unchanged


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_tiny_encoder_agrees_with_fp32(precision):
    model, ex = _model_and_examples("tiny", 48)
    expected = _probs(model, ex)
    fast = for_inference(_copy(model, "tiny"), precision)
    got = _probs(fast, ex)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.abs(got - expected).max() < TOLERANCE[precision]
    # only the encoder changes: the heads and the aggregator keep their float32 weights
    assert all(p.dtype == torch.float32 for p in fast.heads.parameters())
    assert all(p.dtype == torch.float32 for p in fast.aggregator.parameters())


def test_bf16_casts_the_whole_encoder():
    model, ex = _model_and_examples("tiny", 8)
    fast = for_inference(model, "bf16")
    assert {p.dtype for p in fast.encoder.parameters()} == {torch.bfloat16}  # embeddings and layer norms too
    assert all(p.dtype == torch.float32 for n, p in fast.named_parameters() if not n.startswith("encoder."))
    assert _probs(fast, ex).dtype == np.float32


def test_minilm_bf16_agrees_with_fp32():
    model, ex = _model_and_examples("minilm", 16)
    expected = _probs(model, ex)
    got = _probs(for_inference(_copy(model, "minilm"), "bf16"), ex)
    assert np.abs(got - expected).max() < TOLERANCE["bf16"]


def test_for_inference_rejects_unknown_precisions_and_int8_off_cpu():
    model, _ = _model_and_examples("tiny", 2)
    with pytest.raises(ValueError, match="evaluate.precision must be one of fp32, bf16, int8"):
        for_inference(model, "fp16")
    with pytest.raises(ValueError, match="CPU only"):
        for_inference(model, "int8", "cuda")


def test_config_validates_precision(tmp_path):
    assert h.make_config(str(tmp_path)).evaluate.precision == "fp32"
    assert h.make_config(str(tmp_path), {"evaluate.precision": "bf16"}).evaluate.precision == "bf16"
    with pytest.raises(ConfigError, match="evaluate.precision"):
        h.make_config(str(tmp_path), {"evaluate.precision": "fp16"})
    assert h.make_config(str(tmp_path), {"evaluate.precision": "int8"}).evaluate.precision == "int8"
    with pytest.raises(ConfigError, match="not xla"):
        h.make_config(str(tmp_path), {"evaluate.precision": "bf16", "evaluate.backend": "xla"})
    with pytest.raises(ConfigError, match="cpu only, not cuda"):
        h.make_config(str(tmp_path), {"evaluate.precision": "int8", "evaluate.backend": "cuda"})


@pytest.fixture
def stages(monkeypatch):
    """The pipeline = the test chunks stage + the real train and evaluate stages."""
    import microparade.engine.registry as st

    keep = [s for s in st.STAGES if s.name in ("train", "evaluate")]
    monkeypatch.setattr(st, "STAGES", (h.chunks_spec(), *keep))


def _predictions(run: Path, split: str) -> np.ndarray:
    t = pq.read_table(run / "evaluate" / "predictions" / f"{split}.parquet")
    return np.stack([t.column(f"{c}_raw").to_numpy() for c in TARGETS], 1)


def test_evaluate_stage_precisions_agree_with_fp32(tmp_path, stages):
    run = tmp_path / "run"
    h.publish_chunks(str(run), {"train": [30], "valid": [25], "test": [12]}, history_size=4, n_features=5)
    base = {**h.TRAIN, "train.max_steps": 3, "evaluate.calibration": "none"}
    run_pipeline(h.make_config(str(run), base), only=None)
    fp32 = {s: _predictions(run, s) for s in ("valid", "test")}
    for precision in ("bf16", "int8"):
        run_pipeline(h.make_config(str(run), {**base, "evaluate.precision": precision}), only="evaluate")
        for split, expected in fp32.items():
            got = _predictions(run, split)
            assert got.shape == expected.shape and np.abs(got - expected).max() < TOLERANCE[precision]
