"""Training batches whose order is a pure function of (seed, step), so an interrupted training resumes exactly."""
from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from .catalog import build_dataset, get_data_info


class MirroredDataset(Dataset):
    """The data set and its horizontal mirror images (items n..2n-1): random flips as a deterministic index."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return 2 * len(self.base)

    def __getitem__(self, i):
        n = len(self.base)
        x, y = self.base[i % n]
        return (torch.flip(x, dims=[-1]) if i >= n else x), y

    def get_batch(self, indices: list[int]):
        idx = torch.as_tensor(indices)
        n = len(self.base)
        x, y = _fetch(self.base, (idx % n).tolist())
        flip = (idx >= n).view(-1, *([1] * (x.dim() - 1)))
        return torch.where(flip, torch.flip(x, dims=[-1]), x), y


def _fetch(ds: Dataset, indices: list[int]):
    """One batch: ``ds.get_batch`` (one indexing op, in-memory data sets) or per-item reads + collate."""
    get_batch = getattr(ds, "get_batch", None)
    return get_batch(indices) if get_batch is not None else default_collate([ds[i] for i in indices])


class _Batches(Dataset):
    """Indexed by a list of indices (what the batch sampler yields), returns the whole batch."""

    def __init__(self, ds: Dataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, indices: list[int]):
        return _fetch(self.ds, indices)


class StepBatchSampler(Sampler):
    """Endless shuffled batches: the stream is epoch permutations ``default_rng([seed, epoch]).permutation(n)``
    concatenated; step s takes stream items [s·B, (s + 1)·B). Starts at ``start_step``. Every training process
    reads the same batch (its rows are split in the loss, bench.training.objectives.diffusion_loss)."""

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int = 0):
        self.n, self.batch_size, self.seed, self.start_step = n, batch_size, seed, start_step

    def batch(self, step: int) -> list[int]:
        start = step * self.batch_size
        out, pos = [], start
        while len(out) < self.batch_size:
            epoch, offset = divmod(pos, self.n)
            perm = self._perm(epoch)
            take = perm[offset:offset + self.batch_size - len(out)]
            out.extend(take.tolist())
            pos += len(take)
        return out

    def _perm(self, epoch: int) -> np.ndarray:
        if getattr(self, "_cached_epoch", None) != epoch:
            self._cached_epoch, self._cached_perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._cached_perm

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1


class BenchDataModule(L.LightningDataModule):
    """Train loader over ``build_dataset(data_cfg, "train")`` (+ mirrors when ``data.hflip`` on images), with
    batches ``StepBatchSampler(batch_size, seed)`` resumed at the trainer's restored ``global_step``."""

    def __init__(self, data_cfg, batch_size: int, seed: int):
        super().__init__()
        self.data_cfg, self.batch_size, self.seed = data_cfg, int(batch_size), int(seed)
        self.train_set: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            ds = build_dataset(self.data_cfg, "train")
            if self.data_cfg.hflip and get_data_info(self.data_cfg).kind == "images":
                ds = MirroredDataset(ds)
            self.train_set = ds

    def train_dataloader(self) -> DataLoader:
        self.setup()
        trainer = self.trainer
        # Lightning restores the checkpoint's loop state before it asks for the loader, so global_step is the
        # step to resume at.
        start = int(trainer.global_step) if trainer is not None else 0
        # every rank reads the same global batch (train.batch_size) and DiffusionModule trains on its rows
        # rank::world of it: N processes take the steps of 1 (trainer.* is not in the model key)
        sampler = StepBatchSampler(len(self.train_set), self.batch_size, self.seed, start)
        workers = int(self.data_cfg.num_workers)
        # batch_size=None: the sampler yields whole batches and _Batches fetches each in one go (in-memory data
        # sets index their tensors once instead of 512 __getitem__ calls + collate)
        return DataLoader(_Batches(self.train_set), sampler=sampler, batch_size=None, num_workers=workers,
                          persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())
