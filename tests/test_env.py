"""A run's console: third-party tips and deprecation noise are off, the harness's own warnings and Lightning's device
lines stay; diffusers loads weights without asking for `accelerate`."""
import logging
import os
import subprocess
import sys

from reliability_helpers import DIGITS, ROOT, private_cache, trained

NOISE = ("anonymous setting", "LitLogger", "litlogger", "Tip:", "_pytree", "LeafSpec", "accelerate")


def test_a_default_run_prints_no_third_party_noise(tmp_path):
    trained(DIGITS)  # the evaluator and reference statistics; the model is trained by the child (private cache)
    cache = private_cache(tmp_path / "cache", what=("evaluators", "refstats"))
    env = {**os.environ, "BENCH_CACHE": str(cache), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    env.pop("WANDB_SILENT", None)  # the default console, as a user gets it
    args = [a for a in DIGITS if not a.startswith("tracker=")]  # the default tracker (W&B, offline)
    out = subprocess.run([sys.executable, "-m", "bench.run", *args, f"out_dir={tmp_path / 'out'}"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    console = out.stdout + out.stderr
    assert out.returncode == 0, console[-3000:]
    # the noise had its chance: the child trained with Lightning and logged the curves to W&B
    assert "`Trainer.fit` stopped: `max_steps=2` reached." in console, console[-3000:]
    assert list((tmp_path / "out").rglob("offline-run-*")), "no W&B run was started"
    assert [n for n in NOISE if n in console] == [], console[-3000:]
    # what matters stays: the harness's own warning (2 timed batches) and Lightning's device lines
    assert "latency from 2 timed batches" in console and "GPU available:" in console, console[-3000:]


def test_diffusers_loads_weights_without_asking_for_accelerate(tmp_path):
    from diffusers import UNet2DModel

    UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), norm_num_groups=4,
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D")
                ).save_pretrained(tmp_path)
    said = []
    handler = logging.Handler()
    handler.emit = said.append
    logging.getLogger("diffusers").addHandler(handler)
    try:
        UNet2DModel.from_pretrained(tmp_path)
    finally:
        logging.getLogger("diffusers").removeHandler(handler)
    assert [r.getMessage() for r in said if "accelerate" in r.getMessage()] == []
