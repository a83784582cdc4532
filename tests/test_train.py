"""train and evaluate stages, checkpoints and preemption, backends (CPU; CUDA where present)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

import tests.helpers.train as h
from microparade.compute.backends import BackendError, dist_env, first_host
from microparade.compute.factory import make_backend
from microparade.engine import run_pipeline
from microparade.metrics import compute_metrics
from microparade.model.loader import ChunkLoader, LoaderState
from microparade.recsys_format import TARGETS
from tests.helpers.cli import run_cli

TRAIN = h.TRAIN
SPLITS = {"train": [40, 33, 25], "valid": [30], "test": [12]}


@pytest.fixture
def stages(monkeypatch):
    """The pipeline = the test chunks stage + the real train and evaluate stages."""
    import microparade.engine.registry as st

    keep = [s for s in st.STAGES if s.name in ("train", "evaluate")]
    monkeypatch.setattr(st, "STAGES", (h.chunks_spec(), *keep))


def _publish(run_dir: Path, splits=SPLITS, **kw) -> dict:
    return h.publish_chunks(str(run_dir), splits, history_size=4, n_features=5, **kw)


def _run(run_dir: Path, overrides: dict, only: str = "train", force: bool = False) -> None:
    cfg = h.make_config(str(run_dir), {**TRAIN, **overrides})
    run_pipeline(cfg, only=only, force=force)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()]


def _state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "train" / "model.pt", weights_only=True)["state_dict"]


def _without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("examples_per_s", "seconds")} for r in records]


def _validations(run_dir: Path) -> list[dict]:
    lines = (run_dir / "train" / "validation.jsonl").read_text().splitlines()
    return _without_timing([json.loads(line) for line in lines])


# ----------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------
def test_train_outputs_and_determinism(tmp_path, stages):
    run = tmp_path / "run"
    _publish(run)
    _run(run, {"train.epochs": 2})
    manifest = json.loads((run / "train" / "_MANIFEST.json").read_text())
    paths = {f["path"] for f in manifest["files"]}
    assert {"model.pt", "metrics.jsonl"} <= paths and any(p.startswith("tb/events.out.tfevents") for p in paths)
    extra = manifest["extra"]
    # 98 rows per epoch, batch 8: 13 steps per epoch (the last of 2 rows), 2 epochs
    assert extra["steps"] == 26 and extra["examples"] == 196
    assert extra["backend"] == "cpu" and extra["world_size"] == 1
    assert 0.85 < extra["data_efficiency"] <= 1.0
    records = _metrics(run)
    assert [r["step"] for r in records] == list(range(2, 27, 2))
    assert records[-1]["examples"] == 196 and records[-1]["epoch"] == 1
    assert set(records[0]) == {
        "step",
        "epoch",
        "examples",
        "loss",
        "loss_like",
        "loss_retweet",
        "loss_reply",
        "loss_quote",
        "lr",
        "lr_head",
        "examples_per_s",
        "data_efficiency",
    }
    for r in records:
        assert r["loss"] == pytest.approx(np.mean([r[f"loss_{t}"] for t in TARGETS]))
    # warm-up: lr of step s is lr * s / 3 for s <= 3 (record at step 2 = the lr used in step 2)
    assert records[0]["lr"] == pytest.approx(0.001 * 2 / 3) and records[1]["lr"] == pytest.approx(0.001)
    # prior-initialised heads: the first steps' loss is the labels' entropy, not log 2 = 0.693
    rates = np.array([0.4, 0.1, 0.03, 0.01])
    entropy = float(np.mean(-rates * np.log(rates) - (1 - rates) * np.log(1 - rates)))
    assert abs(records[0]["loss"] - entropy) < 0.1 and records[0]["lr_head"] == pytest.approx(0.001 * 2 / 3)
    assert extra["final_loss"] == records[-1]["loss"]
    # the model file rebuilds the network
    bundle = torch.load(run / "train" / "model.pt", weights_only=True)
    assert bundle["history_size"] == 4 and bundle["feature_names"] == [f"f{i}" for i in range(5)]
    # the same config again: bit-identical weights and losses
    first = (run / "train" / "model.pt").read_bytes()
    _run(run, {"train.epochs": 2}, force=True)
    assert (run / "train" / "model.pt").read_bytes() == first
    assert _without_timing(_metrics(run)) == _without_timing(records)


def test_naive_encoding_trains(tmp_path, stages):
    run = tmp_path / "run"
    _publish(run, {"train": [24]})
    _run(run, {"train.max_steps": 2, "train.encoding": "efficient"})
    eff = json.loads((run / "train" / "_MANIFEST.json").read_text())["extra"]
    _run(run, {"train.max_steps": 2, "train.encoding": "naive"})
    naive = json.loads((run / "train" / "_MANIFEST.json").read_text())["extra"]
    assert naive["encoding"] == "naive" and naive["steps"] == 2
    # 30% of 4 history slots valid: the naive way encodes 5 full-length slots per example
    assert naive["data_efficiency"] < 0.3 < 0.85 < eff["data_efficiency"]
    assert abs(naive["final_loss"] - eff["final_loss"]) < 0.1


def test_checkpoints_keep_two_and_ignore_other_fingerprints(tmp_path, stages, caplog):
    run = tmp_path / "run"
    _publish(run)
    keep = {"runner.keep_work": True, "train.checkpoint_every": 2, "train.max_steps": 7}
    _run(run, keep)
    ckpt_dir = run / "train" / "_work" / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["ckpt-000000004.pt", "ckpt-000000006.pt"]
    ckpt = torch.load(ckpt_dir / "ckpt-000000006.pt", weights_only=True)
    assert ckpt["step"] == 6 and ckpt["loader_state"]["epoch"] == 0 and len(ckpt["records"]) == 3
    reference = _state(run)
    # Same fingerprint: a forced rerun resumes at step 6 and ends with the same weights.
    caplog.set_level("INFO", logger="microparade")
    _run(run, keep, force=True)
    assert "resumed from checkpoint ckpt-000000006.pt" in caplog.text
    assert all(torch.equal(v, _state(run)[k]) for k, v in reference.items())
    # Another config (lr): the checkpoints are not used.
    caplog.clear()
    _run(run, {**keep, "train.lr": 0.002})
    assert "ignoring checkpoint ckpt-000000006.pt: made for another fingerprint" in caplog.text
    assert "resumed from" not in caplog.text
    assert [r["step"] for r in _metrics(run)] == [2, 4, 6, 7]


def _write_yaml(path: Path, run_dir: Path, overrides: dict) -> Path:
    data: dict = {"run_dir": str(run_dir)}
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    path.write_text(yaml.safe_dump(data))
    return path


def test_sigusr2_checkpoint_and_exact_resume(tmp_path, stages):
    """Preempt a CLI run with SIGUSR2 mid-epoch, rerun it: same weights and metrics as no preemption."""
    # with model selection on: the validations and the best model survive the preemption too
    settings = {**TRAIN, "train.epochs": 2, "runner.keep_work": True, "train.eval_every": 3, "train.eval_rows": 20}
    ref, run = tmp_path / "ref", tmp_path / "run"
    _publish(ref)
    _publish(run)
    t0 = time.time()
    cfg_path = _write_yaml(tmp_path / "cfg.yaml", run, settings)
    proc = subprocess.Popen(
        h.cli_command(str(cfg_path), "--only", "train"),
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=h.subprocess_env(),
    )
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "step 4/26" in line:
            proc.send_signal(signal.SIGUSR2)
            break
    _, err = proc.communicate(timeout=300)
    log = "".join(lines) + err
    assert proc.returncode == 124, log
    ckpts = sorted((run / "train" / "_work" / "checkpoints").iterdir())
    assert len(ckpts) == 1
    ckpt = torch.load(ckpts[0], weights_only=True)
    stopped_at = ckpt["step"]
    assert 4 <= stopped_at < 26 and ckpt["loader_state"]["offset"] > 0  # mid-chunk, mid-epoch
    assert not (run / "train" / "_MANIFEST.json").exists()
    assert (run / "train" / "_INCOMPLETE.json").exists()
    t_interrupted = time.time() - t0

    done = subprocess.run(
        h.cli_command(str(cfg_path), "--only", "train"),
        capture_output=True,
        text=True,
        env=h.subprocess_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"resumed from checkpoint ckpt-{stopped_at:09d}.pt" in done.stderr

    _run(ref, settings)
    got, want = _state(run), _state(ref)
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert _without_timing(_metrics(run)) == _without_timing(_metrics(ref))
    m_run = json.loads((run / "train" / "_MANIFEST.json").read_text())["extra"]
    m_ref = json.loads((ref / "train" / "_MANIFEST.json").read_text())["extra"]
    assert m_run["examples"] == m_ref["examples"] == 196 and m_run["steps"] == 26
    for name in ("model.pt", "model_last.pt"):
        assert (run / "train" / name).read_bytes() == (ref / "train" / name).read_bytes(), name
    assert _validations(run) == _validations(ref) and [v["step"] for v in _validations(ref)] == [*range(3, 25, 3), 26]
    assert m_run["selection"] == m_ref["selection"] and m_run["selection"]["validations"] == 9

    # The loader position saved at preemption splits the epoch exactly: the examples trained before
    # it plus those read after it are the uninterrupted sequence, nothing skipped or repeated.
    state = LoaderState.from_dict(ckpt["loader_state"])
    with ChunkLoader.from_run_dir(str(run), "train", batch_size=8, seed=5) as lo:
        full = [int(r) for b in lo.epoch(state.epoch) for r in b.examples.row_id]
        before = []
        for b in lo.epoch(state.epoch):
            before.extend(int(r) for r in b.examples.row_id)
            if b.state == state:
                break
        after = [int(r) for b in lo.epoch(state.epoch, state) for r in b.examples.row_id]
    assert len(before) == stopped_at * 8
    assert before + after == full and sorted(full) == list(range(98))
    print(f"interrupted run {t_interrupted:.1f}s, stopped at step {stopped_at}")


def test_stop_flag_catches_sigusr2_and_sigterm():
    from microparade.stages.train.stage import StopFlag

    before = signal.getsignal(signal.SIGTERM)
    for sig in (signal.SIGUSR2, signal.SIGTERM):
        flag = StopFlag()
        assert flag.install() and not flag
        os.kill(os.getpid(), sig)
        time.sleep(0.05)
        assert flag and flag.signal == sig.name
        flag.restore()
    assert signal.getsignal(signal.SIGTERM) is before


def test_train_with_minilm(tmp_path, stages):
    run = tmp_path / "run"
    _publish(run, {"train": [16]})
    _run(run, {"model.encoder": "minilm", "train.max_steps": 2, "train.batch_size": 4, "train.lr": 1e-4})
    extra = json.loads((run / "train" / "_MANIFEST.json").read_text())["extra"]
    assert extra["steps"] == 2 and extra["parameters"] > 22_000_000
    bundle = torch.load(run / "train" / "model.pt", weights_only=True)
    assert bundle["encoder_config"]["hidden_size"] == 384
    from safetensors.torch import load_file

    from microparade.assets import minilm_path

    disk = load_file(str(minilm_path() / "model.safetensors"))
    trained = bundle["state_dict"]["encoder.encoder.layer.0.attention.self.query.weight"]
    original = disk["encoder.layer.0.attention.self.query.weight"]
    assert not torch.equal(trained, original)  # fine-tuned end to end
    assert (trained - original).abs().max() < 0.01
    assert np.isfinite(_metrics(run)[-1]["loss"])


# ----------------------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------------------
def test_evaluate_predictions_and_metrics(tmp_path, stages):
    run = tmp_path / "run"
    _publish(run, {"train": [30], "valid": [25, 20], "test": [12]})
    # calibration (tests/test_calibration.py) off: every row scored, the final probabilities are the raw ones
    no_cal = {"train.max_steps": 3, "evaluate.calibration": "none"}
    _run(run, {**no_cal, "evaluate.splits": ["train", "valid", "test"]}, only=None)
    ev = run / "evaluate"
    manifest = json.loads((ev / "_MANIFEST.json").read_text())
    metrics = json.loads((ev / "metrics.json").read_text())
    assert set(metrics) == {"train", "valid"}  # test is unlabelled
    assert {k: manifest["extra"][k] for k in metrics} == metrics and manifest["extra"]["model"] == "best"
    for split, n in (("train", 30), ("valid", 45), ("test", 12)):
        t = pq.read_table(ev / "predictions" / f"{split}.parquet")
        raw = [f"{c}_raw" for c in TARGETS]
        assert t.column_names == ["row_id", "tweet_id", "b_user_id", *TARGETS, *raw, "calibration_holdout"]
        assert t.select(TARGETS).rename_columns(raw) == t.select(raw) and not any(t["calibration_holdout"].to_pylist())
        rows = t.column("row_id").to_pylist()
        assert rows == sorted(rows) and len(rows) == n
        probs = np.stack([t.column(c).to_numpy() for c in TARGETS], 1)
        assert ((probs > 0) & (probs < 1)).all()
        if split == "test":
            continue
        chunks = pq.read_table(sorted((run / "chunks" / split).glob("*.parquet"))).sort_by("row_id")
        assert chunks.column("row_id").to_pylist() == rows
        assert chunks.column("tweet_id").to_pylist() == t.column("tweet_id").to_pylist()
        labels = np.stack([chunks.column(c).to_numpy() for c in TARGETS], 1)
        expected = compute_metrics(labels, probs.astype(np.float64), chunks.column("a_follower_count").to_numpy())
        assert metrics[split] == json.loads(json.dumps(expected))
        assert metrics[split]["rows"] == n
    # an absent split is skipped, not an error
    _run(run, {**no_cal, "evaluate.splits": ["valid"]}, only="evaluate")
    files = json.loads((ev / "_MANIFEST.json").read_text())["files"]
    assert sorted(f["path"] for f in files) == ["calibration.json", "metrics.json", "predictions/valid.parquet"]
    assert set(json.loads((ev / "metrics.json").read_text())) == {"valid"}


# ----------------------------------------------------------------------------------------------
# backends
# ----------------------------------------------------------------------------------------------
def test_dist_env_from_torchrun_and_slurm():
    assert dist_env({}).world_size == 1
    e = dist_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "1234"})
    assert (e.rank, e.world_size, e.local_rank, e.master_addr, e.master_port, e.source) == (
        3,
        8,
        1,
        "n1",
        1234,
        "torchrun",
    )
    slurm = {
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "8",
        "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_STEP_ID": "0",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_NODELIST": "gpu[07-08,11]",
        "SLURM_JOB_ID": "123456",
    }
    e = dist_env(slurm)
    assert (e.rank, e.world_size, e.local_rank, e.master_addr, e.master_port, e.source) == (
        5,
        8,
        1,
        "gpu07",
        20000 + 123456 % 20000,
        "slurm",
    )
    # the batch script of a multi-task job is one process, not rank 0 of N
    batch = {k: v for k, v in slurm.items() if k not in ("SLURM_STEP_ID", "SLURM_STEP_NUM_TASKS")}
    batch["SLURM_PROCID"] = "0"
    assert dist_env(batch).world_size == 1
    assert first_host("node1") == "node1" and first_host("a[1-3],b2") == "a1" and first_host("x-y[003,5]") == "x-y003"


def test_backend_errors_and_cpu(tmp_path):
    # The default environment has no torch-xla: the error says how to get it.
    with pytest.raises(BackendError, match=r"needs torch-xla.*bash env/install.sh tpu"):
        make_backend("xla")
    # ... and `run` says so before running any stage.
    proc = run_cli("run", "configs/demo.yaml", "train.backend=xla", f"run_dir={tmp_path / 'x'}", check=False)
    assert proc.returncode != 0 and "train.backend=xla needs torch-xla" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "x" / "generate").exists()
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="no CUDA device"):
            make_backend("cuda")
    b = make_backend("cpu", environ={}).setup()
    assert b.is_main and not b.distributed and b.all_reduce_values([1.5, 2.0]) == [1.5, 2.0]
    model = torch.nn.Linear(2, 2)
    assert b.wrap(model) is model


def test_ddp_on_cpu_with_torchrun(tmp_path, stages):
    """Two processes (gloo): rank shards, gradient all-reduce, only rank 0 publishes."""
    run = tmp_path / "run"
    _publish(run, {"train": [40, 24]})
    cfg_path = _write_yaml(tmp_path / "cfg.yaml", run, {**TRAIN, "train.max_steps": 3})
    script = tmp_path / "entry.py"
    script.write_text(
        "import sys\nfrom tests.helpers.train import patch_stages\npatch_stages()\n"
        "from microparade.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    env = h.subprocess_env()
    proc = subprocess.run(
        [
            h.PYTHON,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(29500 + os.getpid() % 1000),
            str(script),
            "run",
            str(cfg_path),
            "--only",
            "train",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    extra = json.loads((run / "train" / "_MANIFEST.json").read_text())["extra"]
    assert extra["world_size"] == 2 and extra["steps"] == 3 and extra["examples"] == 2 * 3 * 8
    assert "rank 0 of 2 via torchrun" in proc.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_train_on_cuda(tmp_path, stages):
    run = tmp_path / "run"
    _publish(run, {"train": [40]})
    _run(run, {"train.backend": "cuda", "train.max_steps": 4, "train.checkpoint_every": 2, "evaluate.backend": "cuda"})
    extra = json.loads((run / "train" / "_MANIFEST.json").read_text())["extra"]
    assert extra["backend"] == "cuda" and extra["steps"] == 4
    assert np.isfinite(_metrics(run)[-1]["loss"])


# ----------------------------------------------------------------------------------------------
# on the real pipeline: generate -> ingest -> text -> features -> chunks -> train -> evaluate
# ----------------------------------------------------------------------------------------------
def _pipeline_config(run_dir: Path, rows: int, **sections) -> dict:
    base = {
        "run_dir": str(run_dir),
        "data": {"generate": {"rows": rows, "seed": 11, "topics": 4}},
        "cluster": {"n_workers": 2, "threads_per_worker": 1, "memory_limit": "3GiB", "dashboard": False},
        "history": {"size": 4},
        "text": {"max_length": 32},
        "chunks": {"target_mb": 1},
        "model": {"encoder": "tiny"},
        "train": {"batch_size": 32, "lr": 0.002, "log_every": 10, "num_threads": 1, "max_steps": 6},
        "evaluate": {"splits": ["valid", "test"]},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return base


def test_end_to_end_on_generated_data(tmp_path):
    from microparade.config import build_config

    run = tmp_path / "run"
    t0 = time.time()
    outcome = run_pipeline(build_config(_pipeline_config(run, 3000)), until="evaluate")
    assert outcome == {s: "ran" for s in ("generate", "ingest", "text", "features", "chunks", "train", "evaluate")}
    chunks = json.loads((run / "chunks" / "_MANIFEST.json").read_text())
    train = json.loads((run / "train" / "_MANIFEST.json").read_text())["extra"]
    assert train["steps"] == 6 and train["examples"] == 6 * 32
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    assert set(metrics) == {"valid"}
    valid_rows = chunks["extra"]["splits"]["valid"]["rows"]
    fit_rows = json.loads((run / "evaluate" / "calibration.json").read_text())["fit_rows"]
    assert 0 < fit_rows < valid_rows and metrics["valid"]["rows"] == valid_rows - fit_rows  # platt by default
    assert 0 < metrics["valid"]["ap"]["avg"] < 1
    for split in ("valid", "test"):
        t = pq.read_table(run / "evaluate" / "predictions" / f"{split}.parquet")
        assert t.num_rows == chunks["extra"]["splits"][split]["rows"]
    print(f"end to end on 3000 generated rows: {time.time() - t0:.1f}s")


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a 24,000-row pipeline and two trainings of 3 epochs
def test_text_model_beats_features_only(tmp_path):
    """The planted text signal is learnt: MicroParade (tiny random encoder, trained from scratch)
    beats its features-only ablation on the validation split's avg AP after the same short training
    on the same chunks.

    Data: 24,000 generated rows with 8 topics (30 % validation), history of 4 with the
    engagement-type prefix, tweets cut to 14 content tokens; 3 epochs at lr 5e-4 (2e-3 is too high
    for the post-LN encoder: it stops learning even single-token cues). The topic signal is a
    candidate-vs-history interaction the encoder must learn from scratch, so the margin is small:
    margins seen with this setting were +0.0032 and +0.0051 (seeds 12, 14), and +0.0084 / -0.0016 /
    +0.0124 (seeds 11, 12, 13) with dropout 0.1. Training is deterministic (one thread, fixed
    seeds), so the outcome is fixed for this code and torch build; MICROPARADE_LEARN_SEED tries
    another dataset and training seed.
    """
    from microparade.config import build_config

    seed = int(os.environ.get("MICROPARADE_LEARN_SEED", "14"))
    run = tmp_path / "run"
    cfg = _pipeline_config(
        run,
        24000,
        data={"generate": {"rows": 24000, "seed": seed, "topics": 8, "valid_fraction": 0.3, "test_fraction": 0.02}},
        history={"size": 4, "prefix": True},
        text={"max_length": 16},
        train={"batch_size": 64, "lr": 5e-4, "epochs": 3, "max_steps": 0, "log_every": 100, "seed": seed},
        evaluate={"splits": ["valid"]},
    )
    t0 = time.time()
    run_pipeline(build_config(cfg), until="chunks")
    t_chunks = time.time() - t0
    scores, seconds = {}, {}
    for use_text in (False, True):
        t = time.time()
        cfg["model"] = {**cfg["model"], "use_text": use_text}
        run_pipeline(build_config(cfg), until="evaluate")
        seconds[use_text] = time.time() - t
        scores[use_text] = json.loads((run / "evaluate" / "metrics.json").read_text())["valid"]["ap"]
    margin = scores[True]["avg"] - scores[False]["avg"]
    print(
        f"seed {seed}: avg AP text {scores[True]['avg']:.4f} vs features-only {scores[False]['avg']:.4f} "
        f"(margin {margin:+.4f}); per target text {scores[True]} features-only {scores[False]}; "
        f"pipeline to chunks {t_chunks:.0f}s, text model {seconds[True]:.0f}s, features-only {seconds[False]:.0f}s"
    )
    assert margin > 0


def test_device_feeder_raises_source_errors_and_stops_early():
    """The XLA backend's feeder (compute/xla.py) hands on every item in order, re-raises an error of
    the source in the consumer (torch-xla's MpDeviceLoader would end the epoch silently), and
    close() stops its thread when the consumer stops early."""
    from microparade.compute.xla import DeviceFeeder

    assert list(DeviceFeeder(iter(range(7)), lambda x: x * 10)) == [0, 10, 20, 30, 40, 50, 60]

    def broken():
        yield 1
        raise ValueError("chunk 3 is corrupted")

    feeder = DeviceFeeder(broken(), lambda x: x)
    assert next(feeder) == 1
    with pytest.raises(ValueError, match="chunk 3 is corrupted"):
        next(feeder)

    pulled = []

    def endless():
        i = 0
        while True:
            pulled.append(i)
            yield i
            i += 1

    feeder = DeviceFeeder(endless(), lambda x: x, depth=2)
    assert [next(feeder) for _ in range(3)] == [0, 1, 2]
    feeder.close()
    assert not feeder._thread.is_alive() and len(pulled) <= 3 + 2 + 1


def test_stage_python_sends_xla_stages_to_the_xla_environment(tmp_path):
    """Slurm jobs of stages with backend xla run .venv-tpu's Python (or $MICROPARADE_XLA_PYTHON);
    `microparade config --python-for` is what slurm/common.sh asks."""
    from microparade.config import build_config
    from microparade.slurm.resources import stage_python
    from tests.helpers.paths import ROOT

    cfg = build_config({"run_dir": str(tmp_path)}, ["train.backend=xla"])
    assert stage_python(cfg, "train") == str(ROOT / ".venv-tpu" / "bin" / "python")
    assert stage_python(cfg, "evaluate") is None and stage_python(cfg, "chunks") is None
    out = run_cli("config", "configs/demo.yaml", "train.backend=xla", "--python-for", "train").stdout
    assert out.strip() == str(ROOT / ".venv-tpu" / "bin" / "python")
    out = run_cli(
        "config",
        "configs/demo.yaml",
        "evaluate.backend=xla",
        "--python-for",
        "evaluate",
        env={"MICROPARADE_XLA_PYTHON": "/opt/xla/bin/python"},
    ).stdout
    assert out.strip() == "/opt/xla/bin/python"
    assert run_cli("config", "configs/demo.yaml", "--python-for", "train").stdout.strip() == ""


def test_parameter_groups_and_schedule():
    """Encoder at train.lr, layers from scratch at train.head_lr; no decay on biases, norms, embeddings."""
    from microparade.config import ModelConfig, TrainConfig
    from microparade.model import build_model
    from microparade.stages.train.optim import build_optimizer, lr_factor

    model = build_model(ModelConfig(encoder="tiny"), h.model_chunks(5, 4), seed=0)
    tc = TrainConfig(lr=2e-5, head_lr=3e-3, weight_decay=0.1, warmup_steps=2, schedule="cosine")
    opt, sched = build_optimizer(model, tc, total_steps=10)
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"encoder", "encoder_no_decay", "head", "head_no_decay"}
    names = {id(p): n for n, p in model.named_parameters()}
    members = {k: {names[id(p)] for p in g["params"]} for k, g in groups.items()}
    assert all(n.startswith("encoder.") for n in members["encoder"] | members["encoder_no_decay"])
    assert not any(n.startswith("encoder.") for n in members["head"] | members["head_no_decay"])
    assert sum(len(m) for m in members.values()) == len(names)  # every parameter exactly once
    assert "encoder.embeddings.word_embeddings.weight" in members["encoder_no_decay"]
    assert {"hour_embedding.weight", "empty_slot"} <= members["head_no_decay"]
    assert all(n.endswith("weight") for n in members["head"] | members["encoder"])
    assert not any("norm" in n.lower() for n in members["head"] | members["encoder"])
    assert groups["encoder"]["weight_decay"] == groups["head"]["weight_decay"] == 0.1
    assert groups["encoder_no_decay"]["weight_decay"] == groups["head_no_decay"]["weight_decay"] == 0.0
    seen = []
    for _ in range(10):
        seen.append({k: g["lr"] for k, g in zip(groups, opt.param_groups)})
        opt.step()
        sched.step()
    assert seen[0]["encoder"] == pytest.approx(1e-5) and seen[0]["head"] == pytest.approx(1.5e-3)  # warm-up
    assert seen[2]["encoder"] == pytest.approx(2e-5) and seen[2]["head"] == pytest.approx(3e-3)  # peak
    assert seen[9]["head"] == pytest.approx(3e-3 * 0.5 * (1 + np.cos(np.pi * 7 / 8)))  # cosine decay
    assert [lr_factor(s, 0, 4, "linear") for s in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert [lr_factor(s, 0, 4, "constant") for s in range(4)] == [1.0] * 4


def test_freeze_encoder_keeps_the_top_layers_trainable():
    from microparade.config import ModelConfig, TrainConfig
    from microparade.model import build_model
    from microparade.stages.train.optim import build_optimizer, freeze_encoder

    model = build_model(ModelConfig(encoder="tiny"), h.model_chunks(5, 4), seed=0)
    n_layers = model.encoder.config.num_hidden_layers
    assert freeze_encoder(model, 1) > 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("encoder.embeddings.") for n in trainable)
    assert {n.split(".")[3] for n in trainable if n.startswith("encoder.encoder.layer.")} == {str(n_layers - 1)}
    opt, _ = build_optimizer(model, TrainConfig(), total_steps=1)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(trainable)
    assert freeze_encoder(build_model(ModelConfig(encoder="tiny"), h.model_chunks(5, 4)), -1) == 0
