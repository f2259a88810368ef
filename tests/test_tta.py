"""Test-time augmentation: mirrored test features extracted only when asked, averaged in evaluation and prediction."""
import numpy as np
import pytest

from components.config import load_config
from components.data.augment import mirrored
from components.features.backbone import build_backbone
from components.features.identity import feature_path
from components.features.store import read_features
from components.model.classifier import ImageClassifier
from components.model.metrics import class_probabilities, evaluate_head
from components.search.space import build_head
from components.stages.extract import extract_stage


def _head(dim, seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    return build_head(dim, 2, 8, 0.0, 0)


def test_mirrored_test_features_are_extracted_only_with_tta(extracted, extracted_project):
    assert set(extracted.results) == {"train", "valid", "test"}
    assert not feature_path(extracted.config, "test_flip").exists()
    config = load_config(extracted_project / "params.yaml", ["predict.tta=true"])
    results = extract_stage(config)
    assert results["test"].cached and results["test_flip"].computed == 12  # the other files are unchanged
    test, flipped = read_features(feature_path(config, "test")), read_features(feature_path(config, "test_flip"))
    assert flipped.paths == test.paths and flipped.attrs["views"] == {"flip": True}
    assert not np.allclose(flipped.features, test.features)


def test_evaluation_reports_accuracy_with_and_without_tta(extracted_project):
    config = load_config(extracted_project / "params.yaml", ["predict.tta=true"])
    extract_stage(config, splits=("test",))
    test, flipped = read_features(feature_path(config, "test")), read_features(feature_path(config, "test_flip"))
    head = _head(test.features.shape[1])
    metrics, probabilities = evaluate_head(head, test, flipped)
    plain = class_probabilities(head, test.features)
    expected = (plain + class_probabilities(head, flipped.features)) / 2
    np.testing.assert_allclose(probabilities, expected, rtol=1e-6)
    assert metrics["accuracy_without_tta"] == pytest.approx((plain.argmax(1) == test.labels).mean())
    assert metrics["accuracy"] == metrics["accuracy_with_tta"] == pytest.approx((expected.argmax(1) ==
                                                                                 test.labels).mean())
    assert "accuracy_with_tta" not in evaluate_head(head, test)[0]


def test_prediction_with_tta_averages_the_image_and_its_mirror(project):
    import pandas as pd

    from components.data.images import load_rgb

    config = load_config(project / "params.yaml")
    backbone = build_backbone(config.backbone, config.root)
    head = _head(backbone.feature_dim)
    files = sorted(str(p) for p in (project / "data" / "test" / "red").iterdir())
    spec = {"class_names": ["blue", "red"], "max_pixels": 10**8, "batch_size": 4}
    frame = pd.DataFrame({"path": files})
    plain = ImageClassifier(head, backbone, dict(spec, tta=False)).predict_frame(frame)
    averaged = ImageClassifier(head, backbone, dict(spec, tta=True)).predict_frame(frame)
    images = np.stack([load_rgb(f, 32, 10**8) for f in files])
    expected = (class_probabilities(head, backbone.features(images))
                + class_probabilities(head, backbone.features(mirrored(images)))) / 2
    got = averaged[["p_blue", "p_red"]].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert not np.allclose(got, plain[["p_blue", "p_red"]].to_numpy())


@pytest.mark.e2e
def test_evaluate_stage_scores_with_tta_and_writes_both_accuracies(extracted_project):
    import json

    from components.stages.evaluate import evaluate_stage
    from components.stages.tune import tune_stage

    config = load_config(extracted_project / "params.yaml",
                         ["predict.tta=true", "tuner.max_trials=1", "train.epochs=1"])
    extract_stage(config)
    tune_stage(config)
    result = evaluate_stage(config)
    written = json.loads((config.metrics.dir / "test.json").read_text())
    assert written["tta"] is True and written["accuracy"] == written["accuracy_with_tta"]
    assert 0 <= written["accuracy_without_tta"] <= 1 and result.metrics == written
