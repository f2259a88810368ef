"""The valid images held out for decisions: the search and early stopping never see them, so that the keep-or-not
decisions (head vs fine-tuned, champion vs challenger) are made on images neither model's selection used."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def decision_mask(sha1s: Sequence[str | bytes], labels: np.ndarray, fraction: float) -> np.ndarray:
    """True for the rows held out for decisions: in each class, the round(`fraction` x its count) images with the
    smallest content hash, at least one and never all of a class with two images or more (a class of one image
    stays with the search). By content, not by path or order: renaming or reordering files moves no image across."""
    labels = np.asarray(labels)
    keys = np.array([int((s.decode() if isinstance(s, bytes) else s)[:15], 16) for s in sha1s], dtype=np.int64)
    held = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        if len(rows) < 2:
            continue
        count = min(max(1, round(fraction * len(rows))), len(rows) - 1)
        held[rows[np.argsort(keys[rows], kind="stable")[:count]]] = True
    return held
