"""What the trained model does, beyond its accuracy (behaviour tests in the Made-With-ML sense), on generated data
where the answer is known: blue and red images (tests/conftest.py make_dataset), through the registered end-to-end
classifier, the model `mlflow models serve` runs.

The `tiny_run` fixture's head (2 epochs) is too weak for this: its probabilities stay near 0.5 and a third of the
training images come out wrong. `trained_run` tunes the same extracted features long enough (40 epochs, no early
stopping) for a head that has learnt the colours, and keeps the epoch of lowest training loss (the few valid images
the search scores on can pick an early epoch), then evaluates and registers it as `ffx evaluate` does."""
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from components.model.predict import load_classifier

pytestmark = pytest.mark.e2e  # trains its own model (about a minute): the end-to-end tier, which CI runs too


@pytest.fixture(scope="module")
def trained_run(extracted, tmp_path_factory):
    """The `extracted` project, tuned for 40 epochs (2 trials), its lowest training loss kept, evaluated and
    registered."""
    import shutil
    from types import SimpleNamespace

    from components.config import load_config
    from components.stages.evaluate import evaluate_stage
    from components.stages.tune import tune_stage

    root = shutil.copytree(extracted.root, tmp_path_factory.mktemp("trained_run") / "project", symlinks=True)
    config = load_config(root / "params.yaml", ["tuner.max_trials=2", "tuner.objective=loss", "train.epochs=40",
                                                "train.early_stopping_patience=0"])
    search = tune_stage(config)
    return SimpleNamespace(root=root, config=config, search=search, evaluation=evaluate_stage(config))


@pytest.fixture(scope="module")
def classify(trained_run):
    registered = load_classifier(trained_run.config)  # predict.model: registry

    def run(paths) -> pd.DataFrame:
        return registered(pd.DataFrame({"path": [str(p) for p in paths]}))
    return run


def _in_colour(path) -> bool:
    with Image.open(path) as image:
        return image.mode != "L"


@pytest.fixture(scope="module")
def train_images(trained_run):
    """(path, class) of every colour training image: make_dataset also writes a grayscale image per class and
    split, whose class (its colour) is gone from the pixels, so no answer is known for it."""
    root = trained_run.root / "data" / "train"
    return [(path, path.parent.name) for path in sorted(root.glob("*/*")) if path.is_file() and _in_colour(path)]


def test_training_images_are_classified_as_their_class(classify, train_images):
    out = classify([path for path, _ in train_images])
    assert len(train_images) == 22 and set(out["class"]) == {"blue", "red"}
    assert list(out["class"]) == [name for _, name in train_images]


def _variants(path, folder):
    """The image JPEG re-encoded at quality 40 and 95, and resized to half and double its size."""
    with Image.open(path) as original:
        image = original.convert("RGB")
    files = []
    for name, changed, quality in (("q40", image, 40), ("q95", image, 95),
                                   ("half", image.resize((max(8, image.width // 2), max(8, image.height // 2))), 90),
                                   ("double", image.resize((image.width * 2, image.height * 2)), 90)):
        files.append(folder / f"{path.stem}-{name}.jpg")
        changed.save(files[-1], quality=quality)
    return files


def test_the_class_survives_jpeg_re_encoding_and_resizing(classify, train_images, tmp_path):
    for path, name in train_images[::3]:  # every third image: both classes, PNG and JPEG
        variants = _variants(path, tmp_path)
        out = classify(variants)
        assert list(out["class"]) == [name] * len(variants), (path.name, out[["class", "probability"]])


def test_the_same_image_twice_in_a_request_gets_the_same_probabilities(classify, train_images):
    path, _ = train_images[0]
    other, _ = train_images[-1]
    out = classify([path, other, path])
    columns = [c for c in out.columns if c.startswith("p_")]
    np.testing.assert_array_equal(out.loc[0, columns].to_numpy(float), out.loc[2, columns].to_numpy(float))
    again = classify([path])  # and in another request, alone
    np.testing.assert_allclose(again.loc[0, columns].to_numpy(float), out.loc[0, columns].to_numpy(float),
                               rtol=1e-6)


def test_bytes_and_the_file_they_came_from_are_classified_alike(trained_run, train_images):
    """The served model takes base64 image text as well as paths: the same image gives the same answer."""
    import base64

    registered = load_classifier(trained_run.config)
    path, name = train_images[1]
    buffer = io.BytesIO(path.read_bytes())
    by_path = registered(pd.DataFrame({"path": [str(path)]}))
    by_bytes = registered(pd.DataFrame({"image": [base64.b64encode(buffer.getvalue()).decode()]}))
    assert by_bytes.loc[0, "class"] == by_path.loc[0, "class"] == name
    assert by_bytes.loc[0, "probability"] == pytest.approx(by_path.loc[0, "probability"], rel=1e-6)
