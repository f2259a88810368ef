import json

import pytest

from conftest import make_dataset

from bench.run import main

pytestmark = pytest.mark.e2e
TINY = {"extract_images": 4, "rounds": 2, "rss_images": 2, "pipeline_per_class": 2, "head_rows": 12,
        "head_valid_rows": 4, "head_epochs": 2, "search_trials": 1, "head_batch_size": 2}


def test_benchmark_times_every_path_side_by_side_and_writes_its_figures(tmp_path):
    data = make_dataset(tmp_path / "data", per_split={"train": 4, "valid": 2, "test": 2})
    out = tmp_path / "results" / "bench.json"
    main(["--data", str(data), "--out", str(out), "--input-size", "32", "--batch-size", "2",
          "--sizes", json.dumps(TINY)])

    figures = json.loads(out.read_text())
    extraction = figures["extraction"]
    assert extraction["images"] == 4
    for path in ("baseline", "ffx", "limit", "ffx_bfloat16"):
        assert extraction[f"{path}_images_per_s"] > 0
    cache = figures["cache"]
    assert cache["cold"]["computed_images"] == cache["images"] == 12 and cache["rerun"]["computed_images"] == 0
    head = figures["head"]
    assert head["train_rows"] == 12 and head["baseline_epoch_ms"] > 0 and head["ffx_trial_s"] > 0
    assert figures["rss"]["n"] == 2 and figures["rss"]["peak_rss_mb_4n"] > 0
    assert set(figures["checks"]) >= {"extract_vs_baseline", "extract_vs_limit", "head_epoch_speedup",
                                      "cache_hit_fraction", "rss_growth_4n", "bf16_vs_fp32"}
