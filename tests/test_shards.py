"""Shards on their own; merged shards against single-process features: tests/test_flows.py (Dask, e2e)."""
import numpy as np
from conftest import COLOURS, make_image

from components.config import load_config
from components.features.backbone import build_backbone
from components.features.extraction import plan_extraction
from components.features.shards import extract_shard
from components.features.store import read_features


def _valid_shards(project, *overrides):
    """Both shards of the valid split (12 images: 10 + 2 rows), extracted or found finished (one backbone)."""
    config = load_config(project / "params.yaml", ["extract.shard_size=10", *overrides])
    split = plan_extraction(config).splits["valid"]
    backbone = build_backbone(config.backbone, config.root, config.extract.precision)
    return split, [extract_shard(config, split, index, backbone=backbone) for index in (0, 1)]


def test_finished_shards_are_not_extracted_again(project):
    config = load_config(project / "params.yaml", ["extract.shard_size=10"])
    split = plan_extraction(config).splits["valid"]
    first = extract_shard(config, split, 1)
    assert first.computed == 2
    assert extract_shard(config, split, 1).computed == 0


def test_a_shard_is_extracted_again_when_one_of_its_images_changes_and_only_that_shard(project):
    split, before = _valid_shards(project)
    assert [s.computed for s in before] == [10, 2]
    old = [read_features(s.path).features for s in before]
    changed = split.records[11].path  # the second row of shard 1; same name, other content
    make_image(changed, COLOURS["blue"], (40, 40), seed=999)

    split, after = _valid_shards(project)
    assert [s.computed for s in after] == [0, 2]  # shard 0's images did not change
    new = [read_features(s.path).features for s in after]
    np.testing.assert_array_equal(new[0], old[0])
    np.testing.assert_array_equal(new[1][0], old[1][0])  # the unchanged image of shard 1: the same features
    assert not np.allclose(new[1][1], old[1][1])  # the changed image: its new features
    assert read_features(after[1].path).paths == [r.relpath for r in split.records[10:]]


def test_every_shard_is_extracted_again_when_the_backbone_changes(project):
    _, before = _valid_shards(project)
    old = [read_features(s.path).features for s in before]
    _, after = _valid_shards(project, "backbone.seed=1")  # other random weights: other features for every image
    assert [s.computed for s in after] == [10, 2]
    assert all(not np.allclose(read_features(s.path).features, o) for s, o in zip(after, old))
    _, again = _valid_shards(project, "backbone.seed=1")
    assert [s.computed for s in again] == [0, 0]
