"""Registration of the end-to-end classifier: champion/challenger aliases, one shared copy of the backbone weights."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_params
from mlflow.tracking import MlflowClient

from components.config import load_config
from components.errors import FFXError
from components.features.identity import feature_path, load_split_features, valid_parts
from components.features.store import read_features
from components.model.backbone_weights import WEIGHTS_KIND
from components.model.comparison import ComparisonImages
from components.model.head_file import head_paths, load_head
from components.model.registry import register_classifier
from components.tracking import backbones_experiment, setup_mlflow, tracking_uri


def _store(tmp_path, tiny_run, *overrides):
    """A fresh MLflow store next to the tiny run's data, head and features."""
    return load_config(write_params(tmp_path, data={"root": str(tiny_run.config.data.root)}), list(overrides))


def _held_out(tiny_run) -> ComparisonImages:
    """The tiny run's valid images held out for decisions: what registry.compare_split valid compares on."""
    config = tiny_run.config
    _, held = valid_parts(config, load_split_features(config, "valid"))
    return ComparisonImages.of(config.data.root, held, "valid_held_out")


def _register(config, tiny_run, images: ComparisonImages | None = None, head_file: Path | None = None):
    """Register a head (the tiny run's by default) as a new version under a new parent run, compared on `images`."""
    client, experiment_id = setup_mlflow(config)
    run_id = client.create_run(experiment_id).info.run_id
    client.set_terminated(run_id)
    head_file = head_file or head_paths(tiny_run.config)[0]
    _, metadata = load_head(head_file)
    metadata["search"].update(parent_run_id=run_id)
    test = read_features(feature_path(tiny_run.config, "test"))
    return register_classifier(config, client, experiment_id, head_file, metadata, {"accuracy": 0.5, "loss": 0.5},
                               tiny_run.config.data.root / test.paths[0], images or _held_out(tiny_run))


def _constant_head(tiny_run, folder: Path) -> Path:
    """The tiny run's head made to answer the second class for every image: a model worse than the search's."""
    import shutil

    import numpy as np

    source = head_paths(tiny_run.config)[0]
    model, _ = load_head(source)
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([np.zeros_like(kernel), np.full_like(bias, 20.0)])
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / source.name)
    shutil.copy2(source.with_name("head.json"), folder / "head.json")
    return folder / source.name


def _accuracy_now(config, version: str, images: ComparisonImages) -> float:
    """A registered version's accuracy on `images`, by its own MLflow model, outside the code under test."""
    import mlflow
    import numpy as np

    setup_mlflow(config)
    model = mlflow.pyfunc.load_model(f"models:/{config.mlflow.registered_model}/{version}")
    predicted = model.predict(pd.DataFrame({"path": [str(p) for p in images.paths]}))["class"]
    return float(np.mean([images.class_names[label] == guess for label, guess in zip(images.labels, predicted)]))


def test_a_challenger_that_only_ties_the_champion_leaves_the_alias(tmp_path, tiny_run):
    config = _store(tmp_path, tiny_run)
    first = _register(config, tiny_run)
    assert first.promoted and first.champion_score is None
    same = _register(config, tiny_run)  # the same head: the same score on the same images
    assert not same.promoted and same.champion_score == pytest.approx(same.score)
    client = MlflowClient(tracking_uri(config), registry_uri=tracking_uri(config))
    name = config.mlflow.registered_model
    assert str(client.get_model_version_by_alias(name, "champion").version) == first.version
    run = client.get_run(same.run_id).data
    assert "kept champion" in run.tags["promotion"] and run.tags["comparison_split"] == "valid_held_out"
    assert run.tags["comparison_split_hash"] == _held_out(tiny_run).content_hash
    assert run.metrics["champion_score"] == pytest.approx(run.metrics["challenger_score"])
    always = load_config(tmp_path / "params.yaml", ["registry.promote=always"])
    assert _register(always, tiny_run).promoted


def test_the_champion_is_scored_now_on_the_images_of_today(tmp_path, tiny_run):
    """A champion registered on other images is scored again on the comparison images of today, by its own model:
    its stored score from the day it was registered plays no part, and the decision follows from today's scores."""
    import shutil

    config = _store(tmp_path, tiny_run, "registry.promote=always")
    bad = _register(config, tiny_run, head_file=_constant_head(tiny_run, tmp_path / "constant"))
    assert bad.promoted  # the champion: a constant answer, registered on the held-out images of its day
    # Today's images: the held-out ones plus a copy of each first-class one filed under the second class
    before = _held_out(tiny_run)
    paths, labels = list(before.paths), list(before.labels)
    for path, label in zip(before.paths, before.labels):
        if label != 0:
            continue
        copy = tmp_path / "today" / before.class_names[1] / path.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, copy)
        paths.append(copy)
        labels.append(1)
    today = ComparisonImages("valid_held_out", paths, np.array(labels), before.class_names, "today")
    config = load_config(tmp_path / "params.yaml", ["registry.promote=if_better"])
    challenger = _register(config, tiny_run, images=today)
    client = MlflowClient(tracking_uri(config), registry_uri=tracking_uri(config))
    logged = client.get_run(challenger.run_id).data.metrics
    assert logged["champion_score"] == pytest.approx(_accuracy_now(config, bad.version, today))
    assert logged["champion_score"] != pytest.approx(bad.score)  # not the score of the day it was registered
    assert logged["challenger_score"] == pytest.approx(_accuracy_now(config, challenger.version, today))
    assert challenger.promoted == (logged["challenger_score"] > logged["champion_score"])
    name = config.mlflow.registered_model
    expected = challenger.version if challenger.promoted else bad.version
    assert str(client.get_model_version_by_alias(name, "champion").version) == expected


