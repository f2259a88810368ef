"""Figures draw the data they are about (read back from the matplotlib Figure: lines, images, texts, bars, checked
against scikit-learn's own curves), are real PNGs sized for a screen, and cope with small test sets."""
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


@pytest.fixture
def drawn():
    """Figures a test drew, closed after it."""
    figures = []
    yield lambda figure: figures.append(figure) or figure
    plots._pyplot().close("all")


def _line(ax, label_start: str):
    (line,) = [line for line in ax.get_lines() if line.get_label().startswith(label_start)]
    return line


@pytest.mark.parametrize("classes", [["cat", "dog"], ["blue", "green", "red"]])
def test_confusion_matrix_draws_the_counts_and_each_true_class_normalised(drawn, classes):
    from sklearn.metrics import confusion_matrix

    labels, probabilities = _predictions(len(classes))
    matrix = confusion_matrix(labels, probabilities.argmax(axis=1))
    counts_ax, normalised_ax = drawn(plots.confusion_matrix_figure(matrix, classes)).axes[:2]
    np.testing.assert_array_equal(counts_ax.images[0].get_array(), matrix)
    assert [t.get_text() for t in counts_ax.texts] == [str(v) for v in matrix.ravel()]
    recall = matrix / matrix.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(normalised_ax.images[0].get_array(), recall)
    assert [t.get_text() for t in normalised_ax.texts] == [f"{v:.2f}" for v in recall.ravel()]
    assert [t.get_text() for t in counts_ax.get_xticklabels()] == classes  # predicted classes along x
    assert [t.get_text() for t in counts_ax.get_yticklabels()] == classes


@pytest.mark.parametrize("classes", [["cat", "dog"], ["blue", "green", "red"]])
def test_roc_curves_are_each_class_against_the_rest_with_its_auc(drawn, classes):
    from sklearn.metrics import roc_auc_score, roc_curve

    labels, probabilities = _predictions(len(classes))
    ax = drawn(plots.roc_figure(labels, probabilities, classes)).axes[0]
    curves = [1] if len(classes) == 2 else range(len(classes))  # binary: the positive class only
    for index in curves:
        truth, score = labels == index, probabilities[:, index]
        fpr, tpr, _ = roc_curve(truth, score)
        line = _line(ax, classes[index])
        np.testing.assert_allclose(line.get_xdata(), fpr)
        np.testing.assert_allclose(line.get_ydata(), tpr)
        assert f"AUC = {roc_auc_score(truth, score):.2f}" in line.get_label()
    assert len(ax.get_lines()) == len(curves) + 1  # and the chance diagonal, once
    np.testing.assert_allclose(_line(ax, "Chance").get_xydata(), [[0, 0], [1, 1]])


@pytest.mark.parametrize("classes", [["cat", "dog"], ["blue", "green", "red"]])
def test_precision_recall_curves_are_each_class_against_the_rest_with_its_base_rate(drawn, classes):
    from sklearn.metrics import average_precision_score, precision_recall_curve

    labels, probabilities = _predictions(len(classes))
    ax = drawn(plots.precision_recall_figure(labels, probabilities, classes)).axes[0]
    curves = [1] if len(classes) == 2 else range(len(classes))
    chance = [line for line in ax.get_lines() if line.get_label().startswith("Chance")]
    for index, chance_line in zip(curves, chance):
        truth, score = labels == index, probabilities[:, index]
        precision, recall, _ = precision_recall_curve(truth, score)
        line = _line(ax, classes[index])
        np.testing.assert_allclose(line.get_xdata(), recall)
        np.testing.assert_allclose(line.get_ydata(), precision)
        assert f"AP = {average_precision_score(truth, score):.2f}" in line.get_label()
        np.testing.assert_allclose(chance_line.get_ydata(), truth.mean())  # this class's base rate
    assert len(chance) == len(curves)


def test_calibration_draws_accuracy_per_confidence_bin_and_the_bin_sizes(drawn):
    from sklearn.calibration import calibration_curve

    labels, probabilities = _predictions(3, count=60)
    top, bottom = drawn(plots.calibration_figure(labels, probabilities, bins=10)).axes
    confidence, correct = probabilities.max(axis=1), probabilities.argmax(axis=1) == labels
    accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=10)
    curve = _line(top, "model")
    np.testing.assert_allclose(curve.get_xdata(), mean_confidence)
    np.testing.assert_allclose(curve.get_ydata(), accuracy)
    heights = [bar.get_height() for bar in bottom.patches]
    np.testing.assert_array_equal(heights, np.histogram(confidence, bins=np.linspace(0, 1, 11))[0])
    gap = np.abs(np.bincount(np.clip(np.digitize(confidence, np.linspace(0, 1, 11)[1:-1]), 0, 9),
                             correct - confidence, 10)).sum() / len(labels)
    assert f"expected calibration error {gap:.3f}" in top.get_title()


@pytest.mark.parametrize("classes", [["cat", "dog"], ["blue", "green", "red"]])
def test_evaluation_pngs_are_screen_sized_and_written_through_a_temp_file(tmp_path, classes):
    from sklearn.metrics import confusion_matrix

    labels, probabilities = _predictions(len(classes))
    matrix = confusion_matrix(labels, probabilities.argmax(axis=1))
    for path in (plots.confusion_matrix_png(tmp_path / "confusion.png", matrix, classes),
                 plots.roc_png(tmp_path / "roc.png", labels, probabilities, classes),
                 plots.precision_recall_png(tmp_path / "pr.png", labels, probabilities, classes),
                 plots.calibration_png(tmp_path / "calibration.png", labels, probabilities)):
        _assert_screen_png(path)


