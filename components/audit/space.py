"""The two spaces the audit works in, both fitted on the train split and reduced to `components` dimensions, which
keeps the model and the neighbour searches fast on 8,192-wide flatten features:

- label space: the features standardised with train statistics (as the head sees them, train.normalize), then PCA.
  The logistic regression that judges labels reads them as the head does.
- neighbour space: the raw features scaled to unit length, then truncated SVD (no centring), so that cosine
  distances there approximate the backbone's own cosine distances. Standardising instead would blow up rarely
  active features into noise: on generated data it hid blank frames among ordinary images and tripled the false
  near-duplicates."""
from __future__ import annotations

import numpy as np


def fit_label_space(train: np.ndarray, components: int, seed: int):
    """StandardScaler, then PCA to `components` (0: no reduction), as a fitted scikit-learn pipeline."""
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    steps = [StandardScaler()]
    if components and components < min(train.shape):
        steps.append(PCA(n_components=components, svd_solver="randomized", random_state=seed))
    return make_pipeline(*steps).fit(train)


def fit_neighbour_space(train: np.ndarray, components: int, seed: int):
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
