"""The end-to-end classifier, image in and class out: the MLflow `python_function` model that `ffx evaluate`
registers and that `ffx predict`, `mlflow models serve` and `mlflow.pyfunc.load_model` all run.

It holds the trained head (with its standardisation) and a spec: class names, backbone identity, input size,
pooling, layer, precision, TTA, and where the backbone's weights are (see `components.model.backbone_weights`).
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import os
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from components.data.augment import mirrored
from components.data.images import ImageReadError, load_rgb
from components.errors import FFXError
from components.features.backbone import Backbone, backbone_of_head
from components.model.backbone_weights import fetched_backbone_weights
from components.model.head_file import load_keras_safely
from components.model.metrics import average_views, class_probabilities

HEAD_ARTIFACT = "head"    # artifact keys of the logged model
SPEC_ARTIFACT = "spec"
SCORING_SERVER_VARIABLE = "__pyfunc_model_path__"
BAD_IMAGE_MODES = ("error", "report")  # param on_bad_image: fail the request naming each bad row | an `error` column


class BadInputError(FFXError):
    """Rows that are not usable images; the message names each row and its reason."""


def spec_for(metadata: dict, tta: bool, max_pixels: int, batch_size: int, weights: dict) -> dict:
    """What prediction needs besides the head, from the head's metadata (`ffx tune`) and the prediction params."""
    return {"class_names": list(metadata["class_names"]), "backbone": dict(metadata["backbone"]),
            "weights_id": metadata["weights_id"], "tta": bool(tta), "max_pixels": int(max_pixels),
            "batch_size": int(batch_size), "weights": weights}


def probability_columns(class_names: list[str]) -> list[str]:
    return [f"p_{name}" for name in class_names]


def signature(class_names: list[str]):
    """Input: a column `image` (base64 text over HTTP, or bytes) or `path` (files the model's process reads).

    `image` is typed string, not binary: MLflow's scoring server decodes binary columns itself, before the
    model runs, and answers text that is not base64 with an error naming neither the row nor the reason.
    The JSON a client sends is the same either way.
    """
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("string", "image", required=False), ColSpec("string", "path", required=False)])
    outputs = Schema([ColSpec("string", "class"), ColSpec("double", "probability")]
                     + [ColSpec("double", column) for column in probability_columns(class_names)])
    params = ParamSchema([ParamSpec("on_bad_image", "string", "error")])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def input_example(image_file: Path) -> pd.DataFrame:
    return pd.DataFrame({"image": [base64.b64encode(Path(image_file).read_bytes()).decode("ascii")]})


