"""After a tiny run: plots, trial table and model card on disk, in MLflow, and rendered by `dvc plots show`."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from mlflow.tracking import MlflowClient

from components.model.metrics import wilson_interval
from components.reports.model_card import bootstrap_auc_interval
from components.tracking import tracking_uri

BIN = Path(sys.executable).parent
EVALUATION_PLOTS = {"confusion_matrix.png", "roc.png", "precision_recall.png", "calibration.png",
                    "confident_errors.png"}
SEARCH_FILES = {"parallel_coordinates.png", "objective_by_trial.png", "learning_curves.png", "trials.csv",
                "trials.html"}


def _artifacts(client, run_id, path):
    return {Path(f.path).name for f in client.list_artifacts(run_id, path)}


def test_registered_models_run_holds_the_plots_trial_table_and_model_card(tiny_run):
    client = MlflowClient(tracking_uri(tiny_run.config), registry_uri=tracking_uri(tiny_run.config))
    champion = client.get_model_version_by_alias("ffx-classifier", "champion")
    assert champion.run_id == tiny_run.search.parent_run_id == tiny_run.evaluation.registration.run_id
    assert _artifacts(client, champion.run_id, "evaluation") >= EVALUATION_PLOTS | {"model_card.md"}
    assert _artifacts(client, champion.run_id, "search") == SEARCH_FILES
    card = client.download_artifacts(champion.run_id, "evaluation/model_card.md")
    assert Path(card).read_text() == (tiny_run.config.reports.dir / "model_card.md").read_text()


def test_reports_folder_holds_byte_for_byte_what_mlflow_holds(tiny_run, tmp_path):
    # How each figure is drawn is tests/test_plots.py's business; here: the pipeline's copies are the same files.
    client = MlflowClient(tracking_uri(tiny_run.config), registry_uri=tracking_uri(tiny_run.config))
    run_id = tiny_run.evaluation.registration.run_id
    reports = tiny_run.config.reports.dir
    for folder, names in (("evaluation", EVALUATION_PLOTS), ("search", SEARCH_FILES)):
        assert {p.name for p in (reports / folder).iterdir()} == names
        logged = Path(client.download_artifacts(run_id, folder, str(tmp_path)))
        for name in names:
            assert (logged / name).read_bytes() == (reports / folder / name).read_bytes(), f"{folder}/{name}"


def test_model_card_covers_data_model_search_metrics_limits_and_reproduction(tiny_run):
    card = (tiny_run.config.reports.dir / "model_card.md").read_text()
    for heading in ("## Data", "## Model", "## Search", "## Test metrics", "## Known limits", "## Reproduce"):
        assert heading in card
    assert "| train | 12 | 12 | 24 |" in card and "| test | 6 | 6 | 12 |" in card  # counts per class and split
    assert "Backbone: `vgg19`, weights `none`" in card and "input 32×32" in card
    hps = tiny_run.search.hyperparameters
    assert f"`units` = {hps['units']}" in card and f"`dropout` = {hps['dropout']}" in card
    assert "3 trials × 1 execution(s)" in card and tiny_run.search.parent_run_id in card
    accuracy = tiny_run.evaluation.metrics["accuracy"]
    low, high = wilson_interval(round(accuracy * 12), 12)
    assert f"| accuracy | {100 * accuracy:.1f}% | {100 * low:.1f}% – {100 * high:.1f}% |" in card
    assert "Class balance (train): largest class 12 images, smallest 12" in card
    assert "resized to 32×32 pixels" in card and "Small test set (12 images)" in card
    assert "`ffx evaluate --params params.yaml`" in card and "no `dvc.lock`" in card
    assert "dvc repro" in card


def test_wilson_interval_matches_the_textbook_values():
    low, high = wilson_interval(9, 10)
    assert (round(low, 4), round(high, 4)) == (0.5958, 0.9821)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_bootstrap_auc_interval_of_a_perfect_model_and_of_a_one_class_test_split():
    import numpy as np

    labels = np.array([0, 1] * 20)
    perfect = np.stack([1 - labels, labels], axis=1).astype(float)
    assert bootstrap_auc_interval(labels, perfect, samples=200) == (1.0, 1.0)
    assert bootstrap_auc_interval(np.zeros(4, dtype=int), perfect[:4], samples=200) is None


@pytest.mark.e2e
def test_dvc_plots_show_writes_html_with_confusion_matrix_and_roc(tiny_run, tmp_path):
    # A copy of the finished run, so that `dvc init` does not touch the shared one.
    project = tmp_path / "project"
    shutil.copytree(tiny_run.root, project, ignore=shutil.ignore_patterns("mlruns", "features", ".ffx"))
    shutil.copy(REPO / "dvc.yaml", project / "dvc.yaml")
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    for args in (["dvc", "init", "--no-scm", "-q"], ["dvc", "plots", "show", "-o", "plots_html"]):
        result = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    html = (project / "plots_html" / "index.html").read_text()
    assert "metrics/test_predictions.csv" in html and "metrics/roc.csv" in html  # DVC's own confusion and ROC
    assert '"title": "predicted"' in html and '"title": "fpr"' in html
    for name in EVALUATION_PLOTS:
        assert f"reports/evaluation/{name}" in html
        assert (project / "plots_html" / "static" / f"workspace_reports_evaluation_{name}").is_file()
    assert "reports/search/parallel_coordinates.png" in html


def test_the_model_card_is_written_from_what_the_stage_hands_it_without_reaching_mlflow(tiny_run, tmp_path):
    """The card takes the search's experiment id for its MLflow links: writing it asks no tracking store (here one
    that does not answer), so a card can be written where MLflow is not set up."""
    from conftest import free_port

    from components.config import load_config
    from components.features.identity import feature_path
    from components.features.store import read_features
    from components.model.head_file import head_paths, load_head
    from components.model.metrics import evaluate_head
    from components.reports.model_card import write_model_card

    config = load_config(tiny_run.config.source, [f"mlflow.tracking_uri=http://127.0.0.1:{free_port()}",
                                                  f"reports.dir={tmp_path / 'reports'}"])
    model, metadata = load_head(head_paths(config)[0])
    test = read_features(feature_path(config, "test"))
    metrics, probabilities = evaluate_head(model, test)
    card = write_model_card(config, "42", metadata, metrics, test, probabilities, "ffx evaluate")
    assert card == tmp_path / "reports" / "model_card.md"
    assert "/#/experiments/42?workflowType=machine_learning" in card.read_text()
