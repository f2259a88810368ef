"""MLflow store set-up shared by tuning, registration and reports."""
from __future__ import annotations

import subprocess
from pathlib import Path

from components.config import Config
from components.errors import FFXError

SERVER_TIMEOUT_S = 5
SQLITE = "sqlite:///"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///PATH` URI (relative or absolute); None for other stores."""
    return Path(uri[len(SQLITE):]) if uri.startswith(SQLITE) else None


def tracking_uri(config: Config) -> str:
    """The MLflow tracking URI with a relative SQLite path resolved against the project root."""
    path = sqlite_path(config.mlflow.tracking_uri)
    return SQLITE + str(config.root / path) if path and not path.is_absolute() else config.mlflow.tracking_uri


def check_tracking_server(config: Config) -> None:
    """Fail fast when an http(s) tracking server does not answer (MLflow itself retries for minutes); called before
    extraction too, so a dead server is found before an hour of backbone work, not after. Local stores pass."""
    import urllib.error
    import urllib.request

    uri = tracking_uri(config)
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=SERVER_TIMEOUT_S).close()
        return
    except urllib.error.HTTPError as exc:
        if exc.code < 500:
            return  # it answered (a login or a proxy path in front of MLflow): reachable
        reason = f"HTTP {exc.code} {exc.reason}"
    except (urllib.error.URLError, OSError) as exc:
        reason = str(getattr(exc, "reason", exc))
    raise FFXError(f"mlflow.tracking_uri: {uri} does not answer ({reason}); start the server "
                   "(mlflow server --host HOST --port PORT) or set mlflow.tracking_uri: sqlite:///mlruns/mlflow.db")


def setup_mlflow(config: Config, create: bool = True):
    """Point MLflow at the configured store and return (client, experiment_id). `create=False` (reading: reports,
    `ffx runs`) refuses a store or experiment that is not there instead of making one."""
    import mlflow
    from mlflow.tracking import MlflowClient

    check_tracking_server(config)
    uri = tracking_uri(config)
    database = sqlite_path(uri)
    if database and not database.is_file():
        if not create:
            raise FFXError(f"{uri}: no MLflow store here yet (mlflow.tracking_uri); run `ffx tune` first")
        database.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name(config.mlflow.experiment)
    if experiment is not None:
        return client, experiment.experiment_id
    if not create:
        raise FFXError(f"mlflow.experiment '{config.mlflow.experiment}': no such experiment in {uri}; "
                       "run `ffx tune` first")
    location = config.mlflow.artifact_location
    location.mkdir(parents=True, exist_ok=True)
    return client, client.create_experiment(config.mlflow.experiment, artifact_location=location.as_uri())


def git_commit(root: Path) -> str:
    """HEAD's commit, `-dirty` with uncommitted changes to tracked files; "unknown" outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        return git("rev-parse", "HEAD") + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
