"""Prediction from image files (components/model/predict.py): inputs expanded, images batched through the model,
unreadable files reported row by row, one JSON line per image; the registered model and the local head agree."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from components.errors import FFXError
from components.model.head_file import head_paths
from components.model.predict import Prediction, expand_inputs, load_classifier, predict_paths, prediction_json


@pytest.fixture(scope="module")
def local_head(tiny_run):
    """The tuned head of `tiny_run` (models/head.keras), wrapped as prediction runs it."""
    return load_classifier(tiny_run.config, str(head_paths(tiny_run.config)[0]))


@pytest.fixture
def images(tiny_run, tmp_path):
    """Two test images of each class in a folder tree with a file that is not an image, and an unreadable JPEG."""
    for name in ("blue", "red"):
        for source in sorted((tiny_run.root / "data" / "test" / name).iterdir())[:2]:
            (tmp_path / "in" / name).mkdir(parents=True, exist_ok=True)
            shutil.copy(source, tmp_path / "in" / name / source.name)
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    return tmp_path


def test_folders_expand_to_their_image_files_sorted_and_files_stay_as_given(images):
    found = expand_inputs([images / "in", images / "broken.jpg"])
    assert [p.relative_to(images).as_posix() for p in found] == [
        "in/blue/blue_00.png", "in/blue/blue_01.jpg", "in/red/red_00.png", "in/red/red_01.jpg", "broken.jpg"]
    with pytest.raises(FFXError, match=r"gone\.jpg: no such file or folder"):
        expand_inputs([images / "gone.jpg"])


def test_predictions_come_in_input_order_in_batches_with_an_error_row_for_an_unreadable_file(images, local_head):
    batches = []

    def classify(frame: pd.DataFrame) -> pd.DataFrame:
        batches.append(len(frame))
        return local_head(frame)

    predictions = list(predict_paths(classify, [images / "broken.jpg", images / "in"], batch_size=2))
    assert batches == [2, 2, 1]  # never more than batch_size images per call of the model
    assert [p.path for p in predictions] == [str(p) for p in expand_inputs([images / "broken.jpg", images / "in"])]
    broken, *good = predictions
    assert broken.error and (broken.label, broken.probability, broken.probabilities) == (None, None, None)
    for prediction in good:
        assert prediction.error is None and set(prediction.probabilities) == {"blue", "red"}
        assert prediction.label == max(prediction.probabilities, key=prediction.probabilities.get)
        assert prediction.probability == pytest.approx(prediction.probabilities[prediction.label])
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_a_prediction_is_one_json_object_with_every_field():
    line = prediction_json(Prediction("a.jpg", "cat", 0.75, {"cat": 0.75, "dog": 0.25}))
    assert json.loads(line) == {"path": "a.jpg", "class": "cat", "probability": 0.75,
                                "probabilities": {"cat": 0.75, "dog": 0.25}, "error": None}
    assert "\n" not in line
    failed = json.loads(prediction_json(Prediction("b.jpg", None, None, None, "not an image")))
    assert failed == {"path": "b.jpg", "class": None, "probability": None, "probabilities": None,
                      "error": "not an image"}


def test_the_head_file_its_folder_and_the_registered_model_give_the_same_probabilities(tiny_run, images, local_head):
    frame = pd.DataFrame({"path": [str(p) for p in expand_inputs([images / "in"])]})
    expected = local_head(frame)
    folder = load_classifier(tiny_run.config, str(head_paths(tiny_run.config)[0].parent))(frame)
    registered = load_classifier(tiny_run.config)(frame)  # predict.model: registry, as `mlflow models serve` runs it
    columns = ["p_blue", "p_red"]
    np.testing.assert_allclose(folder[columns], expected[columns], rtol=1e-6)
    np.testing.assert_allclose(registered[columns], expected[columns], rtol=1e-5, atol=1e-6)
    assert list(registered["class"]) == list(expected["class"])


def test_a_missing_head_is_one_clear_error(tiny_run, tmp_path):
    with pytest.raises(FFXError, match="head.keras"):
        load_classifier(tiny_run.config, str(tmp_path / "nowhere" / "head.keras"))
