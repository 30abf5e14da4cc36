"""Cost protocol: two identical cells measured in one process agree on latency, a cell whose model really is slower
does not; `cost.*` settings say how time is measured and never change a cell's key.

Other work on a shared machine only adds time: mostly time spent waiting for a core, which Linux counts per thread
(/proc/thread-self/schedstat, run-queue wait). Each timed batch's wall time less that wait is the time the cell
itself took (its computation and its own sleeps, never the neighbours'), and each cell's latency is compared through
its fastest such batch (per image) over rounds that alternate the cells (a, b, slow, a, b, slow), so what is left of
the neighbours (caches, the hypervisor) would have to hit every batch of one cell and none of the other's."""
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from reliability_helpers import DIGITS, compose, trained

pytestmark = pytest.mark.usefixtures("one_thread")

# the shrunk digits UNet, 2 steps per image, 24 batches of 2: 1 warm-up + 23 timed, re-timed twice (69 batches)
CELL = [*DIGITS, "sampling.num_samples=48", "sampling.batch_size=2", "cost.repeats=3", "cost.num_threads=1",
        "hydra.mode=RUN"]
ROUNDS = 2
TOLERANCE = 1.1  # identical cells: fastest batches within 10 %
SLOWDOWN = 0.3  # the slow cell's model sleeps 30 % of the cell's fastest per-image time in every forward
SCHEDSTAT = Path("/proc/thread-self/schedstat")  # cpu ns, run-queue wait ns, time slices (Linux)


def runqueue_wait() -> float:
    """Seconds this thread has spent runnable but waiting for a core (0 where the OS does not say)."""
    return int(SCHEDSTAT.read_text().split()[1]) / 1e9 if SCHEDSTAT.exists() else 0.0


def _row(root, name):
    from bench import cell

    return cell.run_cell(compose(*CELL, f"out_dir={root}", f"name={name}"))


def agree(a: float, b: float) -> bool:
    return 1 / TOLERANCE <= a / b <= TOLERANCE


def own_per_image(meter) -> np.ndarray:
    """Per-image seconds of a meter's timed batches, less the time each batch waited for a core."""
    t = meter.timings()
    own = np.asarray(meter.own[t["warmup_excluded"]:])
    # the same batches: one each, and the wrapper adds microseconds to most (a page fault or a collection between the
    # meter's clock and the wrapper's can add milliseconds to a few, which only makes those batches look slower)
    assert len(own) == len(t["seconds"]) and np.median(own - t["seconds"]) <= 1e-3
    return own / t["images"]


@pytest.fixture(scope="module")
def timed(tmp_path_factory):
    """{cell: (rows, own per-image seconds of every timed batch of every round)} for a, b (identical) and slow (the
    same cell, its model's forward sleeping), run in alternating rounds."""
    from bench.metrics.cost import CostMeter
    from bench.models import UNetDenoiser

    trained(DIGITS)
    root = tmp_path_factory.mktemp("cost")
    meters, init, batch, forward = [], CostMeter.__init__, CostMeter.batch, UNetDenoiser.forward
    out = {c: ([], []) for c in ("a", "b", "slow")}
    delay = None

    def record(self, *args, **kwargs):  # every meter of a cell: its first pass and its re-timings
        init(self, *args, **kwargs)
        self.own = []
        meters.append(self)

    @contextmanager
    def waited_batch(self, n):  # around the meter's own timing of the batch; every wait counted lies within t0..t1
        t0 = time.perf_counter()
        w0 = runqueue_wait()
        with batch(self, n):
            yield
        w1 = runqueue_wait()
        self.own.append(time.perf_counter() - t0 - (w1 - w0))

    def sleeping(self, *args, **kwargs):
        time.sleep(delay)
        return forward(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CostMeter, "__init__", record)
        mp.setattr(CostMeter, "batch", waited_batch)
        for r in range(ROUNDS):
            for c in out:
                meters.clear()
                with pytest.MonkeyPatch.context() as slow:
                    if c == "slow":
                        slow.setattr(UNetDenoiser, "forward", sleeping)
                    row = _row(root, f"{c}{r}")
                out[c][0].append(row)
                out[c][1].extend(np.concatenate([own_per_image(m) for m in meters]))
                if delay is None:
                    delay = SLOWDOWN * min(out["a"][1])
    return {c: (rows, np.asarray(t)) for c, (rows, t) in out.items()}


def test_identical_cells_agree_on_latency(timed):
    (rows_a, a), (rows_b, b) = timed["a"], timed["b"]
    for r in rows_a + rows_b:  # the same cell: same numbers, the same protocol
        assert r["cell_key"] == rows_a[0]["cell_key"] and r["fid"] == rows_a[0]["fid"]
        assert r["latency_batches"] == 69 and r["latency_warmup_batches"] == 1 and r["num_threads"] == 1
        # latency = NFE x per-call time + the scheduler's own work (never less than the model's)
        assert r["nfe"] * r["per_call_s"] <= r["latency_p50"] * 1.05
        assert r["latency_iqr"] >= 0 and r["score_s"] > 0 and r["sample_s"] > 0
        assert r["latency_p50"] >= min(a.min(), b.min())
    assert len(a) == len(b) == 69 * ROUNDS
    print(f"identical cells: fastest batch {a.min() * 1e3:.3f} vs {b.min() * 1e3:.3f} ms/img (ratio "
          f"{a.min() / b.min():.3f}); latency_p50 by round {[round(r['latency_p50'] * 1e3, 3) for r in rows_a]} vs "
          f"{[round(r['latency_p50'] * 1e3, 3) for r in rows_b]} ms/img")
    assert agree(a.min(), b.min())


def test_a_cell_whose_model_sleeps_does_not_agree(timed):
    """The check above can fail: the same cell with a model 30 % slower (a sleep in its forward) is told apart."""
    (rows_a, a), (rows_slow, slow) = timed["a"], timed["slow"]
    assert rows_slow[0]["cell_key"] == rows_a[0]["cell_key"] and rows_slow[0]["fid"] == rows_a[0]["fid"]
    print(f"slow cell: fastest batch {slow.min() * 1e3:.3f} vs {a.min() * 1e3:.3f} ms/img "
          f"(ratio {slow.min() / a.min():.3f})")
    assert not agree(a.min(), slow.min()) and slow.min() > a.min()


def test_cost_settings_are_not_part_of_the_cell_key():
    from bench.run import cell_key

    base = compose(*DIGITS, "hydra.mode=RUN")
    other = compose(*DIGITS, "hydra.mode=RUN", "cost.warmup_batches=3", "cost.repeats=2", "cost.num_threads=2",
                    "cost.channels_last=true", "cost.inference_mode=false")
    assert cell_key(base) == cell_key(other)
