"""Label issues: out-of-fold predicted probabilities from a cross-validated logistic regression, ranked by cleanlab.

The regression is standardised with each fold's training rows only: a linear read-out as strong as the tuned head on
the features it reads, convex (no seed-dependent training), and calibrated enough for cleanlab's confident learning
(temperature scaling fitted on the out-of-fold rows moved the temperature by under 10% and the flagged count by a
few rows: docs/audit.md). Which features it reads (audit.label_features) and its penalty (audit.label_c) are chosen
by `python -m bench.audit` on flipped labels of a real dataset: a weaker penalty fits the training folds' labels,
wrong ones included. Out of fold, so that no image's own (possibly wrong) label fits the model that judges it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.errors import FFXError


@dataclass
class LabelIssues:
    pred_probs: np.ndarray   # (N, classes), out of fold
    scores: np.ndarray       # cleanlab's label quality (self-confidence): low = probably wrong
    flagged: np.ndarray      # bool (N,): cleanlab's find_label_issues
    ranked: np.ndarray       # every row, worst label first

    @property
    def likely(self) -> np.ndarray:
        return self.pred_probs.argmax(axis=1)

    def accuracy(self, labels: np.ndarray) -> float:
        """Out-of-fold accuracy against the given labels: how far the label list can be trusted."""
        return float((self.likely == labels).mean())


def out_of_fold_probabilities(x: np.ndarray, labels: np.ndarray, folds: int, c: float, seed: int) -> np.ndarray:
    """(N, classes): each row's probabilities from the regression (inverse penalty `c`) fitted on the other folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    smallest = int(np.bincount(labels).min())
    if smallest < 2:
        raise FFXError("audit: a class has fewer than 2 train/valid images; label issues need cross-validation")
    cv = StratifiedKFold(n_splits=min(folds, smallest), shuffle=True, random_state=seed)
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    return cross_val_predict(model, x, labels, cv=cv, method="predict_proba")


def find_label_issues(x: np.ndarray, labels: np.ndarray, folds: int, c: float, method: str,
                      seed: int) -> LabelIssues:
    from cleanlab.filter import find_label_issues as cleanlab_find
    from cleanlab.rank import get_label_quality_scores

    pred_probs = out_of_fold_probabilities(x, labels, folds, c, seed)
    scores = get_label_quality_scores(labels, pred_probs, method="self_confidence")
    # In this process (n_jobs=1): a forked pool worker would inherit the orchestrator's SIGTERM handler (Prefect's
    # reports the task crashed when the pool ends its workers), and the result is the same for any n_jobs.
    flagged = cleanlab_find(labels, pred_probs, filter_by=method, n_jobs=1)
    return LabelIssues(pred_probs, scores, np.asarray(flagged, bool), np.argsort(scores, kind="stable"))
