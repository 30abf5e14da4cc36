"""A non-editable install (a wheel) carries the Hydra configs and runs: `bench --cfg job` from outside the repo."""
import glob
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _yaml_files(d: Path) -> set[str]:
    """Every YAML under d, following links (conf/sweep is a link to sweeps/)."""
    return {os.path.relpath(p, d) for p in glob.glob(str(d / "**" / "*.yaml"), recursive=True)}


def test_wheel_ships_every_config_and_runs_outside_the_repo(tmp_path):
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)], check=True,
                   capture_output=True, timeout=300)
    (whl,) = wheels.glob("bench-*.whl")
    subprocess.run(pip + ["install", "--no-deps", "--target", str(target), str(whl)], check=True, capture_output=True,
                   timeout=300)
    shipped, expected = (_yaml_files(target / "bench" / "conf"), _yaml_files(ROOT / "conf"))
    assert expected and shipped == expected  # conf/sweep -> sweeps/ included through the link
    shipped = target / "bench" / "evaluators" / "shipped"  # the frozen evaluators and reference statistics
    assert (shipped / "digits_cnn-ff8f887cde6bdaaf" / "model.safetensors").is_file()
    assert (shipped / "tiny_clip-4f3496fabba231ed" / "open_clip_model.safetensors").is_file()
    assert len(list((shipped / "refstats").glob("*.npz"))) == 1
    env = dict(os.environ, PYTHONPATH=str(target))  # the wheel's bench, not the editable checkout
    run = tmp_path / "elsewhere"
    run.mkdir()
    where = subprocess.run([sys.executable, "-c",
                            "import bench, bench.preflight as p; print(bench.__file__, p.CONF_DIR)"],
                           cwd=run, env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr
    assert where.stdout.split() == [str(target / "bench" / "__init__.py"), str(target / "bench" / "conf")]
    job = subprocess.run([sys.executable, "-m", "bench.run", "sweep=scheduler_steps", "--cfg", "job"], cwd=run,
                         env=env, capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stderr
    assert "name: scheduler_steps" in job.stdout and "sampler:" in job.stdout
    assert not (run / "outputs").exists() and not (run / "runs").exists()  # --cfg job writes nothing
