"""The whole path a user walks: `dvc repro` in a fresh DVC repository, then `ffx predict`."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from conftest import REPO, make_dataset, write_params
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


def _run(args, cwd, check=True):
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def _dvc_project(tmp_path: Path, classes) -> Path:
    """A user's checkout: the pipeline files and code, a tiny dataset, fast params, git + DVC initialised."""
    for item in ("dvc.yaml", "components", "ffx"):
        source = REPO / item
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / item)
    make_dataset(tmp_path / "data", classes=classes)
    write_params(tmp_path, mlflow={"experiment": "tiny"})
    _run(["git", "init", "-q"], tmp_path)
    _run(["dvc", "init", "-q"], tmp_path)
    _run(["dvc", "config", "core.analytics", "false"], tmp_path)
    return tmp_path


def _stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


@pytest.mark.parametrize("classes", [("blue", "red"), ("blue", "green", "red")])
def test_dvc_repro_runs_the_whole_pipeline_and_predict_uses_the_champion(tmp_path, classes):
    project = _dvc_project(tmp_path, classes)
    first = _run(["dvc", "repro"], project)
    stages = _stages_run(first.stdout)  # audit and tune both follow extract, in an order DVC picks
    assert stages[0] == "extract" and sorted(stages) == ["audit", "evaluate", "extract", "finetune", "tune"]
    assert stages.index("tune") < stages.index("finetune") < stages.index("evaluate") > stages.index("audit")
    assert "WARNING" not in first.stdout + first.stderr, first.stdout + first.stderr  # e.g. an empty output folder

    with h5py.File(project / "features" / "test.h5", "r") as handle:
        assert handle["features"].shape == (6 * len(classes), 512)
        assert [c for c in json.loads(handle.attrs["class_names"])] == list(classes)

    uri = f"sqlite:///{project}/mlruns/mlflow.db"
    client = MlflowClient(uri, registry_uri=uri)  # explicit: other tests set a process-wide registry URI
    experiment = client.get_experiment_by_name("tiny")
    parents = client.search_runs([experiment.experiment_id], "tags.ffx_kind = 'search'")
    assert len(parents) == 1
    trials = client.search_runs([experiment.experiment_id],
                                f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    assert len(trials) == 3
    for trial in trials:
        assert {"units", "dropout", "extra_units"} <= set(trial.data.params)
        assert len(client.get_metric_history(trial.info.run_id, "val_accuracy")) == 2
    champion = client.get_model_version_by_alias("ffx-classifier", "champion")
    assert champion.run_id == parents[0].info.run_id

    metrics = json.loads((project / "metrics" / "test.json").read_text())
    assert set(metrics) >= {"loss", "accuracy", "per_class", "roc_auc"}
    assert set(metrics["per_class"]) == set(classes)
    (shown,) = json.loads(_run(["dvc", "metrics", "show", "--json"], project).stdout).values()
    # DVC reads the stage's metrics file: every number in it (it leaves out lists: the confusion matrix)
    assert shown["data"]["metrics/test.json"]["data"] == {k: v for k, v in metrics.items() if not isinstance(v, list)}

    predicted = _run(["ffx", "predict", "data/test", "--json"], project).stdout.splitlines()
    assert len(predicted) == 6 * len(classes)
    rows = [json.loads(line) for line in predicted]
    assert all(row["class"] in classes and 0 < row["probability"] <= 1 for row in rows)
    plain = _run(["ffx", "predict", f"data/test/{classes[0]}/{classes[0]}_00.png"], project).stdout.split("\t")
    assert plain[0].endswith(f"{classes[0]}_00.png") and plain[1] in classes

    if len(classes) == 2:
        # Nothing changed: nothing runs. A tuner param: no re-extraction. The input size: everything again.
        assert _stages_run(_run(["dvc", "repro"], project).stdout) == []
        # An edit to the model card's code makes only the stage that runs it out of date, not the search.
        card = project / "components" / "reports" / "model_card.py"
        card.write_text(card.read_text() + "# an edit\n")
        assert set(json.loads(_run(["dvc", "status", "--json"], project).stdout)) == {"evaluate"}
        card.write_text(card.read_text().removesuffix("# an edit\n"))
        write_params(project, mlflow={"experiment": "tiny"}, tuner={"max_trials": 2})
        assert _stages_run(_run(["dvc", "repro"], project).stdout) == ["tune", "finetune", "evaluate"]
        write_params(project, mlflow={"experiment": "tiny"}, tuner={"max_trials": 2},
                     backbone={"input_size": 40})
        assert _stages_run(_run(["dvc", "repro"], project).stdout)[0] == "extract"
