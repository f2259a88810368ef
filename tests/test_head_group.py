"""Several heads in one compiled graph: each trains as it would alone and comes out as an ordinary head."""
import numpy as np
import pytest

from components.search.head_group import HeadGroup, HeadSpec
from components.search.space import build_head


@pytest.fixture(scope="module")
def features():
    """A small separable problem: 160 train and 60 valid rows of 48 standardised features."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 220)
    rows = rng.normal(size=(220, 48)).astype(np.float32) + labels[:, None] * rng.normal(0.6, 0.2, 48)
    return rows[:160], labels[:160], rows[160:], labels[160:]


def _group(slots: int) -> HeadGroup:
    return HeadGroup(slots, 48, 2, max_units=16, max_extra=8, learning_rate=1e-3, batch_size=16)


def test_each_head_comes_out_as_an_ordinary_head_at_its_best_epoch(features):
    specs = [HeadSpec(16, 0.5, 0, 1), HeadSpec(4, 0.3, 0, 2), HeadSpec(16, 0.4, 8, 3)]
    runs = _group(4).train(specs, *features, epochs=12, patience=3, objective="val_accuracy", shuffle_seed=0)
    valid_x, valid_y = features[2], features[3]
    for spec, run in zip(specs, runs):
        head = build_head(48, 2, spec.units, spec.dropout, spec.extra_units)
        head.set_weights(run.weights)  # raises if a shape is not the head's own size
        accuracy = ((head.predict(valid_x, verbose=0)[:, 0] > 0.5) == valid_y).mean()
        assert accuracy == pytest.approx(run.history["val_accuracy"][run.best_epoch], abs=1e-6)
        assert run.best_value == max(run.history["val_accuracy"])
        # Early stopping is each head's own: it ran until `patience` epochs without a better one, or to the end.
        assert len(run.history["loss"]) == min(12, run.best_epoch + 3 + 1)


def _assert_same_training(mine, theirs):
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(mine.history[name], theirs.history[name], rtol=1e-4, err_msg=name)
    assert mine.best_epoch == theirs.best_epoch
    for mine_weight, their_weight in zip(mine.weights, theirs.weights, strict=True):
        np.testing.assert_allclose(mine_weight, their_weight, rtol=1e-3, atol=1e-5)


def test_a_head_trains_the_same_alone_or_beside_others(features):
    """Without dropout training is deterministic: the heads' parameters, gradients and optimizer state are
    disjoint, and a narrow head's unused units stay at zero."""
    alone = _group(1).train([HeadSpec(8, 0.0, 0, 7)], *features, 6, 0, "val_loss", 5)[0]
    together = _group(3).train([HeadSpec(16, 0.0, 8, 1), HeadSpec(8, 0.0, 0, 7), HeadSpec(4, 0.0, 0, 2)],
                               *features, 6, 0, "val_loss", 5)[1]
    _assert_same_training(together, alone)


def test_with_dropout_a_head_trains_the_same_alone_or_beside_others_in_any_slot(features):
    """A head's dropout masks come from its own seed and its own steps: not from its slot, the group's size or
    its neighbours (which have other seeds and rates)."""
    spec = HeadSpec(8, 0.5, 0, 7)
    alone = _group(1).train([spec], *features, 6, 0, "val_loss", 5)[0]
    together = _group(4).train([HeadSpec(16, 0.3, 8, 1), HeadSpec(4, 0.6, 0, 2), spec, HeadSpec(16, 0.5, 0, 3)],
                               *features, 6, 0, "val_loss", 5)[2]
    _assert_same_training(together, alone)
    other_seed = _group(1).train([HeadSpec(8, 0.5, 0, 8)], *features, 6, 0, "val_loss", 5)[0]
    assert other_seed.history["loss"] != alone.history["loss"]  # the masks (and initialisation) follow the seed


def test_a_head_continues_from_given_weights_for_its_own_number_of_epochs(features):
    """Hyperband's continued trials: a head starts from another's best weights and trains its own epoch budget."""
    spec = HeadSpec(16, 0.0, 8, 4)
    earlier = _group(1).train([spec], *features, 3, 0, "val_loss", 0)[0]
    group = _group(2)
    group.set_data(*features, epochs=10, patience=0, objective="val_loss", shuffle_seed=1)
    group.start(1, spec, epochs=2, weights=earlier.weights)
    for placed, given in zip(group.head_weights(1, spec), earlier.weights):
        np.testing.assert_array_equal(placed, given)
    finished = group.step() + group.step()
    assert [slot for slot, _ in finished] == [1] and len(finished[0][1].history["loss"]) == 2
