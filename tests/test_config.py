"""Config: one typed tree, every problem reported at once, key=value overrides, saved with the run."""

from __future__ import annotations

import pytest
import yaml

from microparade.config import Config, ConfigError, apply_overrides, load_config, parse_override


def test_embedded_defaults_are_a_laptop_run(tmp_path):
    cfg = load_config(None)
    assert cfg.cluster.kind == "local"
    assert cfg.train.backend == "cpu"
    assert cfg.model.encoder == "minilm"
    assert cfg.history.size == 10 and cfg.history.window == "past" and cfg.history.prefix is False
    assert cfg.chunks.target_mb == 180
    assert cfg.features.te_smoothing == 20 and cfg.features.te_folds == 5
    assert cfg.train.lr == 1e-5
    assert cfg.run_dir.startswith("/"), "local run_dir is made absolute"


def test_overrides_are_typed_yaml_scalars():
    assert parse_override("history.size=10") == (["history", "size"], 10)
    assert parse_override("model.use_text=false") == (["model", "use_text"], False)
    assert parse_override("evaluate.splits=[valid]") == (["evaluate", "splits"], ["valid"])
    assert parse_override("run_dir=gs://b/x") == (["run_dir"], "gs://b/x")
    cfg = load_config(None, ["history.size=4", "train.lr=3e-4", "data.generate.rows=5000"])
    assert cfg.history.size == 4 and cfg.train.lr == 3e-4 and cfg.data.generate.rows == 5000


def test_all_problems_in_one_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(
        yaml.safe_dump({"histroy": {"size": 3}, "train": {"lr": -1, "batch_size": "big"}, "cluster": {"kind": "k8s"}})
    )
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "4 problem(s)" in msg
    assert "histroy: unknown key" in msg
    assert "train.lr" in msg and "greater than 0" in msg
    assert "train.batch_size" in msg
    assert "cluster.kind" in msg and "'k8s'" in msg
    assert str(p) in msg


def test_bad_override_forms():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["history.size"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(None, ["history.size=3", "history.size.x=1"])
    with pytest.raises(ConfigError, match="run_dir: Input should be a valid string"):
        load_config(None, ["run_dir.x=1"])
    with pytest.raises(ConfigError, match="history.nope: unknown key"):
        load_config(None, ["history.nope=1"])


def test_generate_and_raw_are_exclusive():
    with pytest.raises(ConfigError, match="either data.generate"):
        load_config(None, ["data.generate.rows=1000", "data.raw.train=/x/*"])


def test_raw_accepts_string_or_list():
    cfg = load_config(None, ["data.raw.train=/a/part-*", "data.raw.valid=[/b/x, /b/y]"])
    assert cfg.data.raw.train == ["/a/part-*"] and cfg.data.raw.valid == ["/b/x", "/b/y"]


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(lst)


def test_yaml_round_trip_is_identical():
    cfg = load_config(None, ["history.size=6", "data.generate.rows=1234"])
    again = Config.model_validate(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


def test_apply_overrides_does_not_mutate_input():
    base = {"history": {"size": 3}}
    out = apply_overrides(base, ["history.size=5"])
    assert base == {"history": {"size": 3}} and out == {"history": {"size": 5}}


def test_cli_reports_config_errors_with_exit_2(cli, tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("history: {size: 0}\n")
    proc = cli("status", p, check=False)
    assert proc.returncode == 2
    assert "history.size" in proc.stderr and "greater than or equal to 1" in proc.stderr
    proc = cli("config", p, "history.size=3", "--get", "history.size")
    assert proc.stdout.strip() == "3"
