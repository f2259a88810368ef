"""Prediction from image files: the extraction's decoding and backbone, then the head."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.backbone import Backbone, build_backbone
from components.config import BackboneConfig, Config
from components.errors import FFXError, ModelNotFoundError
from components.augment import flip_images
from components.evaluate import average_views, class_probabilities
from components.images import ImageReadError, is_image_name, load_rgb
from components.registry import load_head, load_registered_head


@dataclass
class Predictor:
    head: object
    backbone: Backbone
    class_names: list[str]
    source: str
    tta: bool = False  # predict.tta: average over the image and its mirror image


@dataclass
class Prediction:
    path: str
    label: str | None
    probability: float | None
    probabilities: dict[str, float] | None
    error: str | None = None


def resolve_model_reference(config: Config, model: str | None) -> str:
    reference = model or config.predict.model
    if reference == "registry":
        return f"models:/{config.mlflow.registered_model}@{config.registry.alias}"
    return reference


def load_predictor(config: Config, model: str | None = None) -> Predictor:
    reference = resolve_model_reference(config, model)
    if reference.startswith("models:/"):
        head, metadata = load_registered_head(config, reference)
    else:
        path = Path(reference)
        head, metadata = load_head(path if path.is_absolute() else config.root / path)
    if "backbone" not in metadata or "class_names" not in metadata:
        raise ModelNotFoundError(f"{reference}: model has no ffx metadata (backbone, class_names)")
    spec = metadata["backbone"]
    backbone_config = BackboneConfig(name=spec["name"], weights=spec["weights"], input_size=int(spec["input_size"]),
                                     seed=int(spec["seed"]), pooling=spec.get("pooling", "flatten"),
                                     layer=spec.get("layer", "last"))  # heads from before the options: the recipe
    backbone = build_backbone(backbone_config, config.root, spec.get("precision", "float32"))
    if backbone.weights_id != metadata["weights_id"]:
        raise FFXError(f"{reference}: trained on backbone weights {metadata['weights_id']} but "
                       f"backbone.weights '{spec['weights']}' now resolves to {backbone.weights_id}")
    return Predictor(head, backbone, list(metadata["class_names"]), reference, config.predict.tta)


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


def predict_paths(predictor: Predictor, inputs: list[str | Path], batch_size: int, max_pixels: int) -> list[Prediction]:
    """One Prediction per image, in input order; unreadable files get an error instead of failing the batch."""
    paths = expand_inputs(inputs)
    size = predictor.backbone.config.input_size
    results: list[Prediction] = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        images, ok = [], []
        for path in chunk:
            try:
                images.append(load_rgb(path, size, max_pixels))
                ok.append(path)
            except ImageReadError as exc:
                results.append(Prediction(str(path), None, None, None, str(exc)))
        if not images:
            continue
        batch = np.stack(images)
        probabilities = class_probabilities(predictor.head, predictor.backbone.features(batch))
        if predictor.tta:
            flipped = class_probabilities(predictor.head, predictor.backbone.features(flip_images(batch)))
            probabilities = average_views([probabilities, flipped])
        for path, row in zip(ok, probabilities):
            best = int(row.argmax())
            results.append(Prediction(str(path), predictor.class_names[best], float(row[best]),
                                      {c: float(p) for c, p in zip(predictor.class_names, row)}))
    order = {str(p): i for i, p in enumerate(paths)}
    return sorted(results, key=lambda r: order[r.path])
