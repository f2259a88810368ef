"""MLflow store set-up shared by tuning, registration and reports."""
from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

from components.config import Config
from components.errors import FFXError, exception_chain
from components.migrations import tag_untagged_experiment

SERVER_TIMEOUT_S = 5
RETRY_EVERY_S = 5  # between tries of a request to a tracking server that does not answer
SQLITE = "sqlite:///"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # what the MLflow UI reads to open an experiment on its runs
EXPERIMENT_KIND = "custom_model_development"
BACKBONES_SUFFIX = "-backbones"                # the experiment holding the shared backbone weights' runs
GATEWAY_STATUSES = frozenset({502, 503, 504})  # a proxy's answer for the stopped server behind it
REQUEST_TAG = "ffx_request_id"  # on each run ffx makes: what a try after a lost answer finds it by


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///PATH` URI (relative or absolute); None for other stores."""
    return Path(uri[len(SQLITE):]) if uri.startswith(SQLITE) else None


def tracking_uri(config: Config) -> str:
    """The MLflow tracking URI with a relative SQLite path resolved against the project root."""
    path = sqlite_path(config.mlflow.tracking_uri)
    return SQLITE + str(config.root / path) if path and not path.is_absolute() else config.mlflow.tracking_uri


def is_http(uri: str) -> bool:
    """A tracking server's address (http or https), not a local store."""
    return uri.startswith(("http://", "https://"))


def unanswered(uri: str) -> str | None:
    """Why the tracking server at `uri` does not answer its /health now (refused, timed out, or the 5xx of a proxy
    in front of a stopped server), or None when it answers. Any answer under 500 counts (a login or a proxy path in
    front of MLflow): the server is there."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=SERVER_TIMEOUT_S).close()
        return None
    except urllib.error.HTTPError as exc:
        return None if exc.code < 500 else f"HTTP {exc.code} {exc.reason}"
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))


def check_tracking_server(config: Config) -> None:
    """Fail fast when an http(s) tracking server does not answer (MLflow itself retries for minutes); called before
    extraction too, so a dead server is found before an hour of backbone work, not after. Local stores pass."""
    uri = tracking_uri(config)
    reason = unanswered(uri) if is_http(uri) else None
    if reason is not None:
        raise FFXError(f"mlflow.tracking_uri: {uri} does not answer ({reason}); start the server "
                       "(mlflow server --host HOST --port PORT) or set mlflow.tracking_uri: "
                       "sqlite:///mlruns/mlflow.db")


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
    if is_http(uri):
        client = PatientClient(client, uri, config.mlflow.wait_for_server_s)
    return client, _experiment(config, client, config.mlflow.experiment, create)


def backbones_experiment(config: Config, client) -> str:
    """The id of `<experiment>-backbones`, made on first use: it holds the shared backbone-weights runs, artefact
    holders that would otherwise sit among the searches in the project's experiment."""
    return _experiment(config, client, config.mlflow.experiment + BACKBONES_SUFFIX, create=True)


