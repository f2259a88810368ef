"""Prediction from image files through the end-to-end classifier: the registered model `mlflow models serve`
runs, or a local head from `ffx tune` wrapped in the same ImageClassifier, so the two cannot disagree."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from components.config import Config
from components.data.images import is_image_name
from components.errors import FFXError

Classify = Callable[[pd.DataFrame], pd.DataFrame]  # a frame with a `path` column -> one output row per input row


@dataclass
class Prediction:
    path: str
    label: str | None
    probability: float | None
    probabilities: dict[str, float] | None
    error: str | None = None


def load_classifier(config: Config, model: str | None = None) -> Classify:
    """The model `model` (default `predict.model`) names, as a function of a frame of image paths: a registry URI
    or an MLflow model folder is loaded as the pyfunc model; a `head.keras` (or its folder) as a local head."""
    from components.model.classifier import ImageClassifier, spec_for

    reference = model or config.predict.model
    if reference == "registry":
        reference = f"models:/{config.mlflow.registered_model}@{config.registry.alias}"
    local = Path(reference) if Path(reference).is_absolute() else config.root / reference
    registry_uri = reference.startswith(("models:/", "runs:/"))
    if registry_uri or (local / "MLmodel").is_file():
        from components.model.registry import load_registered_classifier

        pyfunc = load_registered_classifier(config, reference if registry_uri else str(local))
        return lambda frame: pyfunc.predict(frame, params={"on_bad_image": "report"})
    from components.model.head_file import HEAD_FILE, load_head

    head_file = local if local.suffix == ".keras" else local / HEAD_FILE
    _, metadata = load_head(head_file)  # checks both files are there and readable
    spec = spec_for(metadata, config.predict.tta, config.data.max_pixels, config.predict.batch_size, weights={})
    classifier = ImageClassifier.load(head_file, spec, root=config.root)
    return lambda frame: classifier.predict_frame(frame, "report")


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """Files as given; folders expanded to their image files (recursively, sorted)."""
    paths: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            paths.extend(sorted(p for p in item.rglob("*") if p.is_file() and is_image_name(p)))
        elif item.exists():
            paths.append(item)
        else:
            raise FFXError(f"{item}: no such file or folder")
    return paths


def predict_paths(classify: Classify, inputs: list[str | Path], batch_size: int):
    """One Prediction per image, in input order, `batch_size` images per call of the model (memory stays flat);
    an unreadable file gets an error instead of failing the others."""
    paths = expand_inputs(inputs)
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        out = classify(pd.DataFrame({"path": [str(p) for p in chunk]}))
        classes = [c.removeprefix("p_") for c in out.columns if c.startswith("p_")]
        for path, row in zip(chunk, out.to_dict("records")):
            if isinstance(row.get("error"), str):  # readable rows have none (None, or NaN after pandas)
                yield Prediction(str(path), None, None, None, row["error"])
            else:
                yield Prediction(str(path), row["class"], float(row["probability"]),
                                 {c: float(row[f"p_{c}"]) for c in classes})


def prediction_json(prediction: Prediction) -> str:
    return json.dumps({"path": prediction.path, "class": prediction.label, "probability": prediction.probability,
                       "probabilities": prediction.probabilities, "error": prediction.error})
