"""Drift: the share of new images that fall outside the training features' distribution.

Method: cleanlab's OutOfDistribution on features (mean cosine distance to the k nearest training images in the
audit space, mapped to a 0-1 score). Each training image is scored against the other training images; a new image is
outside when its score is below the `quantile` of those training scores. Without drift about `quantile` of new
images are outside; a share well above it says the new images are unlike the training data."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHOD = "cleanlab OutOfDistribution (mean cosine distance to the k nearest training images)"


@dataclass
class Drift:
    source: str             # the folder, or "new images since the last audit"
    count: int
    outside: int            # images scored below the threshold
    share: float            # outside / count
    expected_share: float   # the quantile: the share expected without drift
    threshold: float
    scores: np.ndarray      # per new image, low = unlike the training images
    method: str = METHOD


def measure_drift(train: np.ndarray, new: np.ndarray, k: int, quantile: float, source: str) -> Drift:
    from cleanlab.outlier import OutOfDistribution

    ood = OutOfDistribution(params={"k": min(k, len(train) - 1)})
    train_scores = ood.fit_score(features=train, verbose=False)
    threshold = float(np.quantile(train_scores, quantile))
    scores = ood.score(features=new) if len(new) else np.zeros(0)
    outside = int((scores < threshold).sum())
    return Drift(source, len(new), outside, outside / max(len(new), 1), quantile, threshold, scores,
                 f"{METHOD}, k={min(k, len(train) - 1)}; outside: score below the {quantile:g} quantile of the "
                 "training images' own scores")
