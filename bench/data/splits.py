"""Deterministic train/test splits shared by the labelled data sets."""
from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split


def split_indices(labels: np.ndarray, split: str, test_fraction: float, split_seed: int,
                  num_train: int = 0) -> np.ndarray:
    """Indices of ``split``: a stratified (when every class has 2+ items) shuffle split by ``split_seed``.

    ``num_train`` > 0 caps the train split (a prefix of its shuffled order, so caps nest).
    """
    idx = np.arange(len(labels))
    if test_fraction <= 0:
        train, test = idx, idx[:0]
    else:
        _, counts = np.unique(labels, return_counts=True)
        stratify = labels if (labels >= 0).all() and counts.min() >= 2 else None
        train, test = train_test_split(idx, test_size=test_fraction, random_state=split_seed, shuffle=True,
                                       stratify=stratify)
    if split == "train":
        return train[:num_train] if num_train else train
    return test
