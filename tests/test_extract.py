import h5py
import numpy as np
import pytest

from components.backbone import build_backbone
from components.config import load_config
from components.dataset import scan_dataset
from components.errors import BadImagesError, LockedError
from components.extract import extract_all, extract_split
from components.features import output_lock, partial_path, read_features


def test_extraction_writes_features_labels_paths_and_attributes(project):
    config = load_config(project / "params.yaml")
    results = extract_all(config)
    assert set(results) == {"train", "valid", "test"}
    with h5py.File(config.features.path("train"), "r") as handle:
        assert handle["features"].shape == (24, 512) and handle["features"].dtype == np.float32
        assert list(handle["labels"][()]) == [0] * 12 + [1] * 12
        assert handle["paths"][0].decode() == "train/blue/blue_00.png"
        attrs = dict(handle.attrs)
    assert attrs["backbone"] == "vgg19" and attrs["weights"] == "none(seed=0)" and attrs["input_size"] == 32
    assert len(attrs["content_hash"]) == 64 and attrs["complete"]
    assert read_features(config.features.path("train")).class_names == ["blue", "red"]
    assert not partial_path(config.features.path("train")).exists()


def test_unchanged_inputs_are_not_extracted_again(project):
    config = load_config(project / "params.yaml")
    extract_all(config)
    again = extract_all(config)
    assert all(r.cached for r in again.values())
    changed = extract_all(load_config(project / "params.yaml", ["backbone.input_size=48"]))
    assert not any(r.cached for r in changed.values())


def test_bad_image_stops_the_run_before_any_feature_is_written(project):
    (project / "data" / "test" / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    config = load_config(project / "params.yaml")
    with pytest.raises(BadImagesError, match="broken.jpg"):
        extract_all(config)
    assert not config.features.dir.exists() or not any(config.features.dir.iterdir())


def test_skip_mode_reports_bad_images(project):
    (project / "data" / "test" / "red" / "broken.jpg").write_bytes(b"")
    config = load_config(project / "params.yaml", ["data.on_bad_image=skip"])
    results = extract_all(config)
    assert results["test"].skipped == {"test/red/broken.jpg": "empty file (0 bytes)"}
    assert "test/red/broken.jpg" in (config.features.dir / "skipped.json").read_text()
    assert len(read_features(config.features.path("test")).labels) == 12


class _Interrupt(Exception):
    pass


def _interrupt_after(images: int):
    done = [0]

    def progress(count: int) -> None:
        done[0] += count
        if done[0] >= images:
            raise _Interrupt()
    return progress


def test_interrupted_extraction_resumes_without_redoing_batches(project):
    config = load_config(project / "params.yaml")
    backbone = build_backbone(config.backbone, config.root)
    split = scan_dataset(config.data.root)["train"]
    reference = extract_split(split, backbone, project / "ref.h5", project / "cache-a", 8, 10**8)
    target = project / "resumed.h5"
    with pytest.raises(_Interrupt):  # stopped right after the first batch of 8 was flushed
        extract_split(split, backbone, target, project / "cache-b", 8, 10**8, progress=_interrupt_after(8))
    assert not target.exists()
    resumed = extract_split(split, backbone, target, project / "cache-b", 8, 10**8)
    assert resumed.computed == 16  # the first batch was not recomputed
    np.testing.assert_array_equal(read_features(target).features, read_features(reference.path).features)


def test_only_new_images_go_through_the_backbone(project):
    from conftest import COLOURS, make_image

    config = load_config(project / "params.yaml")
    extract_all(config)
    make_image(project / "data" / "train" / "red" / "new.jpg", COLOURS["red"], (30, 30), seed=999)
    results = extract_all(config)
    assert results["train"].computed == 1 and results["valid"].cached and results["test"].cached
    train = read_features(config.features.path("train"))
    assert len(train.labels) == 25 and "train/red/new.jpg" in train.paths
    (project / "data" / "train" / "red" / "new.jpg").unlink()
    again = extract_all(config)
    assert again["train"].computed == 0 and not again["train"].cached  # file rebuilt from the cache
    assert len(read_features(config.features.path("train")).labels) == 24


def test_a_second_writer_of_the_same_output_is_refused(tmp_path):
    out = tmp_path / "train.h5"
    with output_lock(out):
        with pytest.raises(LockedError, match="another process is writing it"):
            with output_lock(out):
                pass
