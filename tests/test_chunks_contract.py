"""The chunks manifest contract: a published manifest parses into typed fields once; a bad one fails
with a message naming the key and the manifest's URL."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import pytest

import tests.helpers.train as h
from microparade.engine.manifest import Manifest, read_manifest
from microparade.errors import StageError
from microparade.recsys_format import TARGETS
from microparade.stages.chunks.contract import (
    RATE_EPS,
    ChunksManifest,
    ChunksManifestError,
    SpecialTokens,
    chunks_extra,
    upstream_extra,
)
from microparade.storage import Store

SPLITS = {"train": [20, 15, 9], "valid": [12], "test": [7]}


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> tuple[str, dict[str, Any]]:
    """A run directory with chunks published by the real runner, and the manifest's content."""
    run_dir = str(tmp_path_factory.mktemp("contract") / "run")
    data = h.publish_chunks(run_dir, SPLITS, history_size=3, n_features=4, max_length=32)
    return run_dir, data


def test_parses_a_published_manifest(published):
    run_dir, data = published
    m = ChunksManifest.read(run_dir)
    assert m == ChunksManifest.from_manifest(read_manifest(Store(run_dir), "chunks"))
    assert m.url == f"{run_dir}/chunks"
    assert m.feature_names == ("f0", "f1", "f2", "f3") and m.n_features == 4
    assert m.normalization.mean == tuple(data["extra"]["normalization"]["mean"])
    assert len(m.normalization.std) == 4 and min(m.normalization.std) > 0
    assert m.history_size == 3 and m.max_length == 32 and m.encoder_tokenizer == "minilm"
    assert m.special_tokens == h.SPECIAL_TOKENS and m.specials == SpecialTokens(cls=101, sep=102, pad=0)
    assert list(m.splits) == sorted(SPLITS)  # the manifest is written with sorted keys
    for split, sizes in SPLITS.items():
        info = m.splits[split]
        assert info.rows == sum(sizes) and info.n_chunks == len(sizes)
        assert [f.path for f in m.files(split)] == [f"{split}/chunk-{i:05d}.parquet" for i in range(len(sizes))]
        assert [f.rows for f in info.files] == sizes
    by_path = {f["path"]: f for f in data["files"]}
    for f in m.files("train"):
        assert f.url == f"{run_dir}/chunks/{f.path}"
        assert (f.rows, f.bytes, f.sha256) == tuple(by_path[f.path][k] for k in ("rows", "bytes", "sha256"))
    assert m.files("absent") == ()
    assert m.splits["test"].label_rates is None


def test_positive_rates_and_log_odds(published):
    run_dir, data = published
    m = ChunksManifest.read(run_dir)
    rates = m.positive_rates("train")
    assert rates == data["extra"]["splits"]["train"]["label_rates"] and list(rates) == list(TARGETS)
    odds = m.positive_log_odds()
    assert rates["like"] > 0 and odds[0] == pytest.approx(math.log(rates["like"] / (1 - rates["like"])))
    with pytest.raises(ChunksManifestError, match="split 'test' of .* has no labels"):
        m.positive_rates("test")
    with pytest.raises(ChunksManifestError, match="has no split 'absent'"):
        m.positive_rates("absent")
    data = copy.deepcopy(data)
    data["extra"]["splits"]["train"]["label_rates"].update(quote=0.0, reply=1.0)
    clipped = ChunksManifest.from_dict(data, m.url).positive_log_odds("train")
    assert clipped[TARGETS.index("quote")] == pytest.approx(math.log(RATE_EPS / (1 - RATE_EPS)))
    assert clipped[TARGETS.index("reply")] == pytest.approx(-math.log(RATE_EPS / (1 - RATE_EPS)))


def _del(*path: str) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        for key in path[:-1]:
            d = d[key]
        del d[path[-1]]

    return edit


def _set(value: Any, *path: str | int) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        for key in path[:-1]:
            d = d[key]
        d[path[-1]] = value

    return edit


