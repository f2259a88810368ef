"""How a stopped MLflow run is closed: the one rule (stopped_status) and the block that applies it."""
import pytest

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
    assert server_unreachable(raised.value)
    assert not server_unreachable(MlflowException("RESOURCE_DOES_NOT_EXIST: no such run"))
