"""Atomic writes: the temporary file a writer fills, renamed over the final name only when the write succeeds."""
import numpy as np
import pytest

from components.files import atomic_path


def test_the_temporary_file_ends_as_the_final_one_does_for_writers_that_choose_the_format_by_it(tmp_path):
    """Keras saves weights only to a name ending `.weights.h5`: every suffix of the final name is kept."""
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    path = tmp_path / "epoch0001.weights.h5"
    with atomic_path(path) as tmp:
        assert tmp.parent == path.parent and tmp.name.endswith(".weights.h5") and tmp.name != path.name
        model.save_weights(tmp)
        assert not path.exists()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    copy = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    copy.load_weights(path)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), copy.get_weights()))


def test_a_write_that_fails_leaves_neither_the_file_nor_its_temporary_copy(tmp_path):
    path = tmp_path / "report.md"
    with pytest.raises(ValueError, match="a bug"), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise ValueError("a bug")
    assert not list(tmp_path.iterdir())
