"""Cost protocol: two identical cells measured in one process agree on latency; `cost.*` settings say
how time is measured and never change a cell's key."""
import pytest

from reliability_helpers import DIGITS, compose, trained

pytestmark = pytest.mark.usefixtures("one_thread")

# the shrunk digits UNet, 2 steps per image, 12 batches of 8: 1 warm-up + 11 timed, re-timed twice (33 batches)
CELL = [*DIGITS, "sampling.num_samples=96", "sampling.batch_size=8", "cost.repeats=3", "cost.num_threads=1",
        "hydra.mode=RUN"]


def _row(root, name):
    from bench import cell

    cfg = compose(*CELL, f"out_dir={root}", f"name={name}")
    return cell.run_cell(cfg)


def test_identical_cells_agree_on_latency(tmp_path):
    trained(DIGITS)
    a, b = _row(tmp_path, "a"), _row(tmp_path, "b")
    assert a["cell_key"] == b["cell_key"] and a["fid"] == b["fid"]  # the same cell: same numbers
    assert a["latency_batches"] == b["latency_batches"] == 33 and a["latency_warmup_batches"] == 1
    assert a["num_threads"] == b["num_threads"] == 1
    ratio = a["latency_p50"] / b["latency_p50"]
    print(f"identical cells: latency_p50 {a['latency_p50'] * 1e3:.3f} vs {b['latency_p50'] * 1e3:.3f} ms/img, "
          f"ratio {ratio:.3f}; per_call_s ratio {a['per_call_s'] / b['per_call_s']:.3f}; "
          f"load {a['load_before']:.2f}/{b['load_after']:.2f}")
    assert 1 / 1.1 <= ratio <= 1.1
    for r in (a, b):  # latency = NFE x per-call time + the scheduler's own work (never less than the model's)
        assert r["nfe"] * r["per_call_s"] <= r["latency_p50"] * 1.05
        assert r["latency_iqr"] >= 0 and r["score_s"] > 0 and r["sample_s"] > 0


def test_cost_settings_are_not_part_of_the_cell_key():
    from bench.run import cell_key

    base = compose(*DIGITS, "hydra.mode=RUN")
    other = compose(*DIGITS, "hydra.mode=RUN", "cost.warmup_batches=3", "cost.repeats=2", "cost.num_threads=2",
                    "cost.channels_last=true", "cost.inference_mode=false")
    assert cell_key(base) == cell_key(other)
