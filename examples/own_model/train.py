"""Train :class:`net.TinyEpsNet` on scikit-learn's digits with plain PyTorch (no harness), as its author would.

    python examples/own_model/train.py --steps 3000 --out examples/own_model

writes ``weights.safetensors`` (the EMA state dict) and ``alphas_cumprod.npy`` (the T + 1 training table).
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from net import make_net


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent))
    a = p.parse_args()
    torch.manual_seed(0)
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16 - 0.5  # [-0.5, 0.5]
    y = torch.tensor(d.target)
    net = make_net()
    ema = copy.deepcopy(net).requires_grad_(False)
    abar = net.alphas_cumprod.double()
    T = len(abar) - 1
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    for step in range(a.steps):
        i = torch.randint(0, len(x), (a.batch,))
        x0, labels = x[i], y[i].clone()
        labels[torch.rand(a.batch) < 0.1] = 10  # the null label, for classifier-free guidance
        t = torch.randint(1, T + 1, (a.batch,))
        ab = abar[t].float()[:, None, None, None]
        eps = torch.randn_like(x0)
        loss = (net(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t / T, y=labels) - eps).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            for pe, pn in zip(ema.parameters(), net.parameters()):
                pe.lerp_(pn, 1 - 0.999)
        if step % 500 == 0 or step == a.steps - 1:
            print(f"step {step} loss {loss.item():.4f}", flush=True)
    out = Path(a.out)
    save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(out / "weights.safetensors"))
    np.save(out / "alphas_cumprod.npy", abar.numpy())


if __name__ == "__main__":
    main()