def test_curves_leave_out_a_class_missing_from_the_test_split(drawn):
    labels, probabilities = _predictions(3)
    keep = labels != 2  # no `red` image in this test split: its one-vs-rest curve is left out, not an error
    for figure in (plots.roc_figure(labels[keep], probabilities[keep], ["a", "b", "red"]),
                   plots.precision_recall_figure(labels[keep], probabilities[keep], ["a", "b", "red"])):
        names = [line.get_label() for line in drawn(figure).axes[0].get_lines()]
        assert [n.split(" (")[0] for n in names if not n.startswith("Chance")] == ["a", "b"], names


def test_error_grid_shows_each_image_with_its_labels_and_says_so_when_there_are_no_errors(tmp_path, drawn):
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[:, :32] = (220, 30, 30)
    args = ([image, None, image], ["cat"] * 3, ["dog", "dog", "bird"], [0.99, 0.9, 0.8],
            ["test/cat/1.jpg", "test/cat/gone.jpg", "test/cat/a-very-long-file-name-indeed.jpg"], 5)
    axes = drawn(plots.confident_errors_figure(*args)).axes
    np.testing.assert_array_equal(axes[0].images[0].get_array(), image)
    assert not axes[1].images and axes[1].texts[0].get_text() == "image not found"
    assert [ax.get_title() for ax in axes[:3]] == ["true: cat\npredicted: dog (0.99)\n1.jpg",
                                                   "true: cat\npredicted: dog (0.90)\ngone.jpg",
                                                   "true: cat\npredicted: bird (0.80)\n…ile-name-indeed.jpg"]
    assert "(3 of 5 errors)" in axes[0].figure.get_suptitle()
    grid = plots.confident_errors_png(tmp_path / "errors.png", *args)
    _assert_screen_png(grid)
    with Image.open(grid) as png:
        rgb = np.asarray(png.convert("RGB")).reshape(-1, 3).astype(int)
    assert ((rgb[:, 0] > 180) & (rgb[:, 1] < 80)).sum() > 500  # the red half of the image made it into the PNG
    (none,) = drawn(plots.confident_errors_figure([], [], [], [], [], 0)).axes
    assert [t.get_text() for t in none.texts] == ["No misclassified test images"]


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


def test_objective_by_trial_draws_each_score_the_best_so_far_and_failed_trials(drawn):
    ax = drawn(plots.objective_by_trial_figure([0.7, None, 0.9, 0.8], "val_accuracy", True)).axes[0]
    scored, failed = ax.collections
    np.testing.assert_array_equal(scored.get_offsets(), [[1, 0.7], [3, 0.9], [4, 0.8]])
    np.testing.assert_array_equal(failed.get_offsets(), [[2, 0.7]])  # at the worst score, marked apart
    best = _line(ax, "best so far")
    np.testing.assert_array_equal(best.get_ydata(), [0.7, 0.7, 0.9, 0.9])
    lower = drawn(plots.objective_by_trial_figure([0.5, 0.7, 0.3], "val_loss", False)).axes[0]
    np.testing.assert_array_equal(_line(lower, "best so far").get_ydata(), [0.5, 0.5, 0.3])  # lower is better


def test_learning_curves_draw_train_and_validation_per_epoch(drawn):
    history = {"loss": [0.9, 0.5], "val_loss": [1.0, 0.7], "accuracy": [0.5, 0.8], "val_accuracy": [0.4, 0.7]}
    loss_ax, accuracy_ax = drawn(plots.learning_curves_figure(history, "best trial")).axes
    for ax, metric in ((loss_ax, "loss"), (accuracy_ax, "accuracy")):
        np.testing.assert_array_equal(_line(ax, "train").get_xydata(), [[1, history[metric][0]],
                                                                         [2, history[metric][1]]])
        np.testing.assert_array_equal(_line(ax, "validation").get_ydata(), history[f"val_{metric}"])


def test_parallel_coordinates_draw_one_line_per_scored_trial_best_last(drawn):
    trials = [{"params": {"units": "32", "dropout": "0.3", "extra_units": "4"}, "score": 0.9},
              {"params": {"units": "8", "dropout": "0.5", "extra_units": "inactive"}, "score": 0.7},
              {"params": {"units": "8", "dropout": "0.7", "extra_units": "inactive"}, "score": None}]
    ax = drawn(plots.parallel_coordinates_figure(trials, ("units", "dropout", "extra_units"), "val_accuracy",
                                                 True)).axes[0]
    # one line across the 4 axes per scored trial (the failed one has none), the best drawn last, on top
    worst, best = [line for line in ax.get_lines() if len(line.get_xdata()) == 4]
    np.testing.assert_allclose(best.get_ydata(), [1.0, 0.0, 1.0, 1.0])  # 32 units, dropout 0.3, 4 extra, top score
    np.testing.assert_allclose(worst.get_ydata(), [0.0, 1.0, 0.0, 0.0])  # extra_units inactive: the bottom slot
    assert [t.get_text() for t in ax.get_xticklabels()] == ["units", "dropout", "extra_units", "val_accuracy"]


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


def test_parallel_coordinates_with_no_completed_trial_says_so(tmp_path, drawn):
    trials = [{"params": {"units": "8"}, "score": None}]
    (ax,) = drawn(plots.parallel_coordinates_figure(trials, ("units",), "val_loss", False)).axes
    assert not ax.get_lines() and [t.get_text() for t in ax.texts] == ["No completed trial to compare"]
    _assert_screen_png(plots.parallel_coordinates_png(tmp_path / "pc.png", trials, ("units",), "val_loss", False))
