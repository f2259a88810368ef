"""The finetune stage's decision, models/finetuned/finetune.json: whether fine-tuning ran, both validation scores and
which model was kept; with the fine-tuned model beside it (head.keras + head.json, as `ffx tune` saves a head),
kept or not. Read by `ffx evaluate` (no TensorFlow here)."""
from __future__ import annotations

import json
from pathlib import Path

from components.config import Config, better
from components.contract import params_key
from components.errors import FFXError
from components.files import file_digest, write_json_atomic

FINETUNED_DIR = "finetuned"
DECISION_FILE = "finetune.json"
KEPT_HEAD, KEPT_FINETUNED = "head", "finetuned"


def finetuned_dir(config: Config) -> Path:
    return config.model.dir / FINETUNED_DIR


def decision_path(config: Config) -> Path:
    return finetuned_dir(config) / DECISION_FILE


def kept_model(monitor: str, head_score: float, finetuned_score: float | None) -> str:
    """The fine-tuned model unless the head alone scores strictly better. Both scores are on the valid images held
    out for decisions (tuner.decision_fraction), which neither the search nor early stopping saw, so neither is
    optimistic; a tie goes to the fine-tuned model, the one the user enabled the stage for."""
    if finetuned_score is None or better(monitor, head_score, finetuned_score):
        return KEPT_HEAD
    return KEPT_FINETUNED


def validation_metric(objective: str) -> str:
    """The objective as a validation metric: the comparison and early stopping are on held-out data even when the
    search's objective is a training metric."""
    return "val_" + objective.removeprefix("val_")


def settings_key(config: Config) -> str:
    """What, besides the head and the images, decides the stage's output: the params it declares."""
    return params_key(config, "finetune")


def write_decision(config: Config, head_file: Path, decision: dict) -> dict:
    decision = dict(decision, head_sha1=file_digest(head_file) if head_file.is_file() else None,
                    settings=settings_key(config))
    write_json_atomic(decision_path(config), decision)
    return decision


def read_decision(config: Config) -> dict | None:
    """The decision, or None when the finetune stage never ran (the head alone is then scored)."""
    path = decision_path(config)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise FFXError(f"{path}: not valid JSON ({exc}); run `ffx finetune` again") from None


def decision_is_current(config: Config, head_file: Path) -> bool:
    """The decision was made for this head and these settings."""
    decision = read_decision(config)
    return bool(decision and head_file.is_file() and decision.get("head_sha1") == file_digest(head_file)
                and decision.get("settings") == settings_key(config))

