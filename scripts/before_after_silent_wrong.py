# Usage: OMP_NUM_THREADS=1 .venv/bin/python scripts/before_after_silent_wrong.py <empty work dir>
"""Before/after figures for the silent-wrong paths other than tampered weights (that one:
scripts/before_after_tampered_weights.py). "Before" re-creates the old behaviour by switching the fix off in the
process (a monkeypatch passed to `bench`), "after" is the code as it is.

1. model.pretrained weights replaced at the same path: a digits cell (a pretrained UNet exported from a harness-trained
   smoke model) is run, the weights are replaced by another model's, and the same command is run again.
3. a 16-bit grayscale PNG (PIL mode I;16) decoded by a folder data set.
4. a reversed linear schedule (beta_start > beta_end) on toy2d.
5. two results files sharing a cell_key with different scores, given to bench-report in both orders.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

work = Path(sys.argv[1])
work.mkdir(parents=True, exist_ok=True)
env = {**os.environ, "BENCH_CACHE": str(work / "cache")}
PY = sys.executable


def bench(args, out, pre=""):
    code = pre + "import sys; from bench.run import main; sys.argv=['bench', *sys.argv[1:]]; main()"
    p = subprocess.run([PY, "-c", code, *args, f"out_dir={out}", "tracker=none", "device=cpu", "hydra.mode=RUN",
                        "trainer.enable_progress_bar=false"], env=env, capture_output=True, text=True)
    res = list(Path(out).rglob("results.jsonl"))
    rows = [json.loads(line) for line in res[0].read_text().splitlines()] if res else []
    return p.returncode, rows, (p.stderr.strip().splitlines() or [""])[-1]


def export_unet(seed: int, dest: Path) -> None:
    """Train the smoke digits UNet with train.seed=seed through the harness and save its EMA UNet at dest."""
    code = f"""
import sys
sys.path.insert(0, "tests")
from reliability_helpers import compose
from bench.training import load_or_train
cfg = compose("experiment=smoke", "tracker=none", "device=cpu", "train.seed={seed}", "train.max_steps=200",
              cache="{work / 'cache'}")
model, _ = load_or_train(cfg)
model.unet.save_pretrained("{dest}")
"""
    subprocess.run([PY, "-c", code], env=env, check=True, capture_output=True)


print("## 1. model.pretrained replaced at the same path (digits, smoke UNet 200 steps, DDIM 20, N = 500)")
pre_old = "import bench.keys as k; k.path_fingerprint = lambda p: 'path-only'; "
P = work / "pretrained"
DIG = ["experiment=smoke", f"model.pretrained={P}", "sampling.num_samples=500", "sampling.batch_size=250",
       "sampling.num_inference_steps=20", "metric.kid_subset_size=100"]
export_unet(0, P)
for tag, pre in (("before", pre_old), ("after", "")):
    export_unet(0, P)
    _, rows, _ = bench(DIG, work / f"pre_{tag}", pre)
    a = rows[-1]
    export_unet(1, P)  # other weights, same path
    _, rows, _ = bench(DIG, work / f"pre_{tag}", pre)
    fresh = bench(DIG, work / f"pre_{tag}_fresh", pre)[1][-1]
    b = rows[-1]
    print(f"{tag}: weights A -> fid {a['fid']:.4f} key {a['cell_key']}; weights B at the same path -> the file's "
          f"row for this command: fid {b['fid']:.4f} key {b['cell_key']} ({len(rows)} row(s)); B scored in a fresh "
          f"out_dir: fid {fresh['fid']:.4f} key {fresh['cell_key']}")

print("## 3. a 16-bit grayscale PNG (I;16) in a folder data set")
from PIL import Image  # noqa: E402

img = work / "png16" / "a" / "x.png"
img.parent.mkdir(parents=True, exist_ok=True)
arr = (np.linspace(0, 65535, 64).reshape(8, 8)).astype(np.uint16)
Image.fromarray(arr).save(img)
with Image.open(img) as im:
    old = np.asarray(im.convert("RGB"))  # what the folder loader did before
from bench.data.folder import decode_image  # noqa: E402

new = np.asarray(decode_image(img, "RGB"))
print(f"mode {Image.open(img).mode}; true mean {arr.mean() / 257:.1f} (8-bit scale); before: convert('RGB') mean "
      f"{old.mean():.1f}, min {old.min()}; after: decode_image mean {new.mean():.1f}, min {new.min()}")

print("## 4. a reversed linear schedule (beta_start=0.02 > beta_end=1e-4), toy2d, 300 steps, DDIM 20, N = 2000")
TOY = ["experiment=toy2d", "train.max_steps=300", "train.batch_size=256", "data.num_train=2000",
       "sampling.num_samples=2000", "sampler=ddim", "sampling.num_inference_steps=20"]
REV = ["schedule.beta_start=0.02", "schedule.beta_end=0.0001"]
pre_rev = ("import bench.schedule as s, bench.preflight as pf; s._check = lambda cfg, info: None; "
           "s.SCHEDULES.entries['linear'] = s.Entry('linear', s._check); ")
code, rows, _ = bench(TOY, work / "sched_ok")
print(f"forward schedule: swd {rows[-1]['swd']:.4f} mmd {rows[-1]['mmd']:.4f}")
code, rows, err = bench(TOY + REV, work / "sched_before", pre_rev)
print("before (check off):", f"exit {code}, swd {rows[-1]['swd']:.4f} mmd {rows[-1]['mmd']:.4f} status "
      f"{rows[-1]['status']}" if rows else f"exit {code}: {err}")
code, rows, err = bench(TOY + REV, work / "sched_after")
print(f"after: exit {code}: {err}")

print("## 5. bench-report given two results files that share a cell_key with different scores")
base = work / "sched_ok"
res = next(base.rglob("results.jsonl"))
row = json.loads(res.read_text().splitlines()[0])
for name, swd in (("a", row["swd"]), ("b", row["swd"] * 1.5)):
    d = work / "dup" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "results.jsonl").write_text(json.dumps({**row, "swd": swd}) + "\n")
for order in (("a", "b"), ("b", "a")):
    p = subprocess.run([PY, "-m", "bench.report", *[str(work / "dup" / o) for o in order], "--out",
                        str(work / "dup" / f"rep_{''.join(order)}")], env=env, capture_output=True, text=True)
    print(f"after, order {order}: exit {p.returncode}: {(p.stderr.strip().splitlines() or [''])[-1][:300]}")
print(f"before (the last file won): order (a, b) -> swd {row['swd'] * 1.5:.4f}, order (b, a) -> swd {row['swd']:.4f}")
