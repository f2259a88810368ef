"""Links into the MLflow UI (3.x routes), as the project prints them: they open on the Model training view.

MLflow 3's UI keeps a GenAI / Model training toggle in the browser (default GenAI, an empty traces overview for this
project); `?workflowType=machine_learning` in the link sets it.
"""
from __future__ import annotations

import json
import urllib.parse

from components.config import Config
from components.tracking import is_http, tracking_uri

LOCAL_UI = "http://127.0.0.1:5000"   # where `mlflow ui` listens by default, for a local (SQLite) store
MODEL_TRAINING = "workflowType=machine_learning"


def ui_address(config: Config) -> str:
    """The MLflow UI's address: the tracking server's for an http(s) store, `mlflow ui`'s default otherwise."""
    uri = tracking_uri(config)
    return uri.rstrip("/") if is_http(uri) else LOCAL_UI


def experiment_link(config: Config, experiment_id: str) -> str:
    """The experiment's Runs table."""
    return f"{ui_address(config)}/#/experiments/{experiment_id}?{MODEL_TRAINING}"


def run_link(config: Config, experiment_id: str, run_id: str) -> str:
    """One run's page (a search's parent run: its params, metrics, datasets and artifacts)."""
    return f"{ui_address(config)}/#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING}"


def model_version_link(config: Config, name: str, version: str) -> str:
    """A registered model version's page."""
    return f"{ui_address(config)}/#/models/{urllib.parse.quote(name, safe='')}/versions/{version}?{MODEL_TRAINING}"


def compare_link(config: Config, experiment_id: str, run_ids: list[str]) -> str:
    """The compare page of these runs, side by side (params, metrics, parallel coordinates)."""
    query = urllib.parse.urlencode({"runs": json.dumps(list(run_ids)), "experiments": json.dumps([experiment_id]),
                                    "workflowType": "machine_learning"})
    return f"{ui_address(config)}/#/compare-runs?{query}"
