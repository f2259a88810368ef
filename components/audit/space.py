"""The space the audit works in, fitted on the train split:

1. flatten features (the recipe's 4x4x512) averaged over their spatial positions: a small crop or shift moves an
   image's content from one cell of the grid to the next, which changes the flattened vector but not the average,
   so odd frames stand out as outliers, and the projection below is faster;
2. scaled to unit length, then truncated SVD (no centring) to `components` dimensions: cosine distances there
   approximate the backbone's own, and the neighbour searches stay fast. Standardising instead blew rarely active
   features up into noise, which hides blank frames among ordinary images."""
from __future__ import annotations

import numpy as np

from components.features.backbone import pooled_again


def spatially_pooled(features: np.ndarray, feature_shape: list[int], pooling: str) -> np.ndarray:
    """Flatten features (H x W x C) as their mean over the H x W positions; other poolings as they are."""
    if pooling != "flatten" or len(feature_shape) != 3:
        return features
    return pooled_again(features, feature_shape, "avg")


def fit_space(train: np.ndarray, components: int, seed: int):
    """Unit length, then truncated SVD to `components` (0: no reduction), as a fitted scikit-learn pipeline."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    steps = [Normalizer()]
    if components and components < min(train.shape):
        steps.append(TruncatedSVD(n_components=components, random_state=seed))
    return make_pipeline(*steps).fit(train)


def to_space(space, features: np.ndarray) -> np.ndarray:
    return space.transform(features).astype(np.float32)