def _row_source(value, column: str):
    """A row's image as bytes (from base64 text or raw bytes) or a path; raises ImageReadError with the reason."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, (str, bytes))
                                                                            and not value):
        raise ImageReadError("empty value")
    if column == "path":
        return Path(str(value))
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageReadError(f"not base64 ({exc})") from None


class ImageClassifier:
    """The backbone and the head, run on decoded images in batches of `spec['batch_size']`."""

    def __init__(self, head, backbone: Backbone, spec: dict):
        self.head = head
        self.backbone = backbone
        self.spec = spec
        self.class_names = list(spec["class_names"])

    @classmethod
    def load(cls, head_file: Path, spec: dict, weights_file: Path | None = None,
             root: Path = Path(".")) -> "ImageClassifier":
        """`weights_file`: the backbone weights shipped with a registered model; None: the head's own
        `backbone.weights` resolved here (a local head from `ffx tune`), which must still be what it was trained on."""
        head = load_keras_safely(head_file)
        if weights_file is None:
            backbone = backbone_of_head(spec["backbone"], spec["weights_id"], root)
        else:  # checked by its SHA-256 when fetched, and built now: the fetched file is removed after loading
            backbone = backbone_of_head(spec["backbone"], None, root, weights=str(weights_file))
            _ = backbone.model
        return cls(head, backbone, spec)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, C) class probabilities of uint8 images (N, S, S, 3), averaged with their mirror under TTA."""
        probabilities = class_probabilities(self.head, self.backbone.features(images))
        if self.spec["tta"]:
            of_mirror = class_probabilities(self.head, self.backbone.features(mirrored(images)))
            probabilities = average_views([probabilities, of_mirror])
        return probabilities

    def predict_frame(self, frame: pd.DataFrame, on_bad_image: str = "error") -> pd.DataFrame:
        """One output row per input row: `class`, `probability`, `p_<class>`; with on_bad_image=report also
        `error` (the reason a row could not be read, its other columns empty)."""
        if on_bad_image not in BAD_IMAGE_MODES:
            raise BadInputError(f"param on_bad_image must be one of {', '.join(BAD_IMAGE_MODES)}, "
                                f"got {on_bad_image!r}")
        columns = [c for c in ("image", "path") if c in frame.columns]
        if len(columns) != 1:
            raise BadInputError(f"expected one input column, 'image' (base64 text or bytes) or 'path' (image "
                                f"files), got {list(frame.columns)}")
        values = frame[columns[0]].tolist()
        size, max_pixels, batch_size = (int(self.backbone.config.input_size), int(self.spec["max_pixels"]),
                                        int(self.spec["batch_size"]))
        probabilities = np.full((len(values), len(self.class_names)), np.nan)
        errors: dict[int, str] = {}
        for start in range(0, len(values), batch_size):  # decoded a batch at a time: memory stays flat
            images, rows = [], []
            for row in range(start, min(start + batch_size, len(values))):
                try:
                    images.append(load_rgb(_row_source(values[row], columns[0]), size, max_pixels))
                    rows.append(row)
                except ImageReadError as exc:
                    errors[row] = str(exc)
            if images and not (errors and on_bad_image == "error"):  # a failing request computes no more
                probabilities[rows] = self.probabilities(np.stack(images))
        if errors and on_bad_image == "error":
            listed = "; ".join(f"row {row}: {reason}" for row, reason in sorted(errors.items()))
            raise BadInputError(f"{len(errors)} of {len(values)} input row(s) are not usable images: {listed}")
        return self._frame(probabilities, errors if on_bad_image == "report" else None)

    def _frame(self, probabilities: np.ndarray, errors: dict[int, str] | None) -> pd.DataFrame:
        best = np.nan_to_num(probabilities, nan=-1.0).argmax(axis=1)
        readable = ~np.isnan(probabilities).any(axis=1)
        out = pd.DataFrame({
            "class": [self.class_names[i] if ok else None for i, ok in zip(best, readable)],
            "probability": np.where(readable, probabilities[np.arange(len(best)), best], np.nan),
        })
        for column, values in zip(probability_columns(self.class_names), probabilities.T):
            out[column] = values
        if errors is not None:
            out["error"] = [errors.get(row) for row in range(len(out))]
        return out


class ClassifierModel(mlflow.pyfunc.PythonModel):
    """The pyfunc face of ImageClassifier; a bad row becomes an MLflow error, which the scoring server answers
    with HTTP 400 and the message, and goes on serving."""

    def load_context(self, context):
        spec = json.loads(Path(context.artifacts[SPEC_ARTIFACT]).read_text())
        with fetched_backbone_weights(spec["weights"]) as weights_file:  # read into the model, then removed
            self.classifier = ImageClassifier.load(Path(context.artifacts[HEAD_ARTIFACT]), spec, weights_file)
        # Under `mlflow models serve` a `path` would make the server open any file its clients name. The scoring
        # server's process finds its model through this variable (tested: tests/test_serving.py).
        self.accepts_paths = SCORING_SERVER_VARIABLE not in os.environ

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        try:
            frame = pd.DataFrame(model_input)
            if "path" in frame.columns and not self.accepts_paths:
                raise BadInputError("column 'path' names files on the server and is refused when serving; send "
                                    "each image's bytes as base64 text in the column 'image'")
            return self.classifier.predict_frame(frame, (params or {}).get("on_bad_image", "error"))
        except BadInputError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
