"""Hydra launchers shipped in conf/hydra/launcher: submitit_local runs a real 2-cell sweep through the `bench` CLI
(one subprocess per cell, all appending to one results.jsonl), re-launching skips finished cells, and the preflight
composes every cell with the launcher override (a misspelt launcher key fails before any work)."""
import pytest

from bench.preflight import CompositionError, check, compose_cfg
from test_run import bench, rows

TOY = ["experiment=toy2d", "train.max_steps=100", "sampling.num_samples=256", "sampling.batch_size=256",
       "sampling.grid_size=64", "metric.toy_num_reference=500", "sampling.num_inference_steps=5", "tracker=none",
       "trainer.enable_progress_bar=false"]


def test_submitit_local_runs_a_two_cell_sweep_and_skips_finished_cells(tmp_path):
    args = [*TOY, "-m", "sampler=ddim,ddpm", "hydra/launcher=submitit_local"]
    bench(tmp_path, *args)
    root = tmp_path / "runs" / "toy2d"
    r1 = rows(root / "results.jsonl")
    assert len(r1) == 2 and {r["sampler"] for r in r1} == {"ddim", "ddpm"}
    assert all(r["status"] == "ok" and r["nfe"] == 5 and 0 < r["swd"] < 1 for r in r1)
    assert list((root / ".submitit").iterdir()), "the cells did not go through submitit"
    bench(tmp_path, *args)  # re-launch: both jobs find their cell in results.jsonl
    assert rows(root / "results.jsonl") == r1
    jobs = sorted((root / ".jobs").iterdir())  # named after the cell: <num>-<sampler>-<steps>steps-<cell key>
    assert [j.name for j in jobs] == [f"{n}-{r['sampler']}-5steps-{r['cell_key']}" for n, r in
                                      enumerate(sorted(r1, key=lambda r: r["sampler"] != "ddim"))]
    logs = [(j / "run.log").read_text() for j in jobs]
    assert all("skipped (resume)" in log for log in logs), logs


@pytest.mark.parametrize("launcher", ["submitit_slurm", "submitit_local"])
def test_preflight_composes_every_cell_with_the_launcher(launcher):
    assert check(["-m", "sweep=ddim_eta", f"hydra/launcher={launcher}"]) == 9
    h = compose_cfg(["-m", f"hydra/launcher={launcher}"][1:], return_hydra_config=True).hydra.launcher
    assert h._target_.endswith("SlurmLauncher" if launcher == "submitit_slurm" else "LocalLauncher")


def test_slurm_keys_are_overrides_and_typos_fail_in_one_line():
    h = compose_cfg(["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_task=8",
                     "hydra.launcher.timeout_min=600"], return_hydra_config=True).hydra.launcher
    assert (h.partition, h.gpus_per_task, h.timeout_min, h.cpus_per_task, h.mem_gb) == ("gpu", 8, 600, 8, 64)
    with pytest.raises(CompositionError) as e:
        check(["-m", "sampler=ddim,euler", "hydra/launcher=submitit_slurm", "hydra.launcher.partiton=gpu"])
    assert "hydra.launcher.partiton: no such key in SlurmQueueConf" in str(e.value) and "partition" in str(e.value)
    assert "\n" not in str(e.value)
