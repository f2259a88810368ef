"""Champion vs challenger, decided when the challenger is registered: both registered models scored now, by their
own MLflow models (image in, class out), on the same images (registry.compare_split), through MLflow's evaluation
(`mlflow.models.evaluate`, one nested run per model) and gate (`MetricThreshold`, `validate_evaluation_results`).
No score from another day's data is compared: a champion registered on other images is scored on today's."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.errors import FFXError
from components.features.store import FeatureSet
from components.files import content_key

METRIC = "accuracy_score"  # MLflow's default classifier evaluator's name for accuracy


@dataclass(frozen=True)
class ComparisonImages:
    """The images both models are scored on, with their labels."""
    split: str                 # what they are, e.g. "valid (held out for decisions)"
    paths: list[Path]
    labels: np.ndarray         # class indices
    class_names: list[str]
    content_hash: str          # of the images' contents and labels: which images, whatever their names

    @classmethod
    def of(cls, root: Path, features: FeatureSet, split: str) -> ComparisonImages:
        """A feature file's images (plain images: no augmented views); `root`: the folder its paths are under."""
        digests = [] if features.sha1 is None else [s.decode() if isinstance(s, bytes) else s for s in features.sha1]
        content_hash = content_key(sorted(zip(digests, features.labels.tolist())))
        return cls(split, [Path(root) / p for p in features.paths], np.asarray(features.labels),
                   list(features.class_names), content_hash)

    def frame(self):
        import pandas as pd

        # Class names as the labels: MLflow's evaluator takes text labels for categories
        return pd.DataFrame({"path": [str(p) for p in self.paths],
                             "label": [self.class_names[i] for i in self.labels]})


def champion_version(client, name: str, alias: str):
    """The model version `name@alias` points at, or None when there is no such alias (or no such model yet). Any
    other registry error is one line, so that a registry that fails to answer never promotes a challenger."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.search_registered_models(filter_string=f"name = '{name}'")
        aliases = model[0].aliases if model else {}
        return client.get_model_version(name, aliases[alias]) if alias in aliases else None
    except MlflowException as exc:
        raise FFXError(f"MLflow registry: could not read {name}@{alias} ({exc.message.splitlines()[0]}); "
                       "nothing was promoted") from None


def score_version(model, images: ComparisonImages, run_name: str):
    """`mlflow.models.evaluate` of a registered model (its loaded pyfunc) on `images`, in a nested run of the active
    run named `run_name`: MLflow's EvaluationResult (metrics: accuracy_score among them)."""
    import mlflow

    def predict(frame):
        return model.predict(frame[["path"]])["class"]

    dataset = mlflow.data.from_pandas(images.frame(), targets="label", name=images.split,
                                      digest=images.content_hash[:8])
    with mlflow.start_run(run_name=run_name, nested=True):
        mlflow.set_tag("comparison_split_hash", images.content_hash)
        return mlflow.models.evaluate(predict, dataset, model_type="classifier",
                                      evaluator_config={"log_model_explainability": False,
                                                        "pos_label": images.class_names[-1]})


def challenger_passes(challenger, champion, images: ComparisonImages) -> bool:
    """MLflow's gate: the challenger's accuracy beats the champion's by at least one image of `images` (a tie keeps
    the champion)."""
    import mlflow
    from mlflow.models import MetricThreshold
    from mlflow.models.evaluation.validation import ModelValidationFailedException

    threshold = MetricThreshold(min_absolute_change=0.5 / max(len(images.paths), 1), greater_is_better=True)
    try:
        mlflow.validate_evaluation_results({METRIC: threshold}, challenger, champion)
    except ModelValidationFailedException:
        return False
    return True
