import shutil

import pytest
from conftest import make_dataset

from components.data.dataset import scan_dataset, screen_split
from components.errors import BadImagesError, DatasetError


def test_scan_finds_classes_records_and_ignores_clutter(tmp_path):
    root = make_dataset(tmp_path / "d")
    (root / "train" / "blue" / ".DS_Store").write_bytes(b"\0")
    (root / "train" / "blue" / "README.txt").write_text("notes")
    splits = scan_dataset(root)
    train = splits["train"]
    assert train.class_names == ("blue", "red")
    assert train.counts() == {"blue": 12, "red": 12}
    assert all(r.relpath.startswith("train/") for r in train.records)
    assert [r.label for r in train.records] == [0] * 12 + [1] * 12


def test_content_hash_follows_bytes_not_timestamps(tmp_path):
    root = make_dataset(tmp_path / "d")
    before = scan_dataset(root)["test"].content_hash
    target = next((root / "test" / "red").iterdir())
    data = target.read_bytes()
    target.write_bytes(data)
    assert scan_dataset(root)["test"].content_hash == before
    target.write_bytes(data + b"\0")
    assert scan_dataset(root)["test"].content_hash != before


@pytest.mark.parametrize("breakage,message", [
    (lambda r: shutil.rmtree(r / "valid"), "valid: split folder missing"),
    (lambda r: [p.unlink() for p in (r / "test" / "red").iterdir()], "red: class folder has no images"),
    (lambda r: shutil.rmtree(r / "train" / "red"), "only one class"),
    (lambda r: (r / "test" / "red").rename(r / "test" / "green"), "differ from train"),
])
def test_layout_errors_name_the_folder(tmp_path, breakage, message):
    root = make_dataset(tmp_path / "d")
    breakage(root)
    with pytest.raises(DatasetError, match=message):
        scan_dataset(root)


def test_bad_images_are_all_listed_before_any_work(tmp_path):
    root = make_dataset(tmp_path / "d")
    (root / "train" / "blue" / "empty.jpg").write_bytes(b"")
    (root / "train" / "red" / "fake.png").write_text("not an image")
    split = scan_dataset(root)["train"]
    with pytest.raises(BadImagesError) as error:
        screen_split(split, 10**8, "error")
    assert "empty.jpg: empty file" in str(error.value) and "fake.png: not an image" in str(error.value)


def test_skip_leaves_bad_images_out_and_reports_them(tmp_path):
    root = make_dataset(tmp_path / "d")
    (root / "train" / "blue" / "empty.jpg").write_bytes(b"")
    kept, skipped = screen_split(scan_dataset(root)["train"], 10**8, "skip")
    assert list(skipped) == ["train/blue/empty.jpg"]
    assert len(kept.records) == 24