def _experiment(config: Config, client, name: str, create: bool) -> str:
    """An experiment's id, made when missing (unless `create` is False); tagged as custom model development when
    the project writes to it, so that the MLflow UI opens it on its runs, not on the GenAI overview."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        if not create:
            raise FFXError(f"mlflow.experiment '{name}': no such experiment in {tracking_uri(config)}; "
                           "run `ffx tune` first")
        location = config.mlflow.artifact_location
        location.mkdir(parents=True, exist_ok=True)
        return client.create_experiment(name, artifact_location=location.as_uri(),
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    if create:
        tag_untagged_experiment(client, experiment, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


class ServerUnavailableError(FFXError):
    """The tracking server did not answer within mlflow.wait_for_server_s: nothing more can be recorded, so the
    clean-up that would record the stop is skipped too (the next run closes what this one left open)."""


def server_unreachable(exc: BaseException, uri: str) -> bool:
    """The request to the tracking server at `uri` found no server, as MLflow reports it after its own retries: a
    requests error in `exc`'s chain that says so (refused, reset, timed out, cut off mid-answer by a server that
    stopped, retries run out on a proxy's 5xx), or a gateway status (502-504) on an HTTP error's response. An MLflow
    error that kept no chain (its parallel artifact downloads join their failures into one message) is judged by
    asking the server itself; an error the server sent (RestException) is its answer."""
    import requests
    from mlflow.exceptions import MlflowException, RestException

    no_server = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, requests.exceptions.RetryError,
                 requests.exceptions.ChunkedEncodingError)
    for link in exception_chain(exc):
        if isinstance(link, no_server):
            return True
        response = getattr(link, "response", None) if isinstance(link, requests.exceptions.HTTPError) else None
        if response is not None and response.status_code in GATEWAY_STATUSES:
            return True
    return (isinstance(exc, MlflowException) and not isinstance(exc, RestException) and is_http(uri)
            and unanswered(uri) is not None)


class PatientClient:
    """An MlflowClient whose calls wait for an http(s) tracking server that stops answering: one line when the first
    request fails (the address, that it waits, for how long: mlflow.wait_for_server_s), the time waited on the same
    line of a terminal after each try (nothing more on a log), one line when the server answers again; when the
    wait runs out, one FFXError. MLflow's own retries are kept short (MLFLOW_HTTP_REQUEST_MAX_RETRIES, set by the
    CLI) so that the first line comes at once, not after minutes of silence. Only a request that found no server
    (refused, reset, timed out) is tried again: the search's writes (params, tags, metrics of a step, end states)
    are the same when repeated, and a run is made in one step that first looks for it (create_run_once, a trial's run
    by its trial id: tracking.patiently), so that a make whose answer was lost is not made twice."""

    def __init__(self, client, uri: str, wait_s: int, stream=None):
        self._client, self._uri, self._wait_s = client, uri, wait_s
        self._stream = stream or sys.stderr

    def __getattr__(self, name: str):
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def patient_call(*args, **kwargs):
            return self._call(attribute, args, kwargs)
        return patient_call

    def call(self, function: Callable, *args):
        """`function(plain_client, *args)` as one request: tried again as a whole, from its start, when the server
        stops answering in the middle of it."""
        return self._call(function, (self._client, *args), {})

    def _say(self, text: str, same_line: bool = False) -> None:
        terminal = self._stream.isatty()
        if same_line and not terminal:
            return
        self._stream.write(("\r\x1b[K" if same_line else "") + text + ("" if same_line else "\n"))
        self._stream.flush()

    def _call(self, method, args, kwargs):
        started = None
        while True:
            try:
                result = method(*args, **kwargs)
            except Exception as exc:
                if not server_unreachable(exc, self._uri):
                    raise
                now = time.monotonic()
                if started is None:
                    started = now
                    self._say(f"MLflow tracking server {self._uri} does not answer; waiting up to "
                              f"{self._wait_s}s for it (mlflow.wait_for_server_s)")
                elif now - started >= self._wait_s:
                    if self._stream.isatty():
                        self._stream.write("\n")
                    raise ServerUnavailableError(
                        f"mlflow.tracking_uri: {self._uri} did not answer for {self._wait_s}s "
                        "(mlflow.wait_for_server_s); start it again and run the same command: it resumes where it "
                        "stopped") from None
                else:
                    self._say(f"waiting for {self._uri}: {now - started:.0f}s of {self._wait_s}s", same_line=True)
                time.sleep(max(0.0, min(RETRY_EVERY_S, started + self._wait_s - time.monotonic())))
                continue
            if started is not None:
                if self._stream.isatty():
                    self._stream.write("\n")
                self._say(f"MLflow tracking server {self._uri} answers again after "
                          f"{time.monotonic() - started:.0f}s; going on")
            return result


def patiently(client, function: Callable, *args):
    """`function(client, *args)`, a step that must not stop halfway (look a run up, make it when missing): through
    a PatientClient it is tried again as a whole while the server does not answer."""
    if isinstance(client, PatientClient):
        return client.call(function, *args)
    return function(client, *args)


def create_run_once(client, experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
    """A new run's id. A server that stops after it made the run, before its answer arrived, leaves the try after
    to find that run by its request id (REQUEST_TAG) instead of making a second one."""
    request = uuid.uuid4().hex

    def find_or_create(plain) -> str:
        found = plain.search_runs([experiment_id], f"tags.{REQUEST_TAG} = '{request}'", max_results=1)
        if found:
            return found[0].info.run_id
        return plain.create_run(experiment_id, run_name=run_name, tags={**tags, REQUEST_TAG: request}).info.run_id
    return patiently(client, find_or_create)


def git_commit(root: Path) -> str:
    """HEAD's commit, `-dirty` with uncommitted changes to tracked files; "unknown" outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        return git("rev-parse", "HEAD") + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def stopped_status(exc: BaseException) -> str:
    """The MLflow status of a run its process stopped on `exc`: an error fails it; Ctrl-C or SIGTERM kills it, and
    a re-run resumes it."""
    return "FAILED" if isinstance(exc, Exception) else "KILLED"


@contextlib.contextmanager
def closed_on_stop(close: Callable[[str], None]):
    """`close(status)` (stopped_status) when the block stops on an error, Ctrl-C or SIGTERM, then the stop goes on:
    the runs say how they ended, and a re-run resumes them. Not when the tracking server is gone: nothing could
    record it."""
    try:
        yield
    except BaseException as exc:
        if not isinstance(exc, ServerUnavailableError):
            close(stopped_status(exc))
        raise


@contextlib.contextmanager
def server_stop_as_error(config: Config, command: str):
    """Around MLflow's fluent calls (mlflow.start_run, mlflow.pyfunc.log_model), which PatientClient cannot wrap:
    repeating one could log a model twice. A tracking server that stops answering inside the block is one line
    naming the command to run again, not a traceback. Make the calls before it through the patient client, so that
    a server that is down when the block starts is waited for."""
    try:
        yield
    except Exception as exc:
        uri = tracking_uri(config)
        if not server_unreachable(exc, uri):
            raise
        raise ServerUnavailableError(f"mlflow.tracking_uri: {uri} stopped answering; start it again "
                                     f"and run `{command}` again") from None
