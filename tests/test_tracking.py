import json
from pathlib import Path
from types import SimpleNamespace as NS

import pytest

from bench.tracking import Tracker, wandb_mode


def _cfg(**kw):
    return NS(**{"name": "wandb", "project": "bench", "entity": None, "mode": None, "dir": None, **kw})


def test_mode_resolution(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert wandb_mode(None) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode(None) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode(None) == "disabled"
    assert wandb_mode("offline") == "offline"


def test_offline_run_holds_logged_row_and_table(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    tr = Tracker(_cfg(), tmp_path)
    row = {"cell_key": "k1", "name": "sweep", "sampler": "ddim", "num_inference_steps": 10,
           "guidance_scale": 1.0, "fid": 3.25, "status": "ok"}
    run_dir = tr.log_cell({"sampler": {"name": "ddim"}}, row)
    tables = list((tmp_path / "wandb").glob("offline-run-*/files/media/table/cell_*.table.json"))
    assert run_dir and len(tables) == 1
    t = json.loads(tables[0].read_text())
    assert dict(zip(t["columns"], t["data"][0]))["fid"] == 3.25
    tr.log_table("sweep", [row, {**row, "cell_key": "k2", "fid": 4.5}])
    (abl,) = (tmp_path / "wandb").glob("offline-run-*/files/media/table/ablation_*.table.json")
    t = json.loads(abl.read_text())
    assert [r[t["columns"].index("fid")] for r in t["data"]] == [3.25, 4.5]


def test_tracker_failure_is_a_warning_not_a_lost_cell(tmp_path, monkeypatch):
    import wandb

    def boom(*a, **k):
        raise RuntimeError("W&B is down")

    monkeypatch.setattr(wandb, "init", boom)
    tr = Tracker(_cfg(), tmp_path)
    with pytest.warns(UserWarning, match="W&B is down"):
        assert tr.log_cell({}, {"cell_key": "k", "status": "ok"}) is None


def test_settings_go_to_config_and_scores_to_summary(tmp_path, monkeypatch):
    """Hyperparameters (eta, batch_size, seed) must not become one-point history charts: config vs summary.
    (Offline runs keep config/summary only in the binary .wandb log, so the run is recorded by a stand-in.)"""
    import wandb

    seen = {}

    class Run:
        dir = str(tmp_path)

        def __init__(self, **kw):
            seen["init"], self.summary = kw, {}
            seen["summary"], seen["logged"] = self.summary, []

        def log(self, payload):
            seen["logged"].append(payload)

        def finish(self):
            pass

    monkeypatch.setattr(wandb, "init", lambda **kw: Run(**kw))
    row = {"cell_key": "k1", "name": "sweep", "sampler": "ddim", "eta": 0.5, "batch_size": 64, "seed": 3,
           "num_inference_steps": 10, "guidance_scale": 1.0, "fid": 3.25, "fid_std": 0.5, "nfe": 10.0,
           "latency_p50": 0.01, "feature_net_hash": "abc", "status": "ok"}
    assert Tracker(_cfg(), tmp_path).log_cell({"sampler": {"name": "ddim"}}, row) == str(tmp_path)
    summary = seen["summary"]
    assert summary["fid"] == 3.25 and summary["fid_std"] == 0.5 and summary["nfe"] == 10.0
    assert not {"eta", "batch_size", "seed", "num_inference_steps", "guidance_scale"} & set(summary)
    config = seen["init"]["config"]
    assert config["sampler"] == {"name": "ddim"} and config["row"]["eta"] == 0.5
    assert config["row"]["feature_net_hash"] == "abc" and "fid" not in config["row"]
    assert seen["init"]["settings"].silent
    (payload,) = seen["logged"]
    assert set(payload) == {"cell"}  # no scalar history: only the row table (and the grid when there is one)


def _run_ids(root):
    """{run id: [cell_key of each cell table in it]} of the offline runs under root/wandb."""
    out = {}
    for d in (root / "wandb").glob("offline-run-*"):
        tables = [json.loads(p.read_text()) for p in d.glob("files/media/table/cell_*.table.json")]
        out[d.name.rsplit("-", 1)[1]] = [dict(zip(t["columns"], t["data"][0]))["cell_key"] for t in tables]
    return out


def test_agent_run_id_goes_to_exactly_one_cell(tmp_path, monkeypatch):
    """`wandb agent` sets WANDB_RUN_ID for the cell it launched: that cell's run has the id, any other cell of the
    process gets its own run, and no ablation run reuses (or is added under) the agent's run."""
    import bench.tracking as tracking

    monkeypatch.setattr(tracking, "_agent_run", None)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_RUN_ID", "agentrun01")
    tr = Tracker(_cfg(), tmp_path)
    row = {"cell_key": "k1", "name": "sweep", "sampler": "ddim", "num_inference_steps": 10, "guidance_scale": 1.0,
           "fid": 3.25, "status": "ok"}
    tr.log_cell({"sampler": {"name": "ddim"}}, row)
    assert "WANDB_RUN_ID" not in __import__("os").environ  # claimed: child processes do not inherit it
    tr.log_cell({"sampler": {"name": "euler"}}, {**row, "cell_key": "k2", "sampler": "euler"})
    assert tr.log_table("sweep", [row]) is None
    runs = _run_ids(tmp_path)
    assert runs["agentrun01"] == ["k1"]
    assert len(runs) == 2 and sorted(v for r in runs.values() for v in r) == ["k1", "k2"]


def test_without_agent_every_cell_and_the_table_get_fresh_runs(tmp_path, monkeypatch):
    import bench.tracking as tracking

    monkeypatch.setattr(tracking, "_agent_run", None)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    tr = Tracker(_cfg(), tmp_path)
    row = {"cell_key": "k1", "name": "sweep", "status": "ok"}
    tr.log_cell({}, row)
    tr.log_cell({}, {**row, "cell_key": "k2"})
    assert tr.log_table("sweep", [row]) is not None
    assert len(_run_ids(tmp_path)) == 3


def test_training_curves_go_to_a_wandb_train_run(tmp_path, monkeypatch):
    """tracker=wandb: Lightning's WandbLogger receives the loss every trainer.log_every_n_steps, in a run of job type
    "train" named after the model key, in the study's group; tracker=none trains without a logger."""
    import sys

    from lightning.pytorch.loggers import WandbLogger

    sys.path.insert(0, str(Path(__file__).parent))
    from bench.keys import model_key
    from bench.training import load_or_train
    from reliability_helpers import compose

    monkeypatch.setenv("WANDB_MODE", "offline")
    logged, inits = [], []
    real_log, real_init = WandbLogger.log_metrics, WandbLogger.__init__

    def spy_log(self, metrics, step=None):
        logged.append((step, dict(metrics)))
        return real_log(self, metrics, step)

    def spy_init(self, *a, **k):
        inits.append(k)
        return real_init(self, *a, **k)

    monkeypatch.setattr(WandbLogger, "log_metrics", spy_log)
    monkeypatch.setattr(WandbLogger, "__init__", spy_init)
    base = ("experiment=toy2d", "device=cpu", "train.max_steps=20", "train.batch_size=64", "data.num_train=256",
            "trainer.log_every_n_steps=5", "trainer.enable_progress_bar=false", f"out_dir={tmp_path}")
    cfg = compose(*base, "tracker=wandb", cache=tmp_path / "cache")
    load_or_train(cfg)
    (init,) = inits
    assert init["job_type"] == "train" and init["group"] == "toy2d" and init["name"] == f"train-{model_key(cfg)}"
    assert [s for s, m in logged if "loss" in m] == [4, 9, 14, 19]
    assert list((tmp_path / "toy2d" / "wandb").glob("offline-run-*/run-*.wandb"))
    logged.clear()
    load_or_train(compose(*base, "tracker=none", "train.seed=1", cache=tmp_path / "cache"))
    assert len(inits) == 1 and not logged


def test_measured_columns_come_from_the_metric_spec():
    """Every metric of bench.metric_spec and its error columns go to the W&B summary; a model's size and every
    setting or provenance column to its config."""
    from bench.tracking import split_row

    row = {"fid": 3.2, "clip_score": 90.1, "clip_score_std": 4.0, "latency_p50_ci95": 0.001, "nfe_classifier": 20.0,
           "train_seconds": 12.5, "num_params": 1000, "seed": 3, "eta": 0.5, "fid_std_over": "seeds",
           "feature_net_hash": "abc", "n_ref": 1437}
    settings, measured = split_row(row)
    assert set(measured) == {"fid", "clip_score", "clip_score_std", "latency_p50_ci95", "nfe_classifier",
                             "train_seconds"}
    assert set(settings) == {"num_params", "seed", "eta", "fid_std_over", "feature_net_hash", "n_ref"}
