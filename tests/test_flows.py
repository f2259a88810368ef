"""Prefect: a real server (and its UI) on 127.0.0.1, cached tasks across runs, incremental extraction, sharded
extraction on Dask, a served schedule seen through the API and in the UI."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import (
    COLOURS,
    make_dataset,
    make_image,
    page_text,
    stop_process_group,
    write_params,
)

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
CRON, TIMEZONE = "30 3 * * *", "Europe/Paris"
CRON_IN_THE_UI = "At 03:30 AM every day"  # how the Prefect UI words CRON


@pytest.fixture(scope="module")
def served(prefect_api, tmp_path_factory):
    """`ffx serve` of a tiny project whose params schedule CRON in TIMEZONE; the deployment as the API returns it."""
    project = tmp_path_factory.mktemp("served")
    make_dataset(project / "data")
    write_params(project, schedule={"cron": CRON, "timezone": TIMEZONE})
    process = subprocess.Popen(["ffx", "serve"], cwd=project, env=_env(prefect_api), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"{prefect_api['url']}/deployments/name/pipeline/ffx-pipeline"
        deadline = time.time() + 180
        while (response := httpx.get(url, timeout=10)).status_code != 200:
            assert time.time() < deadline and process.poll() is None, "deployment never appeared"
            time.sleep(2)
        yield {"project": project, "deployment": response.json()}
    finally:
        stop_process_group(process)


def _env(api) -> dict:
    return dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", TF_CPP_MIN_LOG_LEVEL="3", **api["env"])


def _pipeline(project: Path, api) -> dict:
    result = subprocess.run(["ffx", "pipeline", "--json", "--quiet"], cwd=project, env=_env(api),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _task_states(api, flow_run_id: str) -> dict:
    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 50}
    runs = httpx.post(f"{api['url']}/task_runs/filter", json=body, timeout=30).json()
    return {run["name"]: run["state"]["name"] for run in runs}


def _latest_flow_run(api) -> dict:
    """The latest `ffx pipeline` run (not one of the served deployment's scheduled runs)."""
    body = {"flow_runs": {"deployment_id": {"is_null_": True}}, "sort": "EXPECTED_START_TIME_DESC", "limit": 1}
    return httpx.post(f"{api['url']}/flow_runs/filter", json=body, timeout=30).json()[0]


def test_second_run_is_cached_and_a_new_image_is_extracted_alone(tmp_path, prefect_api):
    make_dataset(tmp_path / "data")
    write_params(tmp_path)
    first = _pipeline(tmp_path, prefect_api)
    assert set(first["states"].values()) == {"Completed"}
    assert sum(r["computed"] for r in first["extract"].values()) == 48

    second = _pipeline(tmp_path, prefect_api)
    assert second["states"] == {"extract-train": "Cached", "extract-valid": "Cached", "extract-test": "Cached",
                                "audit": "Cached", "tune": "Cached", "finetune": "Cached",
                                "evaluate": "Cached"}
    server_states = _task_states(prefect_api, _latest_flow_run(prefect_api)["id"])
    assert server_states["extract-train"] == "Cached" and list(server_states.values()).count("Cached") == 7
    print(f"cold run {first['seconds']:.1f}s, cached run {second['seconds']:.1f}s")

    make_image(tmp_path / "data" / "train" / "red" / "new.png", COLOURS["red"], (25, 25), seed=4242)
    third = _pipeline(tmp_path, prefect_api)
    assert third["states"]["extract-train"] == "Completed" and third["extract"]["train"]["computed"] == 1
    assert third["states"]["extract-valid"] == "Cached" and third["states"]["extract-test"] == "Cached"
    assert third["states"]["tune"] == "Completed" and third["states"]["audit"] == "Completed"

    (tmp_path / "features" / "valid.h5").unlink()  # a deleted output is never a cache hit
    fourth = _pipeline(tmp_path, prefect_api)
    assert fourth["states"]["extract-valid"] == "Completed" and fourth["extract"]["valid"]["computed"] == 0


def test_sharded_extraction_on_a_two_worker_dask_cluster_matches_single_process(tmp_path, prefect_api):
    import numpy as np

    from components.config import load_config
    from components.features.store import read_features
    from components.stages.extract import extract_stage

    make_dataset(tmp_path / "data")
    write_params(tmp_path, extract={"batch_size": 4, "shard_size": 5},
                 orchestration={"task_runner": "dask", "dask_workers": 2})
    summary = _pipeline(tmp_path, prefect_api)
    shard_states = {k: v for k, v in summary["states"].items() if k.startswith("extract-train-")}
    assert len(shard_states) == 5 and set(shard_states.values()) == {"Completed"}  # 24 images, shards of 5
    single = extract_stage(load_config(tmp_path / "params.yaml", ["features.dir=single", "extract.shard_size=0"]))
    for split, shards in (("train", 5), ("valid", 3), ("test", 3)):
        sharded, reference = read_features(tmp_path / "features" / f"{split}.h5"), read_features(single[split].path)
        assert sharded.paths == reference.paths and sharded.labels.tolist() == reference.labels.tolist()
        np.testing.assert_allclose(sharded.features, reference.features, rtol=1e-4, atol=1e-4)
        assert sharded.attrs["key"] == reference.attrs["key"] and sharded.attrs["shards"] == shards, split
    again = _pipeline(tmp_path, prefect_api)  # finished shards are cache hits
    assert {v for k, v in again["states"].items() if k.startswith("extract-")} == {"Cached"}


def test_served_deployment_has_the_cron_schedule_and_a_triggered_run_completes(served, prefect_api):
    schedules = served["deployment"]["schedules"]
    assert [(s["schedule"]["cron"], s["schedule"]["timezone"]) for s in schedules] == [(CRON, TIMEZONE)]
    trigger = subprocess.run(["prefect", "deployment", "run", "pipeline/ffx-pipeline"], env=_env(prefect_api),
                             capture_output=True, text=True, timeout=120)
    assert trigger.returncode == 0, trigger.stderr
    flow_run_id = next(line.split()[-1] for line in trigger.stdout.splitlines() if "UUID" in line)
    deadline = time.time() + 600
    while True:
        state = httpx.get(f"{prefect_api['url']}/flow_runs/{flow_run_id}", timeout=10).json()["state"]
        if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        assert time.time() < deadline, f"run still {state['type']}"
        time.sleep(3)
    assert state["type"] == "COMPLETED", state
    assert (served["project"] / "metrics" / "test.json").is_file()


def test_prefect_ui_deployments_page_shows_the_served_deployment_and_its_schedule(chromium, served, prefect_api,
                                                                                 tmp_path):
    deployment = served["deployment"]
    expected = ["ffx-pipeline", "pipeline", CRON_IN_THE_UI]
    _, text = page_text(chromium, f"{prefect_api['ui']}/deployments", tmp_path / "list", expected)
    assert "1 Deployment" in text, text[:2000]
    row = text[text.index("ffx-pipeline"):]  # the table row: deployment, its flow, status, schedule
    assert row.split()[:2] == ["ffx-pipeline", "pipeline"] and CRON_IN_THE_UI in row, text[:2000]

    expected = [f"Deployment ID {deployment['id']}", f"Schedules {CRON_IN_THE_UI}"]
    _, text = page_text(chromium, f"{prefect_api['ui']}/deployments/deployment/{deployment['id']}",
                        tmp_path / "detail", expected)
    missing = [item for item in expected if item not in text]
    assert not missing, f"not on the deployment page: {missing}\n{text[:3000]}"
