import json

import pytest
from conftest import make_dataset

from bench.run import TARGETS, main
from components.config import default_params

pytestmark = pytest.mark.e2e
TINY = {"extract_images": 4, "rounds": 2, "rss_images": 2, "pipeline_per_class": 2, "head_rows": 12,
        "head_valid_rows": 4, "head_epochs": 2, "search_trials": 1, "head_batch_size": 2}


def test_benchmark_times_every_path_side_by_side_and_writes_its_figures(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", per_split={"train": 4, "valid": 2, "test": 2})
    out = tmp_path / "results" / "bench.json"
    main(["--data", str(data), "--out", str(out), "--input-size", "32", "--batch-size", "2",
          "--sizes", json.dumps(TINY)])
    printed = capsys.readouterr().out

    figures = json.loads(out.read_text())
    assert figures["sizes"] == TINY and figures["data"] == str(data)
    e = figures["extraction"]
    assert e["images"] == 4
    rate = {path: e[f"{path}_images_per_s"] for path in ("baseline", "ffx", "limit")}
    rate |= {"ffx_auto": e["ffx_auto_images_per_s"], "limit_auto": e["limit_auto_images_per_s"]} \
        if "ffx_auto_images_per_s" in e else {}
    assert all(value > 0 for value in rate.values()), rate
    # Every ratio is the one its name says, from the timed figures (numerator / denominator, not the reverse).
    assert e["ffx_vs_baseline"] == pytest.approx(rate["ffx"] / rate["baseline"])
    assert e["ffx_vs_limit"] == pytest.approx(rate["ffx"] / rate["limit"])
    native = figures["machine"]["bfloat16_native"]
    assert ("ffx_auto" in rate) == native  # precision auto is timed apart only where it is not float32
    if native:
        assert e["auto_vs_fp32"] == pytest.approx(rate["ffx_auto"] / rate["ffx"])
        assert e["auto_vs_baseline"] == pytest.approx(rate["ffx_auto"] / rate["baseline"])
        assert e["auto_vs_limit"] == pytest.approx(rate["ffx_auto"] / rate["limit_auto"])  # its own forward pass

    # Bounds from arithmetic: FLOPs at the matmul peak measured in this run, for each precision.
    peak = figures["matmul_peak_gflops"]
    assert min(peak.values()) > 0 and set(peak) == {"float32", "bfloat16"}
    vgg19_at_32px = 2 * sum(side * side * 9 * c_in * c_out for side, c_in, c_out in (
        (32, 3, 64), (32, 64, 64), (16, 64, 128), (16, 128, 128), *[(8, 128 if i == 0 else 256, 256) for i in range(4)],
        *[(4, 256 if i == 0 else 512, 512) for i in range(4)], *[(2, 512, 512)] * 4))
    assert e["gflops_per_image"] == pytest.approx(vgg19_at_32px / 1e9)
    for dtype in peak:
        assert e[f"bound_{dtype}_images_per_s"] == pytest.approx(peak[dtype] / e["gflops_per_image"])
    assert e["limit_fraction_of_bound"] == pytest.approx(rate["limit"] / e["bound_float32_images_per_s"])

    c = figures["cache"]
    assert c["cold"]["computed_images"] == c["images"] == 12 and c["rerun"]["computed_images"] == 0
    assert c["rerun_fraction"] == pytest.approx(c["rerun"]["total_s"] / c["cold"]["total_s"])
    for run in ("cold", "rerun"):
        assert c[run]["total_s"] == pytest.approx(c[run]["extract_s"] + c[run]["tune_s"])

    h = figures["head"]
    assert (h["train_rows"], h["valid_rows"], h["epochs"]) == (12, 4, 2)
    assert min(h["baseline_epoch_ms"], h["ffx_epoch_ms"], h["ffx_trial_s"]) > 0
    assert h["epoch_speedup"] == pytest.approx(h["baseline_epoch_ms"] / h["ffx_epoch_ms"])
    assert h["grouped_heads"] == default_params()["tuner"]["parallel_heads"] and h["grouped_epoch_ms"] > 0
    assert h["grouped_speedup"] == pytest.approx(h["baseline_epoch_ms"] / h["grouped_epoch_ms"])
    # The head epoch's bound: 12 train rows (Dense 512 -> 64 -> 1 forward, both weight gradients and the second
    # layer's input gradient) and 4 valid rows (forward), at the float32 peak.
    features = 512 * 1 * 1  # VGG19 at 32 px: 1x1x512, flattened
    assert h["features"] == features
    forward = 2 * (features * 64 + 64 * 1)
    assert h["gflops_per_epoch"] == pytest.approx((12 * (3 * forward - 2 * features * 64) + 4 * forward) / 1e9)
    assert h["bound_epoch_ms"] == pytest.approx(h["gflops_per_epoch"] / peak["float32"] * 1000)
    assert h["ffx_fraction_of_bound"] == pytest.approx(h["bound_epoch_ms"] / h["ffx_epoch_ms"])
    assert h["grouped_fraction_of_bound"] == pytest.approx(h["bound_epoch_ms"] / h["grouped_epoch_ms"])
    assert 0 < h["ffx_fraction_of_bound"] < 1 and 0 < h["grouped_fraction_of_bound"] < 1  # a bound is not beaten

    s = figures["search"]  # the cold search: 1 trial, 1 execution of 5 epochs, under the patience
    assert (s["trials"], s["epochs"], s["train_rows"], s["valid_rows"]) == (1, 5, 4, 4)
    assert s["bound_s"] == pytest.approx(s["gflops"] / peak["float32"])
    assert s["fraction_of_bound"] == pytest.approx(s["bound_s"] / s["search_s"]) and 0 < s["fraction_of_bound"] < 1
    assert h["fit_speedup"] == pytest.approx(h["baseline_fit_s"] / h["ffx_fit_s"])
    assert h["trial_speedup"] == pytest.approx(h["baseline_trial_s"] / h["ffx_trial_s"])
    assert h["baseline_trial_s"] == h["baseline_fit_s"]

    m = figures["rss"]
    assert m["n"] == 2 and min(m["peak_rss_mb_n"], m["peak_rss_mb_4n"]) > 0
    assert m["growth_4n"] == pytest.approx(m["peak_rss_mb_4n"] / m["peak_rss_mb_n"])

    # Each target is judged on its figure, in the target's direction.
    values = {"extract_vs_baseline": e["ffx_vs_baseline"], "extract_vs_limit": e["ffx_vs_limit"],
              "head_epoch_speedup": h["grouped_speedup"], "cache_hit_fraction": c["rerun_fraction"],
              "rss_growth_4n": m["growth_4n"]}
    if native:
        values.update(auto_vs_fp32=e["auto_vs_fp32"], auto_vs_baseline=e["auto_vs_baseline"],
                      auto_vs_limit=e["auto_vs_limit"])
    assert set(figures["checks"]) == set(values)
    for name, check in figures["checks"].items():
        assert check["value"] == pytest.approx(values[name]), name
        lower_is_better = name in ("cache_hit_fraction", "rss_growth_4n")
        assert check["target"] == f"{'<=' if lower_is_better else '>='} {TARGETS[name]}", name
        met = values[name] <= TARGETS[name] if lower_is_better else values[name] >= TARGETS[name]
        assert check["met"] == met, name
        verdict = {True: "MET ", False: "MISS", None: "N/A "}[check["met"]]
        assert f"{verdict} {name}" in printed, name  # the printed verdicts are the stored ones
    assert sum(figures["section_seconds"].values()) <= figures["seconds"] + 0.5
