"""The audit of a dataset's stored features: every kind of finding, as arrays (for tests and the report) and as the
plain lists `ffx audit --json`, reports/audit.json and the exclusion list are made of."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.audit.drift import Drift, measure_drift
from components.audit.labels import LabelIssues, find_label_issues
from components.audit.neighbours import NeighbourIssues, find_neighbour_issues
from components.audit.space import fit_space, spatially_pooled, to_space
from components.config import AuditConfig
from components.features.store import FeatureSet

LABELLED_SPLITS = ("train", "valid")  # label issues: the images a model learns or is chosen from


@dataclass
class Audit:
    paths: list[str]          # every image of every split, relative to data.root
    splits: list[str]         # each image's split
    labels: np.ndarray
    class_names: list[str]
    labelled: np.ndarray      # indices of the train and valid images, the rows of `labels_issues`
    label_issues: LabelIssues
    neighbours: NeighbourIssues
    drift: Drift | None

    def leaks(self) -> list[tuple[int, int, float]]:
        return [p for p in self.neighbours.duplicate_pairs if self.splits[p[0]] != self.splits[p[1]]]

    def duplicates(self) -> list[tuple[int, int, float]]:
        return [p for p in self.neighbours.duplicate_pairs if self.splits[p[0]] == self.splits[p[1]]]

    def label_ranking(self) -> list[int]:
        """Train and valid rows (into `paths`), worst label first. Outliers are left out: an image unlike every class
        (a blank frame) has no likely label to offer; it is listed among the outliers."""
        outlier = self.neighbours.is_outlier
        return [int(self.labelled[i]) for i in self.label_issues.ranked if not outlier[self.labelled[i]]]

    def flagged_labels(self) -> list[int]:
        """The rows of `label_ranking` cleanlab flags as label issues."""
        flagged = {int(self.labelled[i]) for i in np.flatnonzero(self.label_issues.flagged)}
        return [row for row in self.label_ranking() if row in flagged]

    def flagged_outliers(self) -> list[int]:
        return [int(i) for i in self.neighbours.ranked_outliers if self.neighbours.is_outlier[i]]

    def counts(self) -> dict:
        counts = {"images": len(self.paths), "label_issues": len(self.flagged_labels()), "leaks": len(self.leaks()),
                  "near_duplicates": len(self.duplicates()), "outliers": len(self.flagged_outliers()),
                  "label_model_accuracy": round(self.label_issues.accuracy(self.labels[self.labelled]), 4)}
        if self.drift:
            counts.update(drift_images=self.drift.count, drift_outside=self.drift.outside,
                          drift_share=round(self.drift.share, 4))
        return counts

    def _image(self, row: int, shown: int) -> dict:
        near = self.neighbours
        return {"path": self.paths[row], "split": self.splits[row], "label": self.class_names[self.labels[row]],
                "neighbours": [{"path": self.paths[j], "split": self.splits[j],
                                "label": self.class_names[self.labels[j]], "distance": round(float(d), 4)}
                               for j, d in zip(near.neighbours[row][:shown], near.distances[row][:shown])]}

    def lists(self, listed: int, shown: int) -> dict:
        """The findings as JSON-ready lists, at most `listed` of each kind, each image with `shown` neighbours."""
        issues, position = self.label_issues, {int(r): i for i, r in enumerate(self.labelled)}
        labels = [dict(self._image(row, shown), likely=self.class_names[issues.likely[position[row]]],
                       score=round(float(issues.scores[position[row]]), 4),
                       likely_probability=round(float(issues.pred_probs[position[row]].max()), 4))
                  for row in self.flagged_labels()[:listed]]
        outliers = [dict(self._image(row, shown), score=round(float(self.neighbours.outlier_scores[row]), 4))
                    for row in self.flagged_outliers()[:listed]]

        def pairs(found):
            return [{"a": self._image(a, shown), "b": self._image(b, shown), "distance": round(d, 4)}
                    for a, b, d in found[:listed]]

        out = {"counts": self.counts(), "label_issues": labels, "leaks": pairs(self.leaks()),
               "near_duplicates": pairs(self.duplicates()), "outliers": outliers,
               "duplicate_radius": {"median_nn_distance": round(self.neighbours.median_distance, 4)}}
        if self.drift:
            d = self.drift
            out["drift"] = {"source": d.source, "method": d.method, "images": d.count, "outside": d.outside,
                            "share": round(d.share, 4), "expected_share": d.expected_share}
        return out

    def exclusions(self) -> list[tuple[str, str]]:
        """(path, why) to leave out on the next run: flagged labels, outliers, and of each leak or duplicate the
        member outside test (a leaked image stays in test, its copy leaves train/valid)."""
        out, issues = {}, self.label_issues
        position = {int(r): i for i, r in enumerate(self.labelled)}
        for row in self.flagged_labels():
            p = position[row]
            out.setdefault(self.paths[row], f"label issue: given {self.class_names[self.labels[row]]}, likely "
                                            f"{self.class_names[issues.likely[p]]} (score {issues.scores[p]:.3f})")
        for row in self.flagged_outliers():
            out.setdefault(self.paths[row], f"outlier (score {self.neighbours.outlier_scores[row]:.3f})")
        for a, b, _ in self.neighbours.duplicate_pairs:
            keep, drop = (b, a) if self.splits[b] == "test" else (a, b)
            if self.paths[keep] not in out:
                kind = "leak" if self.splits[a] != self.splits[b] else "near-duplicate"
                out.setdefault(self.paths[drop], f"{kind} of {self.paths[keep]}")
        return sorted(out.items())


def image_rows(features: FeatureSet) -> int:
    """Rows that are the images themselves: with augmented views, rows 0..N-1 (views follow)."""
    return len(features.paths) if features.source is None else int(features.source.max()) + 1


def label_features(settings: AuditConfig, stored: np.ndarray, space: np.ndarray) -> np.ndarray:
    """What the label model reads: `search`, the stored features the head search trains on (flattened features as
    they are: a head tells faces apart by where things are); `space`, the audit space (128 dimensions: faster for
    very large sets)."""
    return stored if settings.label_features == "search" else space


def audit_features(splits: dict[str, FeatureSet], settings: AuditConfig,
                   new: tuple[str, np.ndarray] | None = None) -> Audit:
    """Audit the images of `splits` (train first); `new`: (what they are, features) of images to check for drift."""
    paths, names, labels, blocks = [], [], [], []
    for name, features in splits.items():
        n = image_rows(features)
        paths += features.paths[:n]
        names += [name] * n
        labels.append(features.labels[:n])
        blocks.append(features.features[:n])
    labels_all = np.concatenate(labels)
    attrs = splits["train"].attrs
    features_all = np.concatenate(blocks)
    pooled = spatially_pooled(features_all, attrs["feature_shape"], attrs["pooling"])
    n_train = image_rows(splits["train"])  # train comes first in `splits`: its rows lead
    space = fit_space(pooled[:n_train], settings.components, settings.seed)
    x = to_space(space, pooled)
    labelled = np.flatnonzero(np.isin(names, LABELLED_SPLITS))
    label_issues = find_label_issues(label_features(settings, features_all, x)[labelled], labels_all[labelled],
                                     settings.folds, settings.label_c, settings.label_method, settings.seed)
    neighbours = find_neighbour_issues(x, labels_all, settings.k, settings.duplicate_radius,
                                       settings.outlier_threshold)
    drift = None
    if new is not None:
        new_x = to_space(space, spatially_pooled(new[1], attrs["feature_shape"], attrs["pooling"]))
        drift = measure_drift(x[:n_train], new_x, settings.k, settings.drift_quantile, new[0])
    return Audit(paths, names, labels_all, list(splits["train"].class_names), labelled, label_issues, neighbours,
                 drift)
