import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import assert_one_line_error, run_ffx

from components.config import load_config
from components.errors import BadImagesError
from components.features.identity import feature_path
from components.features.store import partial_path, read_features
from components.stages.extract import extract_stage


def test_extraction_writes_features_labels_paths_and_attributes(extracted):
    config, results = extracted.config, extracted.results
    assert set(results) == {"train", "valid", "test"}
    assert [results[s].computed for s in ("train", "valid", "test")] == [24, 12, 12]
    with h5py.File(feature_path(config, "train"), "r") as handle:
        assert handle["features"].shape == (24, 512) and handle["features"].dtype == np.float32
        assert list(handle["labels"][()]) == [0] * 12 + [1] * 12
        assert handle["paths"][0].decode() == "train/blue/blue_00.png"
        attrs = dict(handle.attrs)
    assert attrs["backbone"] == "vgg19" and attrs["weights"] == "none(seed=0)" and attrs["input_size"] == 32
    assert len(attrs["content_hash"]) == 64 and attrs["complete"]
    assert read_features(feature_path(config, "train")).class_names == ["blue", "red"]
    assert not partial_path(feature_path(config, "train")).exists()


def test_unchanged_inputs_are_not_extracted_again(extracted_project):
    config = load_config(extracted_project / "params.yaml")
    again = extract_stage(config)
    assert all(r.cached and r.computed == 0 for r in again.values())
    changed = extract_stage(load_config(extracted_project / "params.yaml", ["backbone.input_size=48"]))
    assert not any(r.cached for r in changed.values())


def test_bad_image_stops_the_run_before_any_feature_is_written(project):
    (project / "data" / "test" / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    config = load_config(project / "params.yaml")
    with pytest.raises(BadImagesError, match="broken.jpg"):
        extract_stage(config)
    assert not config.features.dir.exists() or not any(config.features.dir.iterdir())


def test_skip_mode_reports_bad_images(extracted_project):
    (extracted_project / "data" / "test" / "red" / "broken.jpg").write_bytes(b"")
    config = load_config(extracted_project / "params.yaml", ["data.on_bad_image=skip"])
    results = extract_stage(config)
    assert results["test"].skipped == {"test/red/broken.jpg": "empty file (0 bytes)"}
    assert "test/red/broken.jpg" in (config.features.dir / "skipped.json").read_text()
    assert len(read_features(feature_path(config, "test")).labels) == 12


def test_only_new_images_go_through_the_backbone(extracted_project):
    from conftest import COLOURS, make_image

    project = extracted_project
    config = load_config(project / "params.yaml")
    make_image(project / "data" / "train" / "red" / "new.jpg", COLOURS["red"], (30, 30), seed=999)
    results = extract_stage(config)
    assert results["train"].computed == 1 and results["valid"].cached and results["test"].cached
    train = read_features(feature_path(config, "train"))
    assert len(train.labels) == 25 and "train/red/new.jpg" in train.paths
    (project / "data" / "train" / "red" / "new.jpg").unlink()
    again = extract_stage(config)
    assert again["train"].computed == 0 and not again["train"].cached  # file rebuilt from the cache
    assert len(read_features(feature_path(config, "train")).labels) == 24


def test_a_second_writer_of_the_same_features_is_refused_across_processes(project):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom pathlib import Path\nfrom components.files import output_lock\n"
         "with output_lock(Path(sys.argv[1])):\n    print('locked', flush=True)\n    time.sleep(600)\n",
         str(project / "features" / "train.h5")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = run_ffx(project, "extract")
    finally:
        holder.kill()
        holder.wait()
    assert_one_line_error(result, "features/train.h5", "another process is writing it", f"pid {holder.pid}")
    assert not (project / "features" / "train.h5").exists()


def test_an_image_that_stands_twice_goes_through_the_backbone_once(project):
    blue = project / "data" / "train" / "blue"
    (blue / "copy.png").write_bytes((blue / "blue_00.png").read_bytes())
    config = load_config(project / "params.yaml")
    train = extract_stage(config)["train"]
    assert (train.count, train.computed) == (25, 24)
    features = read_features(feature_path(config, "train"))
    rows = [features.paths.index(f"train/blue/{name}") for name in ("blue_00.png", "copy.png")]
    np.testing.assert_array_equal(features.features[rows[0]], features.features[rows[1]])
