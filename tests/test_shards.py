"""Shards on their own; merged shards against single-process features: tests/test_flows.py (Dask, e2e)."""
from components.config import load_config
from components.features.extraction import plan_extraction
from components.features.shards import extract_shard


def test_finished_shards_are_not_extracted_again(project):
    config = load_config(project / "params.yaml", ["extract.shard_size=10"])
    split = plan_extraction(config).splits["valid"]
    first = extract_shard(config, split, 1)
    assert first.computed == 2
    assert extract_shard(config, split, 1).computed == 0
