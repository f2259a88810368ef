"""How a stopped MLflow run is closed: the one rule (stopped_status) and the block that applies it; which errors
mean that the tracking server is gone; a run made once when the server's answer to making it was lost."""
import contextlib
import http.server
import threading

import pytest
import requests
from conftest import free_port

from components.errors import Terminated
from components.tracking import ServerUnavailableError, closed_on_stop, stopped_status


@pytest.mark.parametrize("stop, status", [(ValueError("a bug"), "FAILED"), (KeyboardInterrupt(), "KILLED"),
                                          (Terminated(), "KILLED")])
def test_a_block_stopped_closes_its_runs_with_the_stops_status_and_the_stop_goes_on(stop, status):
    closed = []
    with pytest.raises(type(stop)), closed_on_stop(closed.append):
        raise stop
    assert closed == [status] == [stopped_status(stop)]


def test_nothing_is_closed_when_the_block_ends_or_the_tracking_server_is_gone():
    closed = []
    with closed_on_stop(closed.append):
        pass
    with pytest.raises(ServerUnavailableError), closed_on_stop(closed.append):
        raise ServerUnavailableError("mlflow.tracking_uri: http://127.0.0.1:1 did not answer")
    assert closed == []


@contextlib.contextmanager
def answering_server(status: int):
    """An HTTP server on 127.0.0.1 that answers every request with `status` and no body: 200 a tracking server that
    is up, 502 the proxy in front of one that stopped. Its address."""
    class Answer(http.server.BaseHTTPRequestHandler):
        def answer(self):
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_answer_cut_off_by_a_server_that_stopped_counts_as_no_server():
    """MLflow re-raises a broken answer (the server died mid-response) as its own exception, the requests error as
    its context: that is a server gone, to wait for, like a refused connection."""
    import requests
    from mlflow.exceptions import MlflowException

    from components.tracking import server_unreachable

    def mlflow_call():
        try:
            raise requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead(0 bytes read)")
        except Exception as exc:
            raise MlflowException(f"API request failed with exception {exc}")

    with pytest.raises(MlflowException) as raised:
        mlflow_call()
    assert server_unreachable(raised.value, f"http://127.0.0.1:{free_port()}")


@pytest.mark.parametrize("status, unreachable", [(502, True), (503, True), (504, True), (404, False)])
def test_a_proxys_gateway_error_counts_as_no_server_and_any_other_answer_as_an_answer(status, unreachable,
                                                                                    monkeypatch):
    """Behind a proxy, a stopped server is the proxy's 502-504, which MLflow retries and then reports as requests'
    RetryError; an answer under 500 (here a 404 that is not MLflow's) comes from a server that is there."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from components.tracking import server_unreachable

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with answering_server(status) as url, pytest.raises(MlflowException) as raised:
        MlflowClient(url).get_experiment_by_name("ffx")
    with answering_server(status) as url:
        assert server_unreachable(raised.value, url) == unreachable


def test_an_http_error_with_a_gateway_status_counts_as_no_server():
    """MLflow's artifact transfers raise requests' HTTPError for a status they do not retry: its response's status
    code says whether a proxy stood in for a stopped server."""
    import requests

    from components.tracking import server_unreachable

    for status, unreachable in ((502, True), (403, False)):
        with answering_server(status) as url, pytest.raises(requests.exceptions.HTTPError) as raised:
            requests.get(url, timeout=5).raise_for_status()
        assert server_unreachable(raised.value, url) == unreachable


def test_an_mlflow_error_that_kept_no_chain_is_judged_by_asking_the_server():
    """MLflow's parallel artifact downloads join their failures into one message and keep no exception chain: the
    server is asked whether it answers. An error the server sent (RestException) is its answer, whatever now."""
    from mlflow.exceptions import MlflowException, RestException

    from components.tracking import server_unreachable

    joined = MlflowException("The following failures occurred while downloading one or more artifacts")
    stopped = f"http://127.0.0.1:{free_port()}"
    assert server_unreachable(joined, stopped)
    with answering_server(200) as running:
        assert not server_unreachable(joined, running)
    assert not server_unreachable(joined, "sqlite:///mlruns/mlflow.db")
    sent = RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Run '0' not found"})
    assert not server_unreachable(sent, stopped)


class LostFirstAnswer:
    """A real MLflow client whose first create_run reaches the store, but whose answer is lost on the way back: the
    server stopped after the write (connection reset)."""

    def __init__(self, client):
        self.client, self.lost = client, False

    def __getattr__(self, name):
        return getattr(self.client, name)

    def create_run(self, *args, **kwargs):
        run = self.client.create_run(*args, **kwargs)
        if not self.lost:
            self.lost = True
            raise requests.exceptions.ConnectionError("connection reset by peer")
        return run


@pytest.mark.parametrize("make", ["run", "trial run"])
def test_a_run_whose_answer_was_lost_is_made_once(tmp_path, make):
    import io

    from mlflow.tracking import MlflowClient

    from components.search.trial_logging import trial_run
    from components.tracking import PatientClient, create_run_once, patiently

    store = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = store.create_experiment("ffx")
    said = io.StringIO()
    client = PatientClient(LostFirstAnswer(store), "http://127.0.0.1:9", wait_s=60, stream=said)
    if make == "run":
        run_id = create_run_once(client, experiment, "audit", {"ffx_kind": "audit"})
    else:
        run_id, existed = patiently(client, trial_run, experiment, "parent", "03")
        assert existed  # the first try made it; the second found it
    assert [run.info.run_id for run in store.search_runs([experiment])] == [run_id]
    assert "answers again" in said.getvalue()
