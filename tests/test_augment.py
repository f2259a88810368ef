"""Extraction-time augmentation: seeded views of train images only, linked to their source, cached by content."""
import json

import numpy as np
import pytest

from components.config import AugmentConfig, load_config
from components.data.augment import FLIP, View, augmented_views, mirrored, row_key
from components.errors import ConfigError, FFXError
from components.features.identity import feature_path, load_split_features
from components.features.store import read_features
from components.stages.extract import extract_stage

AUGMENT = ["extract.augment.copies=2"]


def _augment(**changes):
    values = dict(copies=3, seed=0, flip=True, crop=0.1, brightness=0.1, contrast=0.1)
    values.update(changes)
    return AugmentConfig(**values)


def test_views_are_decided_by_image_content_seed_and_copy():
    views = augmented_views("ab" * 20, _augment())
    assert views == augmented_views("ab" * 20, _augment())
    assert len(set(views)) == 3
    assert views != augmented_views("cd" * 20, _augment())
    assert views != augmented_views("ab" * 20, _augment(seed=1))
    assert all(0.9 <= v.crop <= 1 and abs(v.brightness) <= 0.1 and 0.9 <= v.contrast <= 1.1 for v in views)
    assert not any(v.flip for v in augmented_views("ab" * 20, _augment(copies=8, flip=False)))


def test_the_tta_mirror_of_a_batch_is_each_images_flipped_view():
    images = np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(mirrored(images), np.stack([FLIP.apply(image) for image in images]))
    np.testing.assert_array_equal(mirrored(images)[:, :, ::-1], images)


def test_view_transforms_keep_the_image_size_and_type():
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(FLIP.apply(image), image[:, ::-1])
    zoomed = View(crop=0.5, top=1.0, left=0.0).apply(image)
    assert zoomed.shape == image.shape and zoomed.dtype == np.uint8
    brighter = View(brightness=0.1).apply(image)
    assert brighter.astype(int).mean() > image.astype(int).mean()
    assert row_key("ab" * 20, View()) == "ab" * 20 and row_key("ab" * 20, FLIP) != "ab" * 20


def test_train_views_are_stored_with_their_source_and_other_splits_are_not_augmented(extracted_project):
    project = extracted_project
    config = load_config(project / "params.yaml", AUGMENT)
    results = extract_stage(config)
    train = read_features(feature_path(config, "train"))
    assert results["train"].count == len(train.labels) == 24 * 3
    assert list(train.source[:24]) == list(range(24)) and list(train.source[24:30]) == [0, 0, 1, 1, 2, 2]
    assert [train.paths[i] for i in train.source] == train.paths and np.array_equal(train.labels[train.source],
                                                                                  train.labels)
    assert not np.allclose(train.features[24], train.features[0])  # a view is not its source
    assert train.attrs["views"]["augment"]["copies"] == 2
    for split in ("valid", "test"):
        plain = read_features(feature_path(config, split))
        assert len(plain.labels) == 12 and plain.source is None and "views" not in plain.attrs
    # Tuning reads every view; the file is refused once the augmentation settings change.
    assert len(load_split_features(config, "train").labels) == 72
    with pytest.raises(FFXError, match="train.h5: made with"):
        load_split_features(load_config(project / "params.yaml", AUGMENT + ["extract.augment.seed=5"]), "train")


def test_views_are_cached_and_only_new_views_are_computed(extracted_project):
    project = extracted_project
    plain = read_features(feature_path(load_config(project / "params.yaml"), "train")).features
    config = load_config(project / "params.yaml", AUGMENT)
    assert extract_stage(config, splits=("train",))["train"].computed == 48  # the originals came from the cache
    np.testing.assert_array_equal(read_features(feature_path(config, "train")).features[:24], plain)
    assert extract_stage(config, splits=("train",))["train"].cached
    reseeded = extract_stage(load_config(project / "params.yaml", AUGMENT + ["extract.augment.seed=1"]),
                           splits=("train",))
    assert reseeded["train"].computed == 48 and not reseeded["train"].cached


def test_default_extraction_has_no_views(extracted):
    train = read_features(feature_path(extracted.config, "train"))
    assert train.source is None and len(train.labels) == 24 and "views" not in train.attrs


@pytest.mark.parametrize("override, message", [("copies=-1", "'extract.augment.copies' must be 0"),
                                               ("crop=1.5", "'extract.augment.crop' must be at least 0"),
                                               ("flip=maybe", "'extract.augment.flip' must be true or false")])
def test_bad_augmentation_settings_are_named(project, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(project / "params.yaml", [f"extract.augment.{override}"])


def test_search_trains_on_every_view_and_records_the_augmentation(extracted_project):
    from mlflow.tracking import MlflowClient

    from components.search.tuner import run_search
    from components.tracking import tracking_uri

    config = load_config(extracted_project / "params.yaml", AUGMENT + ["tuner.max_trials=1"])
    extract_stage(config, splits=("train", "valid"))
    result = run_search(config, load_split_features(config, "train"), load_split_features(config, "valid"))
    tags = MlflowClient(tracking_uri(config)).get_run(result.parent_run_id).data.tags
    assert tags["train_rows"] == "72" and json.loads(tags["augment"])["copies"] == 2
    assert tags["pooling"] == "flatten" and tags["layer"] == "last"
