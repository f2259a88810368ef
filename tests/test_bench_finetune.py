"""bench/finetune.py on tiny images: both ways train the same model, and every figure is the one its name says."""
import json

import pytest
from conftest import make_dataset

from bench.finetune import main

pytestmark = pytest.mark.e2e


def test_finetune_bench_times_the_cached_and_the_guides_epoch_side_by_side(tmp_path):
    data = make_dataset(tmp_path / "data", per_split={"train": 4, "valid": 1, "test": 1})
    out = tmp_path / "finetune.json"
    main(["--data", str(data), "--images", "8", "--rounds", "2", "--weights", "none", "--input-size", "32",
          "--batch-size", "4", "--out", str(out)])
    figures = json.loads(out.read_text())
    assert figures["images"] == 8 and len(figures["cached_epoch_s"]) == len(figures["guide_epoch_s"]) == 2
    cached = sum(figures["cached_epoch_s"]) / 2
    guide = sum(figures["guide_epoch_s"]) / 2
    assert figures["speedup"] == pytest.approx(guide / cached)  # medians of two: their means
    assert figures["cached_images_per_s"] == pytest.approx(8 / cached)
    # VGG16 at 32 px: blocks 1-4 and block 5's convolutions, and the limit they give.
    top, frozen = figures["gflop_top_forward"], figures["gflop_frozen_forward"]
    assert 0 < top < frozen
    assert figures["flop_limit"] == pytest.approx((frozen + 3 * top) / (3 * top))
    # compiled as the finetune stage compiles (finetune.* defaults), its moving average included
    assert figures["optimizer"]["class"] == "RMSprop" and figures["optimizer"]["use_ema"]
    assert figures["float16_storage"]["rows"] == 8 and figures["float16_storage"]["float16_max"] == 65504.0
