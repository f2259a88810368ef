"""Near-duplicates and outliers among all images of all splits, by cleanlab's Datalab on one k-nearest-neighbour
graph (cosine distance in the audit space). A near-duplicate pair across splits is a leak."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class NeighbourIssues:
    neighbours: np.ndarray         # (N, k) row indices, nearest first
    distances: np.ndarray          # (N, k) cosine distances
    duplicate_pairs: list          # (i, j, distance), i < j, closest first
    outlier_scores: np.ndarray     # cleanlab's outlier score: low = unlike the rest
    is_outlier: np.ndarray         # bool (N,)
    ranked_outliers: np.ndarray    # every row, most outlying first
    median_distance: float         # median nearest-neighbour distance: the near-duplicate radius's unit


def find_neighbour_issues(x: np.ndarray, labels: np.ndarray, k: int, radius: float,
                          outlier_threshold: float) -> NeighbourIssues:
    from cleanlab import Datalab
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(x) - 1)
    knn = NearestNeighbors(n_neighbors=k, metric="cosine").fit(x)
    graph = knn.kneighbors_graph(mode="distance")  # self left out, sorted by distance: what Datalab takes
    lab = Datalab(data={"label": labels}, label_name="label", verbosity=0)
    lab.find_issues(knn_graph=graph, issue_types={
        "near_duplicate": {"k": k, "threshold": radius, "metric": "cosine"},
        "outlier": {"k": k, "threshold": outlier_threshold, "metric": "cosine"}})
    distances, neighbours = graph.data.reshape(len(x), k), graph.indices.reshape(len(x), k)
    duplicates = lab.get_info("near_duplicate")
    pairs = {}
    for i, members in enumerate(duplicates["near_duplicate_sets"]):
        for j in members:
            a, b = sorted((i, int(j)))
            pairs[(a, b)] = 1 - _cosine_similarity(x[a], x[b])
    outliers = lab.get_issues("outlier")
    scores = outliers["outlier_score"].to_numpy()
    return NeighbourIssues(neighbours, distances, sorted(((a, b, d) for (a, b), d in pairs.items()), key=lambda p: p[2]),
                           scores, outliers["is_outlier_issue"].to_numpy(bool), np.argsort(scores, kind="stable"),
                           float(duplicates["median_distance_to_nearest_neighbor"]))


def _cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