BAD = {
    "no feature_names": (_del("extra", "feature_names"), "extra.feature_names is missing"),
    "empty feature_names": (_set([], "extra", "feature_names"), "extra.feature_names must be a non-empty list"),
    "duplicate feature": (_set(["f0", "f0", "f2", "f3"], "extra", "feature_names"), "names a column twice"),
    "short mean": (
        _set([0.0] * 3, "extra", "normalization", "mean"),
        "extra.normalization.mean has 3 values for 4 features",
    ),
    "zero std": (
        _set([1.0, 0.0, 1.0, 1.0], "extra", "normalization", "std"),
        "extra.normalization.std must hold positive finite numbers",
    ),
    "no normalization": (_del("extra", "normalization"), "extra.normalization is missing"),
    "no history_size": (_del("extra", "history_size"), "extra.history_size is missing"),
    "float history_size": (_set(3.5, "extra", "history_size"), r"extra.history_size must be an integer >= 1, got 3.5"),
    "no encoder_tokenizer": (_del("extra", "encoder_tokenizer"), "extra.encoder_tokenizer is missing"),
    "no pad token": (_del("extra", "special_tokens", "pad"), "extra.special_tokens.pad is missing"),
    "bad link ids": (_set(["x"], "extra", "special_tokens", "link"), "extra.special_tokens.link must be a token id"),
    "other schema": (_set(2, "extra", "schema_version"), "extra.schema_version is 2; this code reads version 1"),
    "no splits": (_del("extra", "splits"), "extra.splits is missing"),
    "split not listed": (_del("extra", "splits", "valid"), "extra.splits lacks split 'valid'"),
    "chunk count": (
        _set(2, "extra", "splits", "train", "chunks"),
        "extra.splits.train.chunks is 2 but files lists 3 chunk",
    ),
    "row count": (_set(43, "extra", "splits", "train", "rows"), "extra.splits.train.rows is 43 but the chunks"),
    "rate above 1": (
        _set(1.5, "extra", "splits", "valid", "label_rates", "like"),
        "extra.splits.valid.label_rates must hold a rate in",
    ),
    "rate missing": (
        _del("extra", "splits", "valid", "label_rates", "quote"),
        "extra.splits.valid.label_rates.quote is missing",
    ),
    "no sha256": (_del("files", 0, "sha256"), r"files\[0\] \(test/chunk-00000.parquet\).sha256 is missing"),
    "negative rows": (_set(-1, "files", 0, "rows"), r"files\[0\] \(test/chunk-00000.parquet\).rows must be an integer"),
    "no files": (_del("files"), "manifest.files is missing"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_manifest_names_key_and_url(published, case):
    run_dir, data = published
    edit, message = BAD[case]
    data = copy.deepcopy(data)
    data["files"].sort(key=lambda f: f["path"])
    edit(data)
    url = f"{run_dir}/chunks"
    with pytest.raises(ChunksManifestError, match=message) as err:
        ChunksManifest.from_dict(data, url)
    assert f"the chunks manifest {url}/_MANIFEST.json: " in str(err.value)
    assert str(err.value).endswith("rerun the chunks stage")
    assert isinstance(err.value, StageError)


def test_no_published_manifest(tmp_path):
    with pytest.raises(ChunksManifestError, match=f"no published chunks manifest at {tmp_path}/chunks/_MANIFEST.json"):
        ChunksManifest.read(str(tmp_path))


def _manifest(store: Store, stage: str, extra: dict[str, Any]) -> Manifest:
    return Manifest(stage, {"files": [], "extra": extra}, b"{}", store)


def test_writer_copies_upstream_keys_and_checks_its_extra(published, tmp_path):
    run_dir, data = published
    store = Store(str(tmp_path))
    text = _manifest(
        store,
        "text",
        {
            "history": {"size": 3, "window": "past"},
            "max_length": 32,
            "encoder_tokenizer": "minilm",
            "special_tokens": dict(h.SPECIAL_TOKENS),
        },
    )
    norm = data["extra"]["normalization"]
    features = _manifest(store, "features", {"feature_names": ["f0", "f1", "f2", "f3"], "normalization": norm})
    upstream = upstream_extra(text, features)
    assert upstream == {k: data["extra"][k] for k in upstream}  # history.size became history_size
    file_meta = {f["path"]: {k: f[k] for k in ("rows", "bytes", "sha256", "split")} for f in data["files"]}
    extra = chunks_extra(upstream, data["extra"]["splits"], file_meta, f"{run_dir}/chunks")
    assert extra == data["extra"]

    del file_meta["train/chunk-00002.parquet"]
    with pytest.raises(ChunksManifestError, match="extra.splits.train.chunks is 3 but files lists 2 chunk"):
        chunks_extra(upstream, data["extra"]["splits"], file_meta, f"{run_dir}/chunks")
    del text.extra["history"]["size"]
    with pytest.raises(
        ChunksManifestError,
        match=f"the text manifest {tmp_path}/text/_MANIFEST.json: extra.history.size is missing; rerun the text stage",
    ):
        upstream_extra(text, features)
    features.extra["normalization"] = {"mean": norm["mean"], "std": norm["std"][:2]}
    with pytest.raises(
        ChunksManifestError,
        match=f"the features manifest {tmp_path}/features/_MANIFEST.json: "
        "extra.normalization.std has 2 values for 4 features",
    ):
        upstream_extra(_manifest(store, "text", data["extra"] | {"history": {"size": 3}}), features)
