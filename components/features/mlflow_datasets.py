"""Feature files as MLflow dataset inputs: what a run saw, in the Runs table's Dataset column."""
from __future__ import annotations

from pathlib import Path

from components.features.store import FeatureSet

DIGEST_CHARS = 16   # of a feature file's content key, as its MLflow dataset digest (MLflow keeps up to 36)


def feature_datasets(data_root: Path, splits: dict[str, FeatureSet]) -> list:
    """Each split's feature file as an MLflow dataset input, for `client.log_inputs(run_id, datasets=...)`: the
    Runs table's Dataset column then says what a run saw. Name = the split, digest = the file's content key,
    source = the image folder it was made from, schema and profile (rows, feature shape, class counts): only this
    metadata goes to MLflow, not the features."""
    import json

    import numpy as np
    from mlflow.data.schema import TensorDatasetSchema
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.types import Schema, TensorSpec

    inputs = []
    for split, features in splits.items():
        shape = list(features.features.shape[1:])
        schema = TensorDatasetSchema(features=Schema([TensorSpec(np.dtype("float32"), (-1, *shape), "features")]),
                                     targets=Schema([TensorSpec(np.dtype("int64"), (-1,), "label")]))
        counts = np.bincount(features.labels, minlength=len(features.class_names)).tolist()
        profile = {"rows": len(features.labels), "feature_shape": shape, "features_key": features.attrs["key"],
                   "classes": dict(zip(features.class_names, counts))}
        # The image folder: test_flip.h5 is made from test/ (MLflow's "local" source, a JSON {"uri": ...}).
        folder = Path(data_root) / str(features.attrs.get("split", split))
        dataset = Dataset(name=split, digest=features.attrs["key"][:DIGEST_CHARS], source_type="local",
                          source=json.dumps({"uri": str(folder)}), schema=json.dumps(schema.to_dict()),
                          profile=json.dumps(profile))
        inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", split)]))
    return inputs
