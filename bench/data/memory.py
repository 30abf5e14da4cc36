"""Data sets held in memory as two tensors (all of ours but `folder`)."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset


class InMemoryDataset(Dataset):
    """Items ``(x[i], y[i])``; ``get_batch`` gathers a whole batch in one indexing op (the training loader uses it)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def get_batch(self, indices):
        return self.x[indices], self.y[indices]
