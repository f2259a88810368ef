import numpy as np

from components.config import load_config
from components.extract import extract_all, plan_extraction
from components.features import read_features
from components.shards import extract_shard, merge_shards, shard_ranges


def test_merged_shards_equal_single_process_features_in_the_same_order(project):
    config = load_config(project / "params.yaml", ["extract.shard_size=10", "features.dir=sharded"])
    plan = plan_extraction(config)
    split = plan.splits["train"]
    shards = [extract_shard(config, split, i) for i in range(len(shard_ranges(len(split.records), 10)))]
    assert [s.count for s in shards] == [10, 10, 4]
    merged = merge_shards(config, split, shards, {})
    single = extract_all(load_config(project / "params.yaml"))["train"]
    a, b = read_features(merged.path), read_features(single.path)
    assert a.paths == b.paths and a.labels.tolist() == b.labels.tolist()
    np.testing.assert_allclose(a.features, b.features, rtol=1e-4, atol=1e-4)
    assert a.attrs["key"] == b.attrs["key"] and a.attrs["shards"] == 3


def test_finished_shards_are_not_extracted_again(project):
    config = load_config(project / "params.yaml", ["extract.shard_size=10"])
    split = plan_extraction(config).splits["valid"]
    first = extract_shard(config, split, 1)
    assert first.computed == 2
    assert extract_shard(config, split, 1).computed == 0
