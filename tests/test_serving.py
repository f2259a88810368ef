"""The registered end-to-end classifier: image bytes or files in, class and probabilities out, the same through
`mlflow.pyfunc.load_model`, `ffx predict` and `mlflow models serve`."""
import base64
import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import free_port, wait_for_http
from mlflow.exceptions import MlflowException

from components.features.identity import feature_path
from components.features.store import read_features
from components.model.head_file import head_paths, load_head
from components.model.metrics import class_probabilities
from components.tracking import tracking_uri

BIN = Path(sys.executable).parent


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def decompression_bomb(side: int = 10_000) -> bytes:
    """A real PNG of side x side black pixels (100 megapixels by default) in about 100 KB."""
    rows = zlib.compress(b"\0" * ((side + 1) * side), 9)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b""))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


BAD_VALUES = {  # what a client may send in the `image` column, and the reason the answer must give
    "not base64": ("this is not base64!", "not base64"),
    "not an image": (_b64(b"just some text, no picture"), "not an image"),
    "empty": ("", "empty value"),
    "decompression bomb": (_b64(decompression_bomb()), "decompression bomb"),
}


@pytest.fixture(scope="module")
def champion(tiny_run):
    """The tiny run's registered champion, loaded as any Python user would."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(tiny_run.config))
    mlflow.set_registry_uri(tracking_uri(tiny_run.config))
    return mlflow.pyfunc.load_model(f"models:/{tiny_run.config.mlflow.registered_model}@champion")


def _test_images(tiny_run, count: int):
    test = read_features(feature_path(tiny_run.config, "test"))
    return test, [tiny_run.config.data.root / p for p in test.paths[:count]]


def test_champion_takes_image_bytes_or_paths_and_agrees_with_the_head_on_stored_features(tiny_run, champion):
    test, files = _test_images(tiny_run, 5)
    by_bytes = champion.predict(pd.DataFrame({"image": [f.read_bytes() for f in files]}))
    by_base64 = champion.predict(pd.DataFrame({"image": [_b64(f.read_bytes()) for f in files]}))
    by_path = champion.predict(pd.DataFrame({"path": [str(f) for f in files]}))
    names = test.class_names
    assert list(by_bytes.columns) == ["class", "probability", *[f"p_{n}" for n in names]]
    head, _ = load_head(head_paths(tiny_run.config)[0])
    expected = class_probabilities(head, test.features[:5])  # what evaluation scored, from extraction's features
    for out in (by_bytes, by_base64, by_path):
        np.testing.assert_allclose(out[[f"p_{n}" for n in names]].to_numpy(), expected, atol=1e-5)
        assert out["class"].tolist() == [names[i] for i in expected.argmax(axis=1)]
        np.testing.assert_allclose(out["probability"], expected.max(axis=1), atol=1e-5)


def test_bad_rows_fail_the_request_naming_each_row_and_reason_or_are_reported(tiny_run, champion):
    _, (good,) = _test_images(tiny_run, 1)
    values = [_b64(good.read_bytes())] + [value for value, _ in BAD_VALUES.values()]
    with pytest.raises(MlflowException) as failure:
        champion.predict(pd.DataFrame({"image": values}))
    for row, (_, reason) in enumerate(BAD_VALUES.values(), start=1):
        assert f"row {row}: {reason}" in failure.value.message
    reported = champion.predict(pd.DataFrame({"image": values}), params={"on_bad_image": "report"})
    assert len(reported) == len(values) and isinstance(reported["class"][0], str)
    assert [str(e).split(" (")[0].split(":")[0] for e in reported["error"][1:]] == [
        reason for _, reason in BAD_VALUES.values()]
    assert reported["class"][1:].isna().all()


@contextlib.contextmanager
def _serving(run, log: Path):
    """`mlflow models serve` of `run`'s champion on 127.0.0.1 and a free port; stopped at the end."""
    port = free_port()
    uri = tracking_uri(run.config)  # both: other tests leave MLFLOW_REGISTRY_URI set in this process
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, MLFLOW_REGISTRY_URI=uri)
    with log.open("w") as out:
        server = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m",
                                   f"models:/{run.config.mlflow.registered_model}@champion",
                                   "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                                  cwd=run.root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        try:
            wait_for_http(f"http://127.0.0.1:{port}/ping", server, timeout=300)
        except RuntimeError:
            pytest.fail(f"mlflow models serve did not come up:\n{log.read_text()[-3000:]}")
        yield f"http://127.0.0.1:{port}/invocations"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


