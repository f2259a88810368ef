"""HDF5 feature files (components/features/store.py): written through a partial file and renamed, resumed after
an interruption, read back whole, and refused with one clear error when incomplete or missing."""
import h5py
import numpy as np
import pytest

from components.data.dataset import ImageRecord
from components.errors import FFXError
from components.features.extraction import Row
from components.features.store import FeatureWriter, partial_path, read_features, split_summary

CLASSES = ["cat", "dog"]


def _rows(count: int) -> list[Row]:
    records = [ImageRecord(None, f"train/{CLASSES[i % 2]}/{i}.jpg", i % 2, 100, f"{i:040x}") for i in range(count)]
    return [Row(record, index) for index, record in enumerate(records)]


def _features(count: int, dim: int = 3) -> np.ndarray:
    return np.arange(count * dim, dtype=np.float32).reshape(count, dim)


def _writer(path, rows, key="inputs-1"):
    return FeatureWriter(path, key, rows, 3, {"class_names": CLASSES, "content_hash": "abc", "split": "train"})


class Interrupted(Exception):
    pass


def test_complete_file_is_renamed_into_place_and_reads_back_whole(tmp_path):
    path, rows = tmp_path / "features" / "train.h5", _rows(5)
    with _writer(path, rows) as writer:
        writer.append(_features(5)[:2])
        assert writer.partial.exists() and not path.exists()  # written beside, under another name
        writer.append(_features(5)[2:])
    assert path.exists() and not partial_path(path).exists()
    data = read_features(path)
    np.testing.assert_array_equal(data.features, _features(5))
    assert data.labels.tolist() == [0, 1, 0, 1, 0] and data.paths == [r.record.relpath for r in rows]
    assert data.class_names == CLASSES and data.num_classes == 2 and data.source is None
    assert data.attrs["complete"] and "rows_done" not in data.attrs


def test_an_interrupted_write_resumes_from_the_last_flushed_row(tmp_path):
    path, rows = tmp_path / "train.h5", _rows(6)
    with pytest.raises(Interrupted), _writer(path, rows) as writer:
        writer.append(_features(6)[:4])
        raise Interrupted
    assert not path.exists() and partial_path(path).exists()  # nothing half-written under the real name
    with _writer(path, rows) as writer:
        assert writer.rows_done == 4  # the same inputs: continue, not start over
        writer.append(_features(6)[4:])
    np.testing.assert_array_equal(read_features(path).features, _features(6))


def test_a_partial_file_from_other_inputs_is_started_again(tmp_path):
    path, rows = tmp_path / "train.h5", _rows(4)
    with pytest.raises(Interrupted), _writer(path, rows) as writer:
        writer.append(_features(4)[:3] + 100)
        raise Interrupted
    with _writer(path, rows, key="inputs-2") as writer:  # other images or backbone: its rows are worthless
        assert writer.rows_done == 0
        writer.append(_features(4))
    np.testing.assert_array_equal(read_features(path).features, _features(4))


def test_a_damaged_partial_file_is_started_again(tmp_path):
    path, rows = tmp_path / "train.h5", _rows(2)
    partial_path(path).write_bytes(b"not HDF5: a hard kill mid-write")
    with _writer(path, rows) as writer:
        assert writer.rows_done == 0
        writer.append(_features(2))
    assert read_features(path).features.shape == (2, 3)


def test_closing_with_rows_missing_is_an_error_and_renames_nothing(tmp_path):
    path = tmp_path / "train.h5"
    with pytest.raises(AssertionError, match="2 of 3 rows written"), _writer(path, _rows(3)) as writer:
        writer.append(_features(2))
    assert not path.exists() and partial_path(path).exists()


def test_reading_a_missing_incomplete_or_unreadable_file_is_one_clear_error(tmp_path):
    with pytest.raises(FFXError, match=r"missing\.h5: feature file not found \(run `ffx extract` first\)"):
        read_features(tmp_path / "missing.h5")
    incomplete = tmp_path / "incomplete.h5"
    with h5py.File(incomplete, "w") as handle:
        handle.attrs["class_names"] = '["cat", "dog"]'
    with pytest.raises(FFXError, match=r"incomplete\.h5: incomplete feature file \(run `ffx extract` again\)"):
        read_features(incomplete)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"plain text")
    with pytest.raises(FFXError, match=r"garbage\.h5: not a readable HDF5 feature file"):
        read_features(garbage)


def test_split_summary_counts_each_class_without_loading_features(tmp_path):
    path = tmp_path / "train.h5"
    with _writer(path, _rows(5)) as writer:
        writer.append(_features(5))
    assert split_summary(path) == {"counts": {"cat": 3, "dog": 2}, "total": 5, "content_hash": "abc"}
