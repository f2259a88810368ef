"""The bundled demo data (`ffx demo-data`): splits cut from disjoint pixels, counts, layout, formats,
determinism."""
import itertools
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from components.data.dataset import scan_dataset
from components.data.sampledata import (DEMO_CLASSES, DEMO_COUNTS, LAYOUT_SPLITS, demo_photos, make_demo_dataset,
                                        plan_demo_crops, split_tiles)

OTHER_COUNTS = {"train": 70, "valid": 12, "test": 12}  # bench/serving.py's


def overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.parametrize("counts,seed", [(DEMO_COUNTS, 0), (OTHER_COUNTS, 3)])
def test_no_source_pixel_is_in_two_splits(counts, seed):
    crops = plan_demo_crops(counts, seed)
    by_photo = {}
    for crop in crops:
        by_photo.setdefault(crop.photo, []).append(crop)
    pairs = 0
    for same_photo in by_photo.values():
        for a, b in itertools.combinations(same_photo, 2):
            if a.split != b.split:
                pairs += 1
                assert not overlap(a.box, b.box), (a, b)
    assert pairs > 10_000  # the check ran over every photo's crops


def test_every_crop_lies_in_one_of_its_splits_tiles_inside_its_class_box():
    photos = demo_photos()
    for crop in plan_demo_crops():
        photo, box, layout = DEMO_CLASSES[crop.label]
        height, width = photos[photo].shape[:2]
        assert crop.photo == photo
        assert 0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height
        left, top, right, bottom = crop.box
        assert right - left >= 16 and bottom - top >= 16
        assert any(t[0] <= left and t[1] <= top and right <= t[2] and bottom <= t[3]
                   for t in split_tiles(box, layout)[crop.split]), crop


def test_tiles_of_different_splits_and_boxes_of_different_classes_are_disjoint():
    for photo in {photo for photo, _, _ in DEMO_CLASSES.values()}:
        boxes = [box for p, box, _ in DEMO_CLASSES.values() if p == photo]
        assert not any(overlap(a, b) for a, b in itertools.combinations(boxes, 2))  # no pixel in two classes
    for _, box, layout in DEMO_CLASSES.values():
        tiles = split_tiles(box, layout)
        assert set(tiles) == set(LAYOUT_SPLITS.values())  # every split has a part of every class
        for (split_a, a), (split_b, b) in itertools.combinations(
                [(split, tile) for split, split_tiles_ in tiles.items() for tile in split_tiles_], 2):
            assert not overlap(a, b)


def test_counts_layout_formats_and_sizes(tmp_path):
    assert make_demo_dataset(tmp_path) == {split: n * len(DEMO_CLASSES) for split, n in DEMO_COUNTS.items()}
    dataset = scan_dataset(tmp_path)
    for split, per_class in DEMO_COUNTS.items():
        assert list(dataset[split].class_names) == sorted(DEMO_CLASSES)
        assert dataset[split].counts() == {label: per_class for label in DEMO_CLASSES}
    files = sorted(tmp_path.rglob("*.*"))
    assert len(files) == sum(DEMO_COUNTS.values()) * len(DEMO_CLASSES)
    pngs = sum(len(range(0, n, 4)) for n in DEMO_COUNTS.values()) * len(DEMO_CLASSES)  # every fourth image
    assert Counter(path.suffix for path in files) == {".png": pngs, ".jpg": len(files) - pngs}
    planned = {f"{crop.split}/{crop.label}/{crop.name}" for crop in plan_demo_crops()}
    assert {f"{path.parent.parent.name}/{path.parent.name}/{path.stem}" for path in files} == planned
    sizes = set()
    for path in files:
        with Image.open(path) as image:
            assert image.mode == "RGB" and image.format == ("PNG" if path.suffix == ".png" else "JPEG")
            assert 48 <= min(image.size) and max(image.size) <= 200
            sizes.add(image.size)
    assert len(sizes) > 200  # mixed sizes and aspect ratios


def test_deterministic_for_a_seed(tmp_path):
    def contents(root):
        return {path.relative_to(root): path.read_bytes() for path in sorted(root.rglob("*.*"))}

    small = {"train": 3, "valid": 2, "test": 2}
    make_demo_dataset(tmp_path / "a", small, seed=0)
    make_demo_dataset(tmp_path / "b", small, seed=0)
    make_demo_dataset(tmp_path / "c", small, seed=1)
    assert contents(tmp_path / "a") == contents(tmp_path / "b")
    assert contents(tmp_path / "a") != contents(tmp_path / "c")
    assert plan_demo_crops(small, 0) == plan_demo_crops(small, 0) != plan_demo_crops(small, 1)


def test_each_image_shows_its_source_box(tmp_path):
    """What the plan reports is what was cut: each PNG, back at its box's size, correlates with the photo there
    (mirrored or not)."""
    photos, counts = demo_photos(), {"train": 1, "valid": 1, "test": 1}
    make_demo_dataset(tmp_path, counts)
    for crop in plan_demo_crops(counts):
        left, top, right, bottom = crop.box
        source = photos[crop.photo][top:bottom, left:right].mean(axis=2)
        with Image.open(tmp_path / crop.split / crop.label / f"{crop.name}.png") as image:
            shown = np.asarray(image.convert("L").resize((right - left, bottom - top)), dtype=np.float64)
        correlation = max(np.corrcoef(view.ravel(), source.ravel())[0, 1] for view in (shown, shown[:, ::-1]))
        assert correlation > 0.5, (crop, correlation)
