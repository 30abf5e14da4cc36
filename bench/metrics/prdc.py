"""Precision / recall (Kynkäänniemi et al. 2019, "Improved precision and recall metric for assessing generative
models") and density / coverage (Naeem et al. 2020, "Reliable fidelity and diversity metrics for generative
models") from k-nearest-neighbour balls in feature space, in one tiled pass over the distances.

Each reference implementation's convention is kept, so the numbers equal theirs on the same features:
- precision / recall as torch-fidelity 0.4.0's ``prc``: k = 3, a point is inside a ball when its distance is ``<=``
  the ball's radius (the distance from the ball's centre to its k-th nearest other point of its own set). Precision:
  the fraction of generated points inside some real ball; recall: of real points inside some generated ball.
- density / coverage as ``prdc`` 0.2: k = 5 real balls, strict ``<``. Density: the mean number of real balls holding
  a generated point, over k; coverage: the fraction of real balls holding at least one generated point.

Distances are computed in float64 on tiles of ``TILE`` x ``TILE`` rows (|x|² + |y|² - 2 x·y, clamped at 0), so
memory does not grow with N beyond the features themselves; a point's k-NN radius is merged across tiles with a
running top-(k+1). Exact duplicate features (quantised small images repeat) are at distance exactly 0, whatever the
rounding of the expansion: their radii can be 0. A zero radius keeps the reference's rule: under ``<=`` the ball
holds the duplicates of its centre, under ``<`` nothing. The row records how many radii were 0.
"""
from __future__ import annotations

import numpy as np
import torch

TILE = 2048  # rows per side of a distance tile: 2048² float64 = 32 MiB, a few tiles' worth of temporaries at once


def _duplicate_ids(*sets: np.ndarray) -> list[torch.Tensor | None]:
    """Per set, an integer per row, equal for rows with bitwise-equal float64 features across all ``sets``; None
    for a set whose rows repeat nowhere (then only a point's own distance needs setting to 0)."""
    rows = np.concatenate([np.asarray(s, np.float64) for s in sets]) + 0.0  # + 0.0: -0.0 and 0.0 are one value
    rows = np.ascontiguousarray(rows)
    _, ids, counts = np.unique(rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel(),
                               return_inverse=True, return_counts=True)
    ids = torch.from_numpy(ids.ravel().astype(np.int64))
    repeated = torch.from_numpy(counts[ids.numpy()] > 1)
    return [i if bool(r.any()) else None
            for i, r in zip(ids.split([len(s) for s in sets]), repeated.split([len(s) for s in sets]))]


def _tiles(a: torch.Tensor, b: torch.Tensor, ida, idb, same: bool):
    """Yield (row slice of a, column slice of b, squared distances of that tile) in float64. ``same``: b is a
    (its diagonal is each point's distance to itself)."""
    na = (a * a).sum(1)
    nb = (b * b).sum(1)
    for i in range(0, len(a), TILE):
        ai = a[i:i + TILE]
        for j in range(0, len(b), TILE):
            d2 = (ai @ b[j:j + TILE].T).mul_(-2.0).add_(na[i:i + TILE, None]).add_(nb[None, j:j + TILE]).clamp_(min=0)
            if ida is not None and idb is not None:  # exact duplicates (and each point itself)
                d2[ida[i:i + TILE, None] == idb[None, j:j + TILE]] = 0.0
            elif same and i == j:
                d2.diagonal().zero_()
            yield slice(i, i + len(ai)), slice(j, j + d2.shape[1]), d2


def knn_radii(x: torch.Tensor, ids: torch.Tensor | None, ks: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """Squared distance from each row of ``x`` to its k-th nearest other row, for each k in ``ks`` (the point
    itself is at distance 0, so this is the (k+1)-th smallest, as in both references)."""
    m = max(ks) + 1
    if len(x) < m:
        raise ValueError(f"k-NN radii with k={max(ks)} need more than {max(ks)} points, got {len(x)}")
    best = torch.full((len(x), m), float("inf"), dtype=torch.float64)
    for rows, _, d2 in _tiles(x, x, ids, ids, same=True):
        merged = torch.cat([best[rows], d2], dim=1)
        best[rows] = merged.topk(m, dim=1, largest=False).values  # sorted ascending
    return {k: best[:, k].clone() for k in ks}


def prdc(real, gen, pr_k: int = 3, dc_k: int = 5) -> dict:
    """Precision, recall (k = ``pr_k``, ``<=``), density, coverage (k = ``dc_k``, ``<``) of ``gen`` against
    ``real`` (feature arrays (N, d)), with the settings and the zero-radius counts, for a results row."""
    real = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    gen = torch.as_tensor(np.asarray(gen), dtype=torch.float64)
    if real.ndim != 2 or gen.ndim != 2 or real.shape[1] != gen.shape[1]:
        raise ValueError(f"features must be (N, d) with one d, got real {tuple(real.shape)}, gen {tuple(gen.shape)}")
    id_real, id_gen = _duplicate_ids(real.numpy(), gen.numpy())
    r_real = knn_radii(real, id_real, (pr_k, dc_k))
    r_gen = knn_radii(gen, id_gen, (pr_k,))[pr_k]
    in_real_ball = torch.zeros(len(gen), dtype=torch.bool)  # precision
    balls_holding = torch.zeros(len(gen), dtype=torch.float64)  # density
    in_gen_ball = torch.zeros(len(real), dtype=torch.bool)  # recall
    nearest_gen = torch.full((len(real),), float("inf"), dtype=torch.float64)  # coverage
    for g, r, d2 in _tiles(gen, real, id_gen, id_real, same=False):
        in_real_ball[g] |= (d2 <= r_real[pr_k][None, r]).any(1)
        balls_holding[g] += (d2 < r_real[dc_k][None, r]).sum(1)
        in_gen_ball[r] |= (d2 <= r_gen[g, None]).any(0)
        nearest_gen[r] = torch.minimum(nearest_gen[r], d2.min(0).values)
    return {"precision": float(in_real_ball.double().mean()), "recall": float(in_gen_ball.double().mean()),
            "density": float((1.0 / dc_k) * balls_holding.mean()),
            "coverage": float((nearest_gen < r_real[dc_k]).double().mean()),
            "pr_k": pr_k, "pr_rule": "<= (torch-fidelity prc)", "dc_k": dc_k, "dc_rule": "< (prdc)",
            "prdc_n_gen": len(gen), "prdc_n_ref": len(real),
            "prdc_zero_radii_ref": int((r_real[pr_k] == 0).sum()), "prdc_zero_radii_gen": int((r_gen == 0).sum()),
            "prdc_zero_radii_ref_dc": int((r_real[dc_k] == 0).sum())}
