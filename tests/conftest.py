import logging
import os
import sys
from pathlib import Path

import pytest

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
# pytest-xdist runs the suite in one worker per core (pyproject.toml): one intra-op thread per worker, and in the
# processes the tests start, so n workers run n threads on n cores (tiny models stall when oversubscribed)
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


# The modules that take longest (they train models and start `bench` processes), slowest first: xdist's loadscope
# hands a whole module to one worker, and longest-first keeps the two workers' last modules short, so neither idles
# long at the end (xdist's own order, most tests first, left a slow few-test module for last). Sorted by each
# module's total in a one-worker `--durations=0` run; a module missing here runs after these (pyproject.toml turns
# xdist's own reordering off). Re-sort when a module grows.
SLOW_FIRST = ("test_perf.py", "test_distributed.py", "test_reliability.py", "test_bad_inputs.py",
              "test_committed_reports.py", "test_models.py", "test_sweeps.py", "test_run.py", "test_validators.py",
              "test_preflight.py", "test_launchers.py", "test_keys.py", "test_wandb_sweep.py", "test_training.py",
              "test_schedulers.py", "test_distill.py", "test_adapt_control.py", "test_packaging.py",
              "test_evaluators.py", "test_classifier_guidance.py", "test_compile.py", "test_data_standard.py",
              "test_pipelines.py", "test_adapt_lora.py", "test_env.py", "test_task_invert.py", "test_cost.py",
              "test_task_edit.py", "test_determinism.py", "test_torch_model.py", "test_metrics_sfid.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a module's tests stay in file order


@pytest.fixture
def bench_cache(tmp_path, monkeypatch):
    """A private model/reference cache: sets BENCH_CACHE (what cfg.cache_dir resolves to) to a tmp dir."""
    path = tmp_path / "cache"
    path.mkdir()
    monkeypatch.setenv("BENCH_CACHE", str(path))
    return path


@pytest.fixture
def compose_cfg():
    """compose_cfg(*overrides) -> the real conf/bench.yaml with experiment=smoke (+ overrides), shrunk for tests."""
    from hydra import compose, initialize_config_dir

    from bench.schema import register

    register()

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose("bench", overrides=["experiment=smoke", "tracker=none", *overrides])

    return _compose


@pytest.fixture
def pipeline_run(compose_cfg):
    """pipeline_run(path, *overrides, num_samples=3, batch_size=2) -> a cell of the tiny ``model=pipeline`` at
    ``path`` on the shapes prompts (2 steps, cpu), loaded and sampled as the harness does: a namespace with ``cfg``,
    ``info``, ``subject``, ``train_info``, its ``batches``, their images ``x`` and the row's adapter ``columns``."""
    from types import SimpleNamespace

    import torch

    from bench.metrics.cost import CostMeter
    from bench.sampling.subject import sampling_call
    from bench.subjects import load_subject
    from bench.validate import validate

    def _run(path, *overrides: str, num_samples: int = 3, batch_size: int = 2):
        cfg = compose_cfg("data=shapes", "model=pipeline", f"model.path={path}", "prompts=shapes", "device=cpu",
                          "sampling.num_inference_steps=2", f"sampling.num_samples={num_samples}",
                          f"sampling.batch_size={batch_size}", *overrides)
        info = validate(cfg)
        subject, train_info = load_subject(cfg, info, "cpu")
        call = sampling_call(cfg.sampling, cfg.sampler, cfg.cost, cfg.metric, cfg.model, info, "cpu")
        batches = list(subject.batches(call, CostMeter("cpu")))
        columns = {k: v for g in subject.columns().groups for k, v in g.columns().items()}
        return SimpleNamespace(cfg=cfg, info=info, subject=subject, train_info=train_info, batches=batches,
                               x=torch.cat([b.x for b in batches]), columns=columns)

    return _run


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids oversubscription stalls (~7x here)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True, scope="session")
def _quiet_console():
    """The tests see the console a user sees: third-party noise off (bench.env.quiet_console)."""
    from bench.env import quiet_console

    quiet_console()


@pytest.fixture(autouse=True, scope="session")
def _default_cache_outside_the_repo(tmp_path_factory):
    """Tests that do not pick a cache never write the user's default `.cache/bench`: one tmp cache for the whole run,
    shared by the xdist workers (the model store locks each key, so a model is trained once however many ask)."""
    if "BENCH_CACHE" not in os.environ:
        base = tmp_path_factory.getbasetemp()
        path = (base.parent if WORKER else base) / "bench-cache"  # a worker's basetemp is <run>/popen-gwN
        path.mkdir(exist_ok=True)
        os.environ["BENCH_CACHE"] = str(path)
    yield


@pytest.fixture(autouse=True)
def _no_log_handler_on_a_closed_stream():
    """A library logger (Lightning's) that got its StreamHandler while pytest captured output keeps writing to that
    capture stream after pytest closed it: '--- Logging error ---' tracebacks in a later test's stderr, depending on
    test order. Point such handlers at the current stderr (assigned, not setStream: that flushes the closed one)."""
    for name in list(logging.Logger.manager.loggerDict):
        for h in getattr(logging.getLogger(name), "handlers", []):
            if isinstance(h, logging.StreamHandler) and getattr(h.stream, "closed", False):
                h.stream = sys.stderr
    yield
