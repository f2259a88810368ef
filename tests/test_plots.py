"""Figures are real PNGs, sized for a screen, and cope with the awkward cases of small test sets."""
import numpy as np
import pytest
from PIL import Image

from components.reports import plots


def _assert_screen_png(path, width=1000):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.size[0] == width and 300 <= image.size[1] <= 1200
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 5  # something was drawn, not a blank canvas
    assert not list(path.parent.glob(".*.tmp.png"))  # written through a temp file that was renamed


def _predictions(num_classes, count=30, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % num_classes
    logits = rng.normal(size=(count, num_classes)) + 2.0 * np.eye(num_classes)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probabilities


@pytest.mark.parametrize("classes", [["cat", "dog"], ["blue", "green", "red"]])
def test_evaluation_plots_are_screen_sized_pngs_for_binary_and_multi_class(tmp_path, classes):
    from sklearn.metrics import confusion_matrix

    labels, probabilities = _predictions(len(classes))
    matrix = confusion_matrix(labels, probabilities.argmax(axis=1))
    for path in (plots.confusion_matrix_png(tmp_path / "confusion.png", matrix, classes),
                 plots.roc_png(tmp_path / "roc.png", labels, probabilities, classes),
                 plots.precision_recall_png(tmp_path / "pr.png", labels, probabilities, classes),
                 plots.calibration_png(tmp_path / "calibration.png", labels, probabilities)):
        _assert_screen_png(path)


def test_curves_are_drawn_when_a_class_is_missing_from_the_test_split(tmp_path):
    labels, probabilities = _predictions(3)
    keep = labels != 2  # no `red` image in this test split: its one-vs-rest curve is left out, not an error
    _assert_screen_png(plots.roc_png(tmp_path / "roc.png", labels[keep], probabilities[keep], ["a", "b", "red"]))
    _assert_screen_png(plots.precision_recall_png(tmp_path / "pr.png", labels[keep], probabilities[keep],
                                                  ["a", "b", "red"]))


def test_error_grid_shows_images_and_says_so_when_there_are_no_errors(tmp_path):
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[:, :32] = (220, 30, 30)
    grid = plots.confident_errors_png(tmp_path / "errors.png", [image, None, image], ["cat"] * 3, ["dog"] * 3,
                                      [0.99, 0.9, 0.8], ["test/cat/1.jpg", "test/cat/gone.jpg", "test/cat/3.jpg"], 5)
    _assert_screen_png(grid)
    with Image.open(grid) as png:
        rgb = np.asarray(png.convert("RGB")).reshape(-1, 3).astype(int)
    assert ((rgb[:, 0] > 180) & (rgb[:, 1] < 80)).sum() > 500  # the red half of the image made it into the grid
    _assert_screen_png(plots.confident_errors_png(tmp_path / "none.png", [], [], [], [], [], 0))


def test_inactive_hyperparameter_gets_its_own_slot_below_the_numbers():
    positions, ticks = plots._axis_positions(["4", "inactive", "16", "inactive", "8"])
    assert positions[1] == positions[3] == 0.0
    assert positions[0] < positions[4] < positions[2] == 1.0
    assert [label for _, label in ticks] == ["inactive", "4", "8", "16"]


def test_many_numeric_values_are_spread_linearly():
    values = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 1.1]
    positions, _ = plots._axis_positions(values)
    assert positions[0] == 0.0 and positions[-1] == 1.0
    assert positions[1] == pytest.approx(0.1)  # (0.2 - 0.1) / (1.1 - 0.1)


def test_trial_comparison_plots_are_screen_sized_pngs(tmp_path):
    trials = [{"params": {"units": "32", "dropout": "0.3", "extra_units": "4"}, "score": 0.9},
              {"params": {"units": "8", "dropout": "0.5", "extra_units": "inactive"}, "score": 0.7},
              {"params": {"units": "8", "dropout": "0.7", "extra_units": "inactive"}, "score": None}]
    names = ("units", "dropout", "extra_units")
    _assert_screen_png(plots.parallel_coordinates_png(tmp_path / "pc.png", trials, names, "val_accuracy", True))
    _assert_screen_png(plots.objective_by_trial_png(tmp_path / "by_trial.png", [0.7, None, 0.9, 0.8],
                                                    "val_accuracy", True))
    _assert_screen_png(plots.learning_curves_png(tmp_path / "curves.png",
                                                 {"loss": [0.9, 0.5], "val_loss": [1.0, 0.7],
                                                  "accuracy": [0.5, 0.8], "val_accuracy": [0.4, 0.7]}, "best trial"))


def test_parallel_coordinates_with_no_completed_trial_still_writes_a_figure(tmp_path):
    trials = [{"params": {"units": "8"}, "score": None}]
    _assert_screen_png(plots.parallel_coordinates_png(tmp_path / "pc.png", trials, ("units",), "val_loss", False))
