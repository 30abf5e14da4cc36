"""Crash safety, concurrency, tracker faults and safe loading, through real processes.

kill -9: a driver process (this file run as a script) imports bench once, then forks each sweep / training as a
child that runs the real entry point (`bench.run.main()` with the CLI arguments, or `load_or_train`) and SIGKILLs it
at seeded random times. Forking after the imports keeps ~10 s of Python start-up per kill point out of the test;
everything after the fork (Hydra, training, sampling, scoring, writing rows) is the real code path in its own process.
"""
import json
import os
import random
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import cli_runner
from reliability_helpers import CACHE, METRICS, ROOT, TOY, TOY_SWEEP, compose, trained

# ------------------------------------------------------------------------------------------------ driver (child side)

def _launch(target, log: Path) -> int:
    """fork; the child sends stdout/stderr to `log`, runs target() and exits with its status."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        target()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _run_for(pid: int, seconds: float | None) -> str:
    """Let the child run for `seconds` (None: to the end), then SIGKILL it. 'killed' or 'exit <status>'."""
    end = None if seconds is None else time.monotonic() + seconds
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return f"exit {os.waitstatus_to_exitcode(status)}"
        if end is not None and time.monotonic() >= end:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "killed"
        time.sleep(0.01)


def _check_results(path: Path) -> dict:
    """Every line a whole JSON row, one row per cell key; returns {key: row}."""
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    parsed = [json.loads(line) for line in lines]  # a torn row would raise here
    keys = [r["cell_key"] for r in parsed]
    assert len(keys) == len(set(keys)), f"duplicate rows in {path}"
    assert all(r["status"] == "ok" for r in parsed)
    return {r["cell_key"]: r for r in parsed}


def _sweep_driver(spec: dict) -> dict:
    # warm imports: the children inherit them
    import matplotlib.pyplot  # noqa: F401

    import bench.cell
    import bench.metrics.scorer
    import bench.run
    import bench.training  # noqa: F401
    from bench.run import main

    work = Path(spec["work"])

    def sweep(out):
        def target():
            sys.argv = ["bench", "-m", *spec["args"], f"out_dir={out}"]
            main()
        return target

    rng = random.Random(spec["seed"])
    # the uninterrupted reference run: its rows and its duration (the range the kill times are drawn from)
    t0, wall0 = time.monotonic(), time.time()
    status = _run_for(_launch(sweep(work / "ref"), work / "ref.log"), None)
    full = time.monotonic() - t0
    assert status == "exit 0", (work / "ref.log").read_text()[-3000:]
    ref = _check_results(work / "ref" / spec["name"] / "results.jsonl")
    # start-up (imports are warm; composing + validating every cell) vs time per cell, from the log's timestamps
    import datetime as dt

    stamps = [dt.datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()
              for line in (work / "ref.log").read_text().splitlines() if line.startswith("[20")]
    startup = stamps[0] - wall0
    per_cell = (stamps[-1] - stamps[0]) / len(ref)
    out = work / "killed"
    results = out / spec["name"] / "results.jsonl"
    kills, runs, rounds = [], [], 0
    while len(kills) < spec["kills"]:
        before = _check_results(results)
        if len(before) == len(ref):  # the sweep finished between kills: start a fresh round
            rounds += 1
            out = work / f"killed{rounds}"
            results = out / spec["name"] / "results.jsonl"
            before = {}
        # kill anywhere from late start-up to the end of this run's remaining cells
        delay = rng.uniform(0.9 * startup, startup + (len(ref) - len(before) + 1) * per_cell)
        status = _run_for(_launch(sweep(out), work / f"run{len(runs)}.log"), delay)
        after = _check_results(results)
        for k, r in before.items():  # a finished cell is never lost or rewritten
            assert after.get(k) == r, f"cell {k} lost or changed by a killed re-run"
        runs.append({"delay_s": round(delay, 3), "status": status, "rows_before": len(before),
                     "rows_after": len(after)})
        if status == "killed":
            kills.append(runs[-1])
        assert status in ("killed", "exit 0"), (work / f"run{len(runs) - 1}.log").read_text()[-3000:]
    # the re-run to completion computes only the unfinished cells
    before = _check_results(results)
    log = work / "final.log"
    assert _run_for(_launch(sweep(out), log), None) == "exit 0", log.read_text()[-3000:]
    final = _check_results(results)
    text = log.read_text()
    computed = text.count("][bench][INFO] - cell ") - text.count("skipped (resume)")
    return {"full_s": round(full, 2), "startup_s": round(startup, 2), "per_cell_s": round(per_cell, 2),
            "kills": kills, "runs": runs, "rounds": rounds + 1,
            "skipped_on_rerun": text.count("skipped (resume)"), "computed_on_rerun": computed,
            "rows_before_rerun": len(before), "ref": ref, "final": final}


def _train_driver(spec: dict) -> dict:
    import torch

    from bench.training import load_or_train, partial_dir
    from bench.utils import file_sha256

    work = Path(spec["work"])
    cfgs = {name: compose(*spec["overrides"], cache=work / name) for name in ("ref", "killed")}

    def train(name):
        return lambda: load_or_train(cfgs[name])

    t0 = time.monotonic()
    assert _run_for(_launch(train("ref"), work / "ref.log"), None) == "exit 0", (work / "ref.log").read_text()[-3000:]
    full = time.monotonic() - t0
    rng = random.Random(spec["seed"])
    ckpt = partial_dir(cfgs["killed"]) / "last.ckpt"
    kills = []
    for n in range(spec["kills"]):
        # each run: wait until it has written a checkpoint of its own, then kill it a random time later
        t_launch = time.time()
        pid = _launch(train("killed"), work / f"run{n}.log")
        while not (ckpt.exists() and ckpt.stat().st_mtime > t_launch) and not os.waitpid(pid, os.WNOHANG)[0]:
            time.sleep(0.005)
        delay = rng.uniform(0.0, 0.1) * full
        status = _run_for(pid, delay) if ckpt.exists() and ckpt.stat().st_mtime > t_launch else "exit early"
        step = torch.load(ckpt, weights_only=True)["global_step"] if ckpt.exists() else None
        kills.append({"delay_after_ckpt_s": round(delay, 3), "status": status, "ckpt_step": step})
    log = work / "final.log"
    assert _run_for(_launch(train("killed"), log), None) == "exit 0", log.read_text()[-3000:]
    (ref_dir,) = [d for d in (work / "ref" / "models").glob("[!.]*") if d.is_dir()]
    (got_dir,) = [d for d in (work / "killed" / "models").glob("[!.]*") if d.is_dir()]
    resumed = "Restoring states from the checkpoint" in log.read_text() or any(k["ckpt_step"] for k in kills)
    return {"full_s": round(full, 2), "kills": kills, "resumed": resumed,
            "ref_sha": file_sha256(ref_dir / "model.safetensors"),
            "got_sha": file_sha256(got_dir / "model.safetensors"),
            "ref_meta": json.loads((ref_dir / "meta.json").read_text()),
            "got_meta": json.loads((got_dir / "meta.json").read_text())}


def _driver(kind: str, spec: dict, tmp_path: Path, timeout: int = 600) -> dict:
    """Run a driver in a process of its own, forked from the CLI runner's forkserver (fork-safe: it has started no
    threads; its imports are warm); returns the driver's JSON report."""
    spec = {**spec, "work": str(tmp_path)}
    env = {**os.environ, "BENCH_CACHE": str(CACHE), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(ROOT)])}
    p = cli_runner.run_script(__file__, [kind, json.dumps(spec)], cwd=ROOT, env=env, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------------------- tests

@pytest.fixture(scope="module")
def toy_model():
    return trained(TOY)


def test_kill9_sweep_loses_no_cell(toy_model, tmp_path):
    r = _driver("sweep", {"args": [*TOY, *TOY_SWEEP], "name": "toy2d", "seed": 7, "kills": 10}, tmp_path)
    kills = r["kills"]
    print(f"\nkill -9 sweep: {len(kills)} kill points over {r['rounds']} round(s), {len(r['runs'])} runs, full run "
          f"{r['full_s']} s (start-up {r['startup_s']} s, {r['per_cell_s']} s/cell); "
          f"kills: {[(k['delay_s'], k['rows_before'], k['rows_after']) for k in kills]}; re-run skipped "
          f"{r['skipped_on_rerun']}, computed {r['computed_on_rerun']}")
    assert len(kills) >= 10
    assert any(k["rows_after"] > k["rows_before"] for k in kills)  # some kills landed mid-sweep, after progress
    # no cell lost, no torn/duplicate row (checked after every kill in the driver), same cells and numbers
    ref, final = r["ref"], r["final"]
    assert final.keys() == ref.keys() and len(ref) == 6
    for k in ref:
        for m in METRICS:
            assert final[k].get(m) == ref[k].get(m), (k, m)
    # the completing re-run skipped exactly the finished cells and computed only the rest
    assert r["skipped_on_rerun"] == r["rows_before_rerun"]
    assert r["computed_on_rerun"] == len(ref) - r["rows_before_rerun"]


def test_kill9_training_resumes_to_the_same_weights(tmp_path):
    overrides = [*TOY, "hydra.mode=RUN", "train.max_steps=300", "train.checkpoint_every=10", "train.batch_size=128"]
    r = _driver("train", {"overrides": overrides, "seed": 3, "kills": 3}, tmp_path)
    print(f"\nkill -9 training: full {r['full_s']} s; kills {r['kills']}")
    assert sum(k["status"] == "killed" for k in r["kills"]) >= 3
    assert any(k["ckpt_step"] for k in r["kills"])  # at least one resume from a real checkpoint
    assert r["got_meta"]["train_steps"] == r["ref_meta"]["train_steps"] == 300
    assert r["got_sha"] == r["ref_sha"]  # bit-identical EMA weights
    assert r["got_meta"]["loss_curve"][-1] == r["ref_meta"]["loss_curve"][-1]


def test_two_sweeps_append_to_one_results_file(toy_model, tmp_path):
    """Two real `bench` processes, same out_dir/name, overlapping grids: every row whole, one row per cell."""
    a = ["-m", *TOY, "sampler=ddim,euler", "sampling.num_inference_steps=2,3,4"]
    b = ["-m", *TOY, "sampler=euler,heun", "sampling.num_inference_steps=2,3,4"]
    env = {**os.environ, "BENCH_CACHE": str(CACHE), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    with ThreadPoolExecutor(2) as pool:  # two processes at once
        procs = list(pool.map(lambda args: cli_runner.run([*args, f"out_dir={tmp_path}"], cwd=ROOT, env=env,
                                                          timeout=600), (a, b)))
    assert [p.returncode for p in procs] == [0, 0], [p.stderr[-3000:] for p in procs]
    got = _check_results(tmp_path / "toy2d" / "results.jsonl")
    assert len(got) == 9  # 6 + 6 cells, 3 shared (euler): each once
    assert {(r["sampler"], r["num_inference_steps"]) for r in got.values()} == {
        (s, n) for s in ("ddim", "euler", "heun") for n in (2, 3, 4)}


# ---------------------------------------------------------------------------------------------- tracker faults

def _toy_cell(tmp_path, *overrides):
    from bench import cell

    cfg = compose(*TOY, "hydra.mode=RUN", f"out_dir={tmp_path}", *overrides)
    return cell.run_cell(cfg)


@pytest.mark.usefixtures("one_thread")
def test_tracker_unavailable_or_failing_mid_run_loses_no_cell(toy_model, tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")

    def down(*a, **k):
        raise ConnectionError("W&B unreachable")

    monkeypatch.setattr(wandb, "init", down)  # unavailable at the start of the cell
    with pytest.warns(UserWarning, match="W&B unreachable"):
        r1 = _toy_cell(tmp_path, "tracker=wandb", "sampler=ddim", "sampling.num_inference_steps=2")
    monkeypatch.undo()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    real_init = wandb.init

    def init_then_fail(*a, **k):  # the run starts, then logging crashes mid-run
        run = real_init(*a, **k)
        monkeypatch.setattr(run, "log", lambda *a, **k: (_ for _ in ()).throw(OSError("W&B crashed mid-run")))
        return run

    monkeypatch.setattr(wandb, "init", init_then_fail)
    with pytest.warns(UserWarning, match="W&B crashed mid-run"):
        r2 = _toy_cell(tmp_path, "tracker=wandb", "sampler=ddim", "sampling.num_inference_steps=3")
    monkeypatch.setattr(wandb, "init", real_init)
    r3 = _toy_cell(tmp_path, "tracker=wandb", "sampler=ddim", "sampling.num_inference_steps=4")  # W&B works (offline)
    got = _check_results(tmp_path / "toy2d" / "results.jsonl")
    assert set(got) == {r1["cell_key"], r2["cell_key"], r3["cell_key"]}
    assert all(r["swd"] > 0 for r in got.values())
    # the offline run is on disk for `wandb sync` later
    runs = list((tmp_path / "toy2d" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert runs and all(p.stat().st_size > 0 for p in runs)


# ------------------------------------------------------------------------------------------------- safe loading

def test_no_unsafe_deserialisation_in_the_code_base():
    """Weights only via safetensors or torch.load(weights_only=True); no pickle / np.load(allow_pickle=True). Two
    exceptions: an unpickler whose ``find_class`` allows a fixed list (CIFAR-10's batches are pickles), and
    ``bench.ranks.ByValue``, which hands an object this process built to its own ranks (what multiprocessing pickles
    anyway) and reads no file; both checked below."""
    import re

    bad = []
    for p in (ROOT / "bench").rglob("*.py"):
        text = p.read_text()
        restricted = re.search(r"class \w+\(pickle\.Unpickler\):", text) and "def find_class" in text
        handoff = p == ROOT / "bench" / "ranks.py"
        if handoff:  # in memory only: no file is opened or read there
            assert not re.search(r"\bopen\(|read_bytes|\.load\(|np\.load|torch\.load", text), p
        for n, line in enumerate(text.splitlines(), 1):
            code = line.split("#")[0]
            if restricted and code.strip() == "import pickle":
                continue
            if handoff and code.strip() in ("import pickle", "return pickle.loads(self._bytes)"):
                continue
            if re.search(r"\b(pickle|cloudpickle|dill|joblib)\b\.(load|loads)\b|import (pickle|dill|joblib)", code):
                bad.append(f"{p}:{n}: {line.strip()}")
            if "allow_pickle=True" in code or "weights_only=False" in code and "torch.load" in code:
                bad.append(f"{p}:{n}: {line.strip()}")
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                bad.append(f"{p}: torch.load without weights_only=True: {m.group(0)}")
    assert not bad, "\n".join(bad)


class _Payload:
    """Unpickling this runs code: what a weights-only loader must refuse."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/bench-pickle-pwned",))


def test_pickle_bearing_checkpoints_are_refused(tmp_path):
    import torch

    from bench.training import ModelCacheError
    from bench.training.fit import _check_resumable

    marker = Path("/tmp/bench-pickle-pwned")
    marker.unlink(missing_ok=True)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "global_step": 3, "evil": _Payload()}, ckpt)
    with pytest.raises(ModelCacheError, match=r"last.ckpt: cannot resume training .*Unpickl.*delete it"):
        _check_resumable(ckpt)
    assert not marker.exists()



def test_pickle_bearing_inception_weights_are_refused(tmp_path):
    """Custom Inception weights (metric.inception_sha256 set to their digest) are loaded weights-only too:
    torch-fidelity itself would unpickle them."""
    import torch

    from bench.evaluators import EvaluatorError
    from bench.evaluators.inception import load_inception
    from bench.utils import file_sha256

    marker = Path("/tmp/bench-pickle-pwned")
    marker.unlink(missing_ok=True)
    weights = tmp_path / "inception.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1), "evil": _Payload()}, weights)
    cfg = compose(*TOY, f"metric.inception_weights={weights}", f"metric.inception_sha256={file_sha256(weights)}")
    with pytest.raises(EvaluatorError, match="is not a torch-fidelity Inception-v3 state dict .*Unpickl"):
        load_inception(cfg)
    assert not marker.exists()


def test_pickle_bearing_pretrained_unet_is_refused(tmp_path):
    """model.pretrained=<dir> holding a pickled .bin: diffusers loads it weights-only; the payload never runs."""
    import torch
    from diffusers import UNet2DModel

    from bench.models import load_pretrained_unet
    from bench.schema import ConfigError

    marker = Path("/tmp/bench-pickle-pwned")
    marker.unlink(missing_ok=True)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1)
    unet.save_pretrained(tmp_path, safe_serialization=False)
    (tmp_path / "diffusion_pytorch_model.bin").unlink()
    torch.save({**unet.state_dict(), "evil": _Payload()}, tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(ConfigError, match=r"model.pretrained=.*could not be loaded offline: Unable to load weights"):
        load_pretrained_unet(str(tmp_path))
    assert not marker.exists()


if __name__ == "__main__":  # the driver: python tests/test_reliability.py sweep|train '<json spec>'
    _kind, _spec = sys.argv[1], json.loads(sys.argv[2])
    _report = (_sweep_driver if _kind == "sweep" else _train_driver)(_spec)
    print(json.dumps(_report, default=str))
