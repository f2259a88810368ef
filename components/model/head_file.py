"""The trained head on disk: models/head.keras and head.json (what prediction needs besides it), saved through
temporary files and loaded in Keras' safe mode."""
from __future__ import annotations

import json
from pathlib import Path

from components.config import Config
from components.errors import ModelNotFoundError, UnsafeModelError
from components.files import atomic_path, write_json_atomic

HEAD_FILE = "head.keras"
METADATA_FILE = "head.json"


def head_paths(config: Config) -> tuple[Path, Path]:
    return config.model.dir / HEAD_FILE, config.model.dir / METADATA_FILE


def save_head(model, metadata: dict, config: Config) -> Path:
    """Save the head and the metadata prediction needs (classes, backbone) via temp files and rename."""
    model_path, metadata_path = head_paths(config)
    with atomic_path(model_path) as tmp:  # keeps the .keras suffix Keras wants
        model.save(tmp)
    write_json_atomic(metadata_path, metadata)
    return model_path


def load_head(path: Path):
    """(keras model, metadata) from a head saved by save_head."""
    path = Path(path)
    metadata_path = path.with_name(METADATA_FILE) if path.suffix == ".keras" else path / METADATA_FILE
    model_path = path if path.suffix == ".keras" else path / HEAD_FILE
    if not model_path.is_file() or not metadata_path.is_file():
        raise ModelNotFoundError(f"{model_path}: no head model here (expected {HEAD_FILE} and {METADATA_FILE}; "
                                 "run `ffx tune` first)")
    try:
        metadata = json.loads(metadata_path.read_text())
    except ValueError as exc:
        raise ModelNotFoundError(f"{metadata_path}: not valid JSON ({exc})") from None
    return load_keras_safely(model_path), metadata


def load_keras_safely(path: Path):
    """A Keras model file loaded in safe_mode, without its optimizer (prediction needs none); a model that would
    run Python code stored in it, or that does not load, is one clear error."""
    import keras

    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except ValueError as exc:
        if "safe_mode" in str(exc):
            raise UnsafeModelError(
                f"{path}: refused: loading this model would run Python code stored in it (e.g. a Lambda layer); "
                "ffx loads models with Keras safe_mode. Use a head saved by `ffx tune`") from None
        raise ModelNotFoundError(f"{path}: not a loadable Keras model ({str(exc).splitlines()[0]})") from None