def test_a_registry_error_other_than_a_missing_alias_promotes_nothing(tmp_path, tiny_run):
    """Only a missing alias means "no champion": a registry that fails to answer is one error line, and neither a
    version nor the alias moves."""
    import sqlite3

    config = _store(tmp_path, tiny_run)
    first = _register(config, tiny_run)
    database = tmp_path / "mlruns" / "mlflow.db"
    with sqlite3.connect(database) as connection:  # the registry's alias table unreadable: a store fault
        connection.execute("ALTER TABLE registered_model_aliases RENAME TO aliases_moved")
    with pytest.raises(FFXError, match="nothing was promoted") as raised:
        _register(config, tiny_run)
    assert "\n" not in str(raised.value)
    with sqlite3.connect(database) as connection:
        connection.execute("ALTER TABLE aliases_moved RENAME TO registered_model_aliases")
    client = MlflowClient(tracking_uri(config), registry_uri=tracking_uri(config))
    name = config.mlflow.registered_model
    assert str(client.get_model_version_by_alias(name, "champion").version) == first.version
    assert [str(v.version) for v in client.search_model_versions(f"name = '{name}'")] == [first.version]


def test_every_version_refers_to_one_shared_copy_of_the_backbone_weights(tmp_path, tiny_run):
    config = _store(tmp_path, tiny_run)
    versions = [_register(config, tiny_run).version for _ in range(2)]
    client, experiment_id = setup_mlflow(config)
    assert not client.search_runs([experiment_id], f"tags.ffx_kind = '{WEIGHTS_KIND}'")  # not among the searches
    weights_runs = client.search_runs([backbones_experiment(config, client)], f"tags.ffx_kind = '{WEIGHTS_KIND}'")
    assert len(weights_runs) == 1
    name = config.mlflow.registered_model
    uris = {client.get_model_version(name, v).tags["backbone_weights"] for v in versions}
    assert uris == {weights_runs[0].data.tags["ffx_weights_uri"]}
    assert int(weights_runs[0].data.tags["ffx_weights_bytes"]) > 50_000_000  # VGG19's convolutions, once
    for version in versions:  # a version holds the head, its spec and code: far less than the weights
        source = Path(client.get_model_version_download_uri(name, version).removeprefix("file://"))
        assert sum(f.stat().st_size for f in source.rglob("*") if f.is_file()) < 5_000_000


def test_a_registered_version_loads_and_leaves_no_copy_of_the_backbone_weights_behind(tmp_path, tiny_run,
                                                                                      monkeypatch):
    """Loading a version fetches the shared weights into a temporary folder it removes (a copy per load would fill
    a disk)."""
    import tempfile

    import numpy as np
    import pandas as pd

    from components.model.registry import load_registered_classifier

    config = _store(tmp_path, tiny_run)
    version = _register(config, tiny_run).version
    name = config.mlflow.registered_model
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where MLflow and ffx put their temporary copies
    model = load_registered_classifier(config, f"models:/{name}/{version}")
    assert not list(scratch.rglob("*.weights.h5"))
    image = tiny_run.config.data.root / read_features(feature_path(tiny_run.config, "test")).paths[0]
    (probability,) = model.predict(pd.DataFrame({"path": [str(image)]}))["probability"]
    assert 0.0 <= probability <= 1.0 and np.isfinite(probability)


def _calls_of(function_name: str, files: set[str]) -> list[str]:
    """`file:function` for each call of `function_name` in `files`, by the function it is made in."""
    import ast

    from conftest import REPO

    calls = []
    for file in sorted(f for f in files if f.endswith(".py")):
        for function in ast.walk(ast.parse((REPO / file).read_text())):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                calls += [f"{file}:{function.name}" for node in ast.walk(function)
                          if isinstance(node, ast.Call) and getattr(node.func, "id", None) == function_name]
    return calls


def test_evaluate_sets_up_mlflow_once_and_hands_the_client_and_experiment_on():
    """setup_mlflow sets process-wide URIs: the evaluate stage calls it once, and the model card and the
    registration take the client and the experiment it returned. Only loading a version by itself (`ffx predict`)
    sets the store up on its own, and registration does not go through it."""
    from components.codebase import closure_files

    calls = _calls_of("setup_mlflow", closure_files(["components.stages.evaluate"]))
    assert sorted(calls) == ["components/model/registry.py:load_registered_classifier",
                             "components/stages/evaluate.py:evaluate_stage"]
    assert not _calls_of("load_registered_classifier", {"components/model/registry.py"})
