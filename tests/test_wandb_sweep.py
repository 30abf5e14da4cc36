"""`bench-wandb-sweep`: the W&B grid spec of a study runs exactly the cells of its Hydra multirun, and a cell run the
way `wandb agent` runs it lands in the same results file and logs into the agent's run (WANDB_RUN_ID) only."""
import json
import os

import pytest
import yaml

from bench.keys import cell_key
from bench.preflight import compose_cells, expand
from bench.wandb_sweep import main, sweep_spec
from test_run import ROOT, rows

STUDIES = sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))


def agent_command(spec: dict, params: dict) -> list[str]:
    """The argv `wandb agent` runs for one run of `spec` with `params` (W&B's own macro expansion)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    macros = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    macros.update(env=[], program=[spec["program"]])  # ${env} is /usr/bin/env: run bench directly
    out = []
    for c in create_sweep_command(list(spec["command"])):
        out += macros[c[2:-1]] if c.startswith("${") and c.endswith("}") else [c]
    return out


def grid_params(spec: dict) -> list[dict]:
    import itertools

    keys = list(spec["parameters"])
    return [dict(zip(keys, combo)) for combo in itertools.product(*(spec["parameters"][k]["values"] for k in keys))]


@pytest.mark.parametrize("study", STUDIES)
def test_spec_grid_is_the_multirun_grid(study):
    spec = sweep_spec(study)
    assert spec["method"] == "grid" and "${args_no_hyphens}" in spec["command"]
    agent_cells = [[a for a in agent_command(spec, p)[2:] if not a.startswith("hydra.sweep.subdir=")]
                   for p in grid_params(spec)]
    hydra_cells = expand(["-m", f"sweep={study}"])
    keys = lambda cells: [cell_key(cfg) for cfg, _ in compose_cells(cells)]  # noqa: E731
    agent_keys, hydra_keys = keys(agent_cells), keys(hydra_cells)
    # one agent run per multirun cell: the same cells, each as often (a grid point whose setting has no effect there,
    # e.g. a LoRA rank on the full fine-tune, is the same cell as its twin and resumes as finished)
    assert sorted(agent_keys) == sorted(hydra_keys)


def test_cli_writes_the_spec_and_rejects_a_bad_study(tmp_path, capsys):
    out = tmp_path / "spec.yaml"
    main(["sweeps/ddim_eta.yaml", "out_dir=/shared/runs", "--out", str(out)])
    spec = yaml.safe_load(out.read_text())
    assert spec["parameters"]["sampler.eta"]["values"] == [0.0, 0.5, 1.0]
    assert spec["command"][:5] == ["${env}", "bench", "-m", "sweep=ddim_eta", "out_dir=/shared/runs"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["sweeps/nope.yaml"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("bench: error: sweep='sweeps/nope.yaml'")


def test_create_registers_the_spec(tmp_path, monkeypatch, capsys):
    import wandb

    seen = {}
    monkeypatch.setattr(wandb, "sweep", lambda spec, project, entity: seen.update(spec=spec, project=project) or "abc")
    main(["sweeps/guidance.yaml", "--out", str(tmp_path / "s.yaml"), "--create", "--project", "p1"])
    assert seen["project"] == "p1" and seen["spec"] == yaml.safe_load((tmp_path / "s.yaml").read_text())
    assert "wandb agent p1/abc" in capsys.readouterr().out


def test_agent_cells_land_in_the_results_file_each_in_its_own_wandb_run(tmp_path):
    """Two agent runs (as `wandb agent` starts them: WANDB_RUN_ID, WANDB_SWEEP_ID, params file), offline."""
    from wandb.sdk.lib import config_util

    import cli_runner

    shrink = ["experiment=smoke", "sampling.num_samples=32", "tracker=wandb", f"out_dir={tmp_path / 'runs'}"]
    spec = sweep_spec("guidance", shrink + ["sampling.num_inference_steps=2"])
    cells = grid_params(spec)[:2]  # guidance 0 and 1
    for n, params in enumerate(cells):
        run_id = f"agentrun{n}"
        param_path = tmp_path / "wandb" / "sweep-sw1" / f"config-{run_id}.yaml"
        param_path.parent.mkdir(parents=True, exist_ok=True)
        config_util.save_config_file_from_dict(str(param_path), {k: {"value": v} for k, v in params.items()})
        env = {**os.environ, "BENCH_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
               "WANDB_RUN_ID": run_id, "WANDB_SWEEP_ID": "sw1", "WANDB_SWEEP_PARAM_PATH": str(param_path)}
        argv = agent_command(spec, params)
        assert argv[0] == "bench"
        p = cli_runner.run(argv[1:], cwd=ROOT, env=env, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
    root = tmp_path / "runs" / "guidance"
    got = rows(root / "results.jsonl")
    assert [r["guidance_scale"] for r in got] == [0.0, 1.0] and all(r["status"] == "ok" for r in got)
    hydra_cells = expand(["-m", "sweep=guidance", *shrink, "sampling.num_inference_steps=2"])
    hydra_keys = {cell_key(cfg) for cfg, _ in compose_cells(hydra_cells)}
    assert {r["cell_key"] for r in got} <= hydra_keys  # the same cells a Hydra multirun of the study runs
    runs = {d.name.rsplit("-", 1)[1]: d for d in (root / "wandb").glob("offline-run-*")}
    # one run per cell, the agent's; no ablation run per agent call; and the model's training run (the first call
    # trains, the second finds the model cached), which must not have taken the agent's run id
    cell_runs = {"agentrun0", "agentrun1"}
    assert cell_runs <= set(runs) and len(set(runs) - cell_runs) == 1
    (train_run,) = [runs[k] for k in set(runs) - cell_runs]
    assert not list(train_run.glob("files/media/table/cell_*.table.json"))
    for n, r in enumerate(got):
        (table,) = runs[f"agentrun{n}"].glob("files/media/table/cell_*.table.json")
        t = json.loads(table.read_text())
        logged = dict(zip(t["columns"], t["data"][0]))
        assert logged["cell_key"] == r["cell_key"] and logged["fid"] == pytest.approx(r["fid"])
    assert sorted(p.name for p in (root / ".jobs").iterdir()) == ["wandb-agentrun0", "wandb-agentrun1"]
