"""extract.shard_size is honoured by `ffx extract` (and so `dvc repro`) too: the same files, views included."""
import numpy as np
import pytest

from components.config import load_config
from components.features.store import read_features
from components.stages.extract import extract_stage


@pytest.mark.e2e
def test_sharded_extract_all_writes_the_files_of_a_single_pass_with_views_and_mirror(project):
    views = ["extract.augment.copies=1", "predict.tta=true"]
    sharded = extract_stage(load_config(project / "params.yaml", [*views, "extract.shard_size=7"]))
    single = extract_stage(load_config(project / "params.yaml", [*views, "features.dir=single"]))
    assert set(sharded) == {"train", "valid", "test", "test_flip"}
    for name, result in sharded.items():
        a, b = read_features(result.path), read_features(single[name].path)
        assert a.paths == b.paths and a.labels.tolist() == b.labels.tolist()
        assert a.attrs["key"] == b.attrs["key"] and a.attrs.get("views") == b.attrs.get("views")
        assert (a.source is None) == (b.source is None) and (a.source is None or a.source.tolist() == b.source.tolist())
        np.testing.assert_allclose(a.features, b.features, rtol=1e-4, atol=1e-4)
    assert len(list((project / "features" / "shards").glob("train-*.h5"))) == 7  # 24 images + 24 views, by 7
    again = extract_stage(load_config(project / "params.yaml", [*views, "extract.shard_size=7"]))
    assert all(result.cached and result.computed == 0 for result in again.values())
