"""The valid images held out for decisions: chosen by content, per class, the same whatever the order."""
import hashlib

import numpy as np
import pytest

from components.data.holdout import decision_mask


def _sha1s(count: int, salt: str = "") -> list[str]:
    return [hashlib.sha1(f"{salt}{i}".encode()).hexdigest() for i in range(count)]


def test_each_class_gives_its_share_and_keeps_the_rest_for_the_search():
    sha1s, labels = _sha1s(100), np.array([0] * 70 + [1] * 30)
    held = decision_mask(sha1s, labels, 0.3)
    assert held[labels == 0].sum() == 21 and held[labels == 1].sum() == 9


def test_the_choice_follows_the_images_contents_not_their_order_or_names():
    sha1s, labels = _sha1s(40), np.array([0, 1] * 20)
    held = decision_mask(sha1s, labels, 0.25)
    order = np.random.default_rng(0).permutation(40)
    shuffled = decision_mask([sha1s[i] for i in order], labels[order], 0.25)
    assert {sha1s[i] for i in order[shuffled]} == {s for s, h in zip(sha1s, held) if h}
    as_bytes = decision_mask([s.encode() for s in sha1s], labels, 0.25)  # as HDF5 stores them
    np.testing.assert_array_equal(as_bytes, held)


@pytest.mark.parametrize("count, expected", [(1, 0), (2, 1), (3, 1), (10, 3)])
def test_a_small_class_keeps_at_least_one_image_on_each_side(count, expected):
    held = decision_mask(_sha1s(count, "small"), np.zeros(count, dtype=int), 0.3)
    assert held.sum() == expected
