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
