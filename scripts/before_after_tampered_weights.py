# Usage: .venv/bin/python scripts/before_after_tampered_weights.py <empty cache dir> <empty out dir>
"""Before/after: a toy2d cell scored with its cached weights, then with 40 KB zeroed inside them
(old behaviour simulated by switching the checksum verification off), then with the fix."""
import json
import os
import subprocess
import sys
from pathlib import Path

cache, out = Path(sys.argv[1]), Path(sys.argv[2])
TOY = ["experiment=toy2d", "tracker=none", "device=cpu", "train.max_steps=300", "train.batch_size=256",
       "data.num_train=2000", "sampling.num_samples=2000", "sampler=ddim", "sampling.num_inference_steps=20",
       "hydra.mode=RUN", "trainer.enable_progress_bar=false"]
env = {**os.environ, "BENCH_CACHE": str(cache)}


def run(tag, pre=""):
    code = pre + "import sys; from bench.run import main; sys.argv=['bench', *sys.argv[1:]]; main()"
    p = subprocess.run([sys.executable, "-c", code, *TOY, f"out_dir={out / tag}"], env=env, capture_output=True,
                       text=True)
    results = out / tag / "toy2d" / "results.jsonl"
    rows = [json.loads(line) for line in open(results)] if results.exists() else []
    if not rows:
        return p.returncode, p.stderr.strip().splitlines()[-1]
    return p.returncode, (rows[0]["swd"], rows[0]["mmd"], rows[0]["cell_key"])


print("clean  ", run("clean"))
w = next((cache / "models").glob("*/model.safetensors"))
data = bytearray(w.read_bytes())
s = len(data) // 2
data[s:s + 40000] = bytes(40000)  # 40 KB zeroed in the middle of the weights
w.write_bytes(bytes(data))
print("before ", run("before", "import bench.training.store as c; c._verify_weights = lambda *a: None; "))
print("after  ", run("after"))