@pytest.fixture(scope="module")
def served(tiny_run, tmp_path_factory):
    with _serving(tiny_run, tmp_path_factory.mktemp("serve") / "server.log") as url:
        yield url


def _ffx_predict(root, image) -> tuple[dict, str]:
    """`ffx predict --json IMAGE` as a user runs it, from `root`: (its JSON answer, its standard error)."""
    cli = subprocess.run([str(BIN / "ffx"), "predict", "--json", str(image)], cwd=root, capture_output=True,
                         text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr
    return json.loads(cli.stdout), cli.stderr


def _post(url: str, column: str, values: list) -> httpx.Response:
    return httpx.post(url, json={"dataframe_split": {"columns": [column], "data": [[v] for v in values]}},
                      timeout=120)


@pytest.mark.e2e
def test_served_champion_answers_a_posted_image_as_ffx_predict_does(tiny_run, served):
    _, (image,) = _test_images(tiny_run, 1)
    response = _post(served, "image", [_b64(image.read_bytes())])
    assert response.status_code == 200, response.text
    (answer,) = response.json()["predictions"]
    local, stderr = _ffx_predict(tiny_run.root, image)
    assert answer["class"] == local["class"]
    assert answer["probability"] == pytest.approx(local["probability"], abs=1e-5)
    assert "oneDNN" not in stderr and "absl" not in stderr  # TensorFlow's start-up lines only with --debug


@pytest.mark.e2e
def test_server_names_each_bad_row_and_keeps_serving(tiny_run, served):
    _, (image,) = _test_images(tiny_run, 1)
    good = _b64(image.read_bytes())
    for case, (value, reason) in BAD_VALUES.items():
        response = _post(served, "image", [good, value])
        assert response.status_code == 400, (case, response.text)
        assert f"row 1: {reason}" in response.json()["message"], case
        assert _post(served, "image", [good]).status_code == 200, f"server down after {case}"
    refused = _post(served, "path", [str(image)])  # the server never opens files its clients name
    assert refused.status_code == 400 and "column 'path'" in refused.json()["message"]


# The fine-tuned model, kept by the finetune stage and registered: the frozen base up to the boundary (the shared
# weights), then the fine-tuned top block and head carried with the version.

def _probabilities(frame: pd.DataFrame, names: list[str]) -> np.ndarray:
    return frame[[f"p_{n}" for n in names]].to_numpy(dtype=float)


@pytest.mark.e2e
def test_fine_tuned_champion_agrees_with_ffx_predict_and_its_stored_boundary_features(finetuned_run):
    import mlflow

    from components.finetune.boundary import boundary_path
    from components.finetune.decision import finetuned_dir
    from conftest import run_ffx

    config = finetuned_run.config
    assert finetuned_run.decision["kept"] == "finetuned"
    mlflow.set_tracking_uri(tracking_uri(config))
    mlflow.set_registry_uri(tracking_uri(config))
    champion = mlflow.pyfunc.load_model(f"models:/{config.mlflow.registered_model}@champion")
    assert champion.metadata.metadata["finetune"]["kept"] == "finetuned"
    test = read_features(boundary_path(config, "test"))
    files = [config.data.root / p for p in test.paths[:5]]
    model, _ = load_head(finetuned_dir(config) / "head.keras")
    expected = class_probabilities(model, test.features[:5])  # what evaluation scored
    served = _probabilities(champion.predict(pd.DataFrame({"path": [str(f) for f in files]})), test.class_names)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    for reference in ("registry", "models/finetuned"):  # the registered version, and the local fine-tuned model
        cli = run_ffx(finetuned_run.root, "predict", "--json", "--model", reference, *map(str, files))
        assert cli.returncode == 0, cli.stderr
        answers = [json.loads(line) for line in cli.stdout.splitlines()]
        np.testing.assert_allclose([[a["probabilities"][n] for n in test.class_names] for a in answers], expected,
                                   atol=1e-5)


@pytest.mark.e2e
def test_served_fine_tuned_champion_answers_as_ffx_predict_does(finetuned_run, tmp_path):
    config = finetuned_run.config
    test = read_features(feature_path(config, "test"))
    image = config.data.root / test.paths[0]
    with _serving(finetuned_run, tmp_path / "server.log") as url:
        response = _post(url, "image", [_b64(image.read_bytes())])
    assert response.status_code == 200, response.text
    (answer,) = response.json()["predictions"]
    local, _ = _ffx_predict(finetuned_run.root, image)
    assert answer["class"] == local["class"]
    for name in test.class_names:
        assert answer[f"p_{name}"] == pytest.approx(local["probabilities"][name], abs=1e-5)
