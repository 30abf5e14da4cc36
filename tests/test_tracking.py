import json
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
