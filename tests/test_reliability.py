"""What a user sees when data, params, models or the tracking server are wrong, and how failed trials are kept."""
import json
import os
import shutil
import socket
from pathlib import Path

import pytest
from conftest import assert_one_line_error, ffx_process, run_ffx, write_params
from mlflow.tracking import MlflowClient

from components.config import load_config
from components.errors import ConfigError, FFXError, UnsafeModelError
from components.tracking import tracking_uri


def closed_port() -> int:
    """A local port nothing listens on: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _link_loop(project):
    os.symlink("..", project / "data" / "train" / "blue" / "loop")  # train/blue/loop -> train


def _no_classes_in_valid(project):
    for folder in (project / "data" / "valid").iterdir():
        shutil.rmtree(folder)


def _all_red_train_images_corrupt(project):
    for path in (project / "data" / "train" / "red").iterdir():
        path.write_bytes(b"\x89PNG\r\n\x1a\n truncated")


def _corrupt_weights_file(project):
    (project / "corrupt.weights.h5").write_bytes(b"\0" * 64)


def _empty_train_image(project):
    (project / "data" / "train" / "red" / "bad.jpg").write_bytes(b"")


CLI_FAILURES = {
    "bad_image": (_empty_train_image, ["extract"], ["1 bad image(s) in", "data/train"]),  # files on the next lines
    "symlink_loop": (_link_loop, ["extract"], ["data/train/blue/loop", "symbolic link loop"]),
    "split_without_classes": (_no_classes_in_valid, ["extract"], ["data/valid", "no class folders"]),
    "class_empty_after_skipping": (_all_red_train_images_corrupt, ["extract", "--set", "data.on_bad_image=skip"],
                                   ["data/train/red", "no usable images left"]),
    "input_size_below_minimum": (None, ["extract", "--set", "backbone.input_size=16"],
                                 ["'backbone.input_size' 16", "minimum of 32"]),
    "unreadable_weights_file": (_corrupt_weights_file, ["extract", "--set", "backbone.weights=corrupt.weights.h5"],
                                ["'backbone.weights'", "corrupt.weights.h5"]),
    "empty_search_space": (None, ["tune", "--set", "space.units=[]"], ["'space.units'", "non-empty"]),
    "unknown_tuner_algorithm": (None, ["tune", "--set", "tuner.algorithm=grid"], ["'tuner.algorithm' must be one of"]),
    "unreachable_tracking_server": (None, ["extract", "--set", "mlflow.tracking_uri=http://127.0.0.1:{port}"],
                                    ["mlflow.tracking_uri", "does not answer"]),
}


@pytest.mark.parametrize("case", CLI_FAILURES)
def test_cli_refuses_before_any_work_with_one_line_naming_the_culprit(project, case):
    breakage, args, fragments = CLI_FAILURES[case]
    if breakage:
        breakage(project)
    args = [a.format(port=closed_port()) for a in args]
    assert_one_line_error(run_ffx(project, *args), *fragments)
    assert not (project / "features").exists()  # nothing extracted, nothing half-written


def test_debug_flag_lets_the_error_through_with_its_traceback(project):
    with pytest.raises(ConfigError, match="'backbone.input_size' 16"):  # main() re-raises: Python prints it
        run_ffx(project, "--debug", "extract", "--set", "backbone.input_size=16")


def test_installed_ffx_command_prints_one_error_line_or_with_debug_the_traceback(project):
    """The one test of the real entry point (the others run ffx.cli.main in-process, see `run_ffx`)."""
    _empty_train_image(project)
    result = ffx_process(project, "extract")
    assert result.stderr.startswith("error: 1 bad image(s)") and "train/red/bad.jpg: empty file" in result.stderr
    assert_one_line_error(result, "data/train")
    debug = ffx_process(project, "--debug", "extract", "--set", "backbone.input_size=16")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr
    assert not (project / "features").exists()


def test_links_to_one_folder_from_two_places_are_refused_as_duplicates(project, tmp_path_factory):
    from components.data.dataset import scan_dataset
    from components.errors import DatasetError

    outside = tmp_path_factory.mktemp("outside")
    shutil.copy(next((project / "data" / "train" / "blue").glob("*.jpg")), outside / "x.jpg")
    for name in ("a", "b"):
        os.symlink(outside, project / "data" / "train" / "blue" / name)
    with pytest.raises(DatasetError, match=r"train/blue/b: folder reached twice through symbolic links"):
        scan_dataset(project / "data")


def _save_lambda_head(folder: Path):
    import keras

    inputs = keras.Input((4,), name="features")
    outputs = keras.layers.Lambda(lambda x: x * 2.0)(inputs)  # Python code stored in the file
    folder.mkdir(parents=True, exist_ok=True)
    keras.Model(inputs, outputs).save(folder / "head.keras")
    metadata = {"class_names": ["blue", "red"], "weights_id": "none(seed=0)",
                "backbone": {"name": "vgg19", "weights": "none", "input_size": 32, "seed": 0}}
    (folder / "head.json").write_text(json.dumps(metadata))
    return folder / "head.keras"


def test_predict_refuses_a_model_that_needs_unsafe_deserialisation(project):
    from components.model.head_file import load_head

    model_path = _save_lambda_head(project / "elsewhere")
    with pytest.raises(UnsafeModelError, match="Lambda layer"):
        load_head(model_path)
    image = next((project / "data" / "test" / "blue").glob("*.jpg"))
    assert_one_line_error(run_ffx(project, "predict", str(image), "--model", str(model_path)),
                          "elsewhere/head.keras", "refused", "safe_mode")


def test_registered_model_is_loaded_in_safe_mode(project):
    """A registry version whose head file was swapped for one that runs code is refused when loaded: already when
    registration scores it against the champion, and by prediction."""
    import numpy as np

    from components.model.comparison import ComparisonImages
    from components.model.predict import load_classifier
    from components.model.registry import register_classifier
    from components.tracking import setup_mlflow

    config = load_config(project / "params.yaml")
    client, experiment_id = setup_mlflow(config)
    head_file = _save_lambda_head(project / "unsafe")
    metadata = json.loads((project / "unsafe" / "head.json").read_text())
    metadata["backbone"].update(pooling="flatten", layer="last", precision="float32")
    metadata["search"] = {"parent_run_id": client.create_run(experiment_id).info.run_id}
    image = next((project / "data" / "test" / "blue").glob("*.jpg"))
    images = ComparisonImages("test", [image], np.array([0]), metadata["class_names"], "one image")
    with pytest.raises(UnsafeModelError, match="head.keras: refused"):
        register_classifier(config, client, experiment_id, head_file, metadata, {"accuracy": 0.5}, image, images)
    with pytest.raises(UnsafeModelError, match="head.keras: refused"):
        load_classifier(config, f"models:/{config.mlflow.registered_model}/1")


@pytest.fixture(scope="module")
def skipped_image_project(extracted, tmp_path_factory):
    """The session's extracted project plus an empty train image left out by data.on_bad_image: skip, shared by the
    tuning tests (each uses its own experiment)."""
    from components.stages.extract import extract_stage

    root = shutil.copytree(extracted.root, tmp_path_factory.mktemp("skipped") / "project", symlinks=True)
    (root / "data" / "train" / "blue" / "empty.jpg").write_bytes(b"")
    write_params(root, data={"on_bad_image": "skip"},
                 tuner={"algorithm": "random", "max_trials": 3, "executions_per_trial": 1})
    shutil.rmtree(root / "features")  # the files are rebuilt, recording the skipped image; features from the cache
    extract_stage(load_config(root / "params.yaml"))
    return root


def _search_with_failing_epochs(project: Path, experiment: str, failing_calls: set[int], monkeypatch,
                                heads: int = 1):
    """run_search where the given epochs of the training raise (a fault injected into real training): an epoch
    of one head (tuner.parallel_heads 1) or of a group of heads trained at once."""
    from components.features.identity import load_split_features
    from components.search.head_group import HeadGroup
    from components.search.tuner import run_search

    real, calls = HeadGroup.step, []

    def failing(self):
        calls.append(1)
        if len(calls) in failing_calls:
            raise RuntimeError(f"injected failure in step call {len(calls)}")
        return real(self)

    monkeypatch.setattr(HeadGroup, "step", failing)
    config = load_config(project / "params.yaml", [f"mlflow.experiment={experiment}", f"tuner.parallel_heads={heads}",
                                                    f"tuner.directory=.ffx/tuner-{experiment}"])
    train, valid = load_split_features(config, "train"), load_split_features(config, "valid")
    client = MlflowClient(tracking_uri(config))
    try:
        return config, client, run_search(config, train, valid)
    except FFXError as error:
        return config, client, error


def _runs(client, config, kind_filter: str):
    experiment = client.get_experiment_by_name(config.mlflow.experiment)
    return client.search_runs([experiment.experiment_id], kind_filter)


def test_failing_trial_is_recorded_failed_with_its_error_and_the_search_goes_on(skipped_image_project, monkeypatch):
    config, client, result = _search_with_failing_epochs(skipped_image_project, "one-fails", {1}, monkeypatch)
    assert not isinstance(result, FFXError), result
    trials = _runs(client, config, f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert sorted(r.info.status for r in trials) == ["FAILED", "FINISHED", "FINISHED"]
    (failed,) = [r for r in trials if r.info.status == "FAILED"]
    assert "injected failure in step call 1" in failed.data.tags["error"]
    assert failed.data.tags["trial_status"] == "FAILED"
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_failed"] == 1
    assert parent.data.tags["skipped_images"] == "1"  # the bad image left out at extraction is on record


def test_a_failing_group_of_heads_fails_its_trials_and_the_search_goes_on(skipped_image_project, monkeypatch):
    config, client, result = _search_with_failing_epochs(skipped_image_project, "group-fails", {1}, monkeypatch,
                                                       heads=2)  # trials 0 and 1 train together, then trial 2
    assert not isinstance(result, FFXError), result
    trials = _runs(client, config, f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert sorted(r.info.status for r in trials) == ["FAILED", "FAILED", "FINISHED"]
    assert all("injected failure in step call 1" in r.data.tags["error"] for r in trials if r.info.status == "FAILED")
    assert client.get_run(result.parent_run_id).data.metrics["trials_failed"] == 2


def test_search_whose_trials_all_fail_stops_with_a_clear_error_and_leaves_no_run_open(skipped_image_project,
                                                                                     monkeypatch):
    config, client, result = _search_with_failing_epochs(skipped_image_project, "all-fail", {1, 2, 3}, monkeypatch)
    assert isinstance(result, FFXError) and "tuning stopped" in str(result)
    assert "injected failure in step call 3" in str(result)
    runs = _runs(client, config, "attributes.status != 'FAILED'")
    assert runs == []  # parent and all three trials closed as FAILED, none left RUNNING
    trials = _runs(client, config, "tags.ffx_trial_id != ''")
    assert len(trials) == 3 and all("injected failure" in r.data.tags["error"] for r in trials)
