"""bench.audit's label injection: which images get another label, and that their augmented views follow them."""
import json

import numpy as np
import pytest

from bench.audit import MODELS, flipped, summary
from components.features.store import FeatureSet


def feature_set(images: int, views: int, classes: int) -> FeatureSet:
    labels = np.arange(images) % classes
    source = np.concatenate([np.arange(images), np.repeat(np.arange(images), views)]) if views else None
    rows = images * (1 + views)
    return FeatureSet(np.zeros((rows, 4), np.float32), labels[source] if views else labels,
                      [f"train/{i}.jpg" for i in range(images)], [f"c{i}" for i in range(classes)], source=source)


def test_a_fraction_of_the_images_get_another_class_and_their_views_follow():
    train = feature_set(100, 2, 3)
    noisy, chosen = flipped(train, 0.04, seed=5)
    assert len(chosen) == 4 and len(set(chosen.tolist())) == 4
    changed = np.flatnonzero(noisy.labels != train.labels)
    assert set(train.source[changed].tolist()) == set(chosen.tolist()) and len(changed) == 4 * 3
    for image in chosen:  # an image and its views carry one new label
        assert len(set(noisy.labels[train.source == image].tolist())) == 1
    assert np.array_equal(train.labels, feature_set(100, 2, 3).labels)  # the input is left as it was


def test_plain_images_and_a_seed_give_the_same_flips_again():
    train = feature_set(50, 0, 2)
    first, second = flipped(train, 0.1, seed=3), flipped(train, 0.1, seed=3)
    assert np.array_equal(first[1], second[1]) and np.array_equal(first[0].labels, second[0].labels)
    assert np.all(first[0].labels[first[1]] == 1 - train.labels[first[1]])


def test_summary_gives_each_model_its_worst_seed():
    runs = [{"label_features": f, "label_c": c, "flips": 10, "recall_at_n": r, "flagged": 12,
             "oof_accuracy_true": 0.9, "audit_features_s": 1.0} for f, c in MODELS[:1] for r in (0.8, 0.6)]
    row = summary(runs)[f"{MODELS[0][0]} C={MODELS[0][1]}"]
    assert row["min_recall_at_n"] == 0.6 and row["twice_flips"] == 20 and row["recall_at_n"] == [0.8, 0.6]


@pytest.mark.e2e
def test_the_bench_times_extraction_and_audit_and_scores_every_label_model_per_seed(tmp_path):
    from bench.audit import main
    from conftest import make_dataset

    data = make_dataset(tmp_path / "data", per_split={"train": 25, "valid": 6, "test": 6})
    out = tmp_path / "audit.json"
    main(["--data", str(data), "--seeds", "0", "1", "--flip", "0.1", "--audits", "1", "--work", str(tmp_path / "work"),
          "--out", str(out), "--set", "backbone.weights=none", "--set", "backbone.input_size=32",
          "--set", "backbone.pooling=avg"])
    figures = json.loads(out.read_text())
    assert set(figures["about"]) >= {"command", "commit", "cpu", "cpu_flags", "date"}
    timing = figures["timing"]
    assert timing["audit_over_extract"] == pytest.approx(timing["audit_median_s"] / timing["extract_cold_s"], rel=1e-3)
    assert figures["images"] == {"train": 50, "valid": 12, "test": 12}
    assert len(figures["runs"]) == 2 * len(MODELS)
    for run in figures["runs"]:
        assert run["flips"] == 5 and 0 <= run["recall_at_n"] <= 1 and run["flagged_flips"] <= run["flagged"]
        assert 0 <= run["oof_accuracy_true"] <= 1
    assert set(figures["summary"]) == {f"{f} C={c}" for f, c in MODELS}
