# Usage: OMP_NUM_THREADS=1 .venv/bin/python scripts/single_vs_multi_process.py <empty work dir>
"""Side by side on 1 and 2 processes (CPU, gloo): the same digits model trained with trainer.devices=1 and 2
(ddp_spawn), then one cell of each sampled and scored with sampling.devices=1 and 2 (Fabric). Prints the weight
difference, whether the samples are identical, FID/KID/IS, and the wall time of each."""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main(work: Path) -> None:
    import torch

    from bench import cell
    from bench.keys import results_root
    from bench.training import load_or_train
    from reliability_helpers import compose

    base = ["experiment=smoke", "tracker=none", "device=cpu", "trainer.accelerator=cpu", "train.max_steps=300",
            "sampling.num_samples=500", "sampling.batch_size=125", "sampling.num_inference_steps=20",
            "sampling.save_samples=true", "metric.kid_subset_size=100"]
    models = {}
    print("| training | processes | wall s | steps |\n|---|---|---|---|")
    for n in (1, 2):
        cfg = compose(*base, f"trainer.devices={n}", cache=str(work / f"cache{n}"))
        t0 = time.perf_counter()
        model, info = load_or_train(cfg)
        models[n] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        print(f"| digits smoke UNet | {n} | {time.perf_counter() - t0:.1f} | {info['train_steps']} |")
    diff = max(float((models[1][k] - models[2][k]).abs().max()) for k in models[1])
    print(f"\nmax |EMA weight difference| between the 1- and 2-process models: {diff:.2e}\n")
    print("| model trained on | sampled on | wall s | FID | KID | IS | samples = (1, 1)'s |")
    print("|---|---|---|---|---|---|---|")
    ref = None
    for train_n in (1, 2):
        for sample_n in (1, 2):
            cfg = compose(*base, f"sampling.devices={sample_n}", f"out_dir={work / f'runs{train_n}{sample_n}'}",
                          cache=str(work / f"cache{train_n}"))
            t0 = time.perf_counter()
            row = cell.run_cell(cfg)
            wall = time.perf_counter() - t0
            x = np.load(results_root(cfg) / row["cell_dir"] / "samples.npz")["images"]
            ref = x if ref is None else ref
            same = "identical" if np.array_equal(x, ref) else f"max uint8 diff {int(np.abs(x.astype(int) - ref).max())}"
            print(f"| {train_n} process(es) | {sample_n} | {wall:.1f} | {row['fid']:.6f} | {row['kid']:.6f} | "
                  f"{row['is']:.6f} | {same} |")
    torch.set_num_threads(torch.get_num_threads())


if __name__ == "__main__":  # ddp_spawn / Fabric re-import this module in their workers
    main(Path(sys.argv[1]))
