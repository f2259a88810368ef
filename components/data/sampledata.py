"""The bundled demo dataset, generated offline from photographs that installed packages ship.

Four classes, each a subject a person names at a glance: `pagoda` (scikit-learn's `china.jpg`), `dahlia`
(`flower.jpg`), `face` and `flag` (matplotlib's `grace_hopper.jpg`). Every image is a crop of one photo.

No two splits share a source pixel. Each class is a box of its photo cut into a grid of tiles, TILE_GAP pixels
apart, and each tile belongs to one split (the layouts of `DEMO_CLASSES`); a crop lies entirely inside one of its
split's tiles. `plan_demo_crops` gives every image's source box; tests/test_sampledata.py checks that boxes of
different splits never overlap. Two rules shaped the layouts, both from what `ffx audit` counts as a leak (a
near-duplicate across splits in feature space, shared pixels or not):

- the left and right tiles of a symmetric subject belong to the same split: a crop and the mirror image of its
  counterpart look alike;
- only subjects with structure at the scale of a crop: plain or repeating texture (sky, water, foliage, the
  uniform's cloth) gives crops that look alike wherever they are cut, so those parts are left out.

Valid and test tiles alternate with training tiles, so they show the same kinds of parts; the face's parts are
unique (one nose, one chin), so its valid and test crops show parts that training never sees: the hardest class.
The crops are then seen badly (`DEGRADE`: few pixels, blur, colour, noise, JPEG quality) so that the task is not
trivial and heads of different sizes score differently, which is what a demo search should show. A left-right
mirror is one of the variations; it changes no class.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

DEMO_COUNTS = {"train": 45, "valid": 18, "test": 18}  # images per class
# class -> (photo, box, layout). The box is (left, top, right, bottom) in the photo's pixels, right and bottom
# exclusive. The layout cuts it into a grid of equal tiles, one string per row of tiles, one letter per tile: the
# split its pixels belong to (LAYOUT_SPLITS). The boxes of one photo do not overlap: no pixel is in two classes.
DEMO_CLASSES: dict[str, tuple[str, tuple[int, int, int, int], tuple[str, ...]]] = {
    # floors of the tower: windows, columns, balconies and eaves, repeated
    "pagoda": ("china", (95, 105, 335, 340), ("TVT",
                                              "XTX",
                                              "TVT")),
    # the flower in the middle: petals, repeated
    "dahlia": ("flower", (175, 90, 440, 355), ("TVT",
                                               "XTX",
                                               "TVT")),
    # cap brim to chin, in rows: cap, glasses, cheeks and nose, jaw and chin
    "face": ("hopper", (160, 40, 370, 340), ("TVT",
                                             "XTX",
                                             "TVT",
                                             "XTX")),
    # stars on blue, behind her
    "flag": ("hopper", (0, 0, 130, 265), ("TX",
                                          "TV")),
}
LAYOUT_SPLITS = {"T": "train", "V": "valid", "X": "test"}
TILE_GAP = 6      # pixels between two tiles that belong to no crop
CROP_SHARE = 0.7  # a crop's width and height: from this share of its tile's to all of it
# How each crop is seen (render_crop): each knob drawn uniformly from its range, for each image.
DEGRADE = {
    "pixels": (32, 80),        # the crop is shrunk to this many pixels a side (the detail that is left)...
    "size": (48, 200),         # ...then enlarged to this width and height (drawn apart: the aspect ratio changes)
    "blur": (0.0, 0.6),        # Gaussian blur radius, in the shrunk crop's pixels
    "colour": (0.8, 1.2),      # saturation factor
    "contrast": (0.7, 1.2),    # contrast factor
    "brightness": (0.8, 1.2),  # brightness factor
    "noise": (0.0, 8.0),       # standard deviation of Gaussian noise, out of 255
    "quality": (30, 95),       # JPEG quality (every fourth image of a class is a PNG)
}


@dataclass(frozen=True)
class DemoCrop:
    """Where one demo image comes from: `box` is (left, top, right, bottom) in `photo`'s pixels."""

    split: str
    label: str
    index: int
    photo: str
    box: tuple[int, int, int, int]

    @property
    def name(self) -> str:
        """The file name without its suffix."""
        return f"{self.split}_{self.label}_{self.index:03d}"


def demo_photos() -> dict[str, np.ndarray]:
    """scikit-learn's `china.jpg` and `flower.jpg`, and matplotlib's `grace_hopper.jpg` (as `hopper`), RGB arrays."""
    from matplotlib import cbook
    from sklearn.datasets import load_sample_images

    sample = load_sample_images()
    photos = {Path(name).stem: np.asarray(image) for name, image in zip(sample.filenames, sample.images)}
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as hopper:
        photos["hopper"] = np.asarray(hopper.convert("RGB"))
    return photos


def split_tiles(box: tuple[int, int, int, int], layout: tuple[str, ...], gap: int = TILE_GAP
                ) -> dict[str, list[tuple[int, int, int, int]]]:
    """The box cut into the layout's grid of equal tiles, `gap` pixels apart: split -> its tiles' boxes."""
    left, top, right, bottom = box
    rows, columns = len(layout), len(layout[0])
    width = (right - left - gap * (columns - 1)) // columns
    height = (bottom - top - gap * (rows - 1)) // rows
    tiles: dict[str, list[tuple[int, int, int, int]]] = {}
    for row, letters in enumerate(layout):
        for column, letter in enumerate(letters):
            x, y = left + column * (width + gap), top + row * (height + gap)
            tiles.setdefault(LAYOUT_SPLITS[letter], []).append((x, y, x + width, y + height))
    return tiles


def plan_demo_crops(counts: dict[str, int] = DEMO_COUNTS, seed: int = 0) -> list[DemoCrop]:
    """Every demo image's source box, in the order they are written: a rectangle inside one of its split's tiles
    (the split's tiles in turn), from CROP_SHARE to all of the tile's width and height, at a random place."""
    rng = np.random.default_rng([seed, 0])
    crops = []
    for label, (photo, box, layout) in DEMO_CLASSES.items():
        tiles = split_tiles(box, layout)
        for split, per_class in counts.items():
            for index in range(per_class):
                left, top, right, bottom = tiles[split][index % len(tiles[split])]
                width = int(rng.integers(int(CROP_SHARE * (right - left)), right - left + 1))
                height = int(rng.integers(int(CROP_SHARE * (bottom - top)), bottom - top + 1))
                x = int(rng.integers(left, right - width + 1))
                y = int(rng.integers(top, bottom - height + 1))
                crops.append(DemoCrop(split, label, index, photo, (x, y, x + width, y + height)))
    return crops


def render_crop(photo: np.ndarray, crop: DemoCrop, rng: np.random.Generator) -> Image.Image:
    """The crop's pixels, seen badly (each DEGRADE knob drawn from its range): mirrored or not, shrunk to a few
    dozen pixels a side, blurred, saturation, contrast and brightness changed, noise added, then enlarged to a
    random width and height."""
    left, top, right, bottom = crop.box
    image = Image.fromarray(photo[top:bottom, left:right])
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    side = int(rng.integers(DEGRADE["pixels"][0], DEGRADE["pixels"][1] + 1))
    image = image.resize((side, side), Image.Resampling.BILINEAR)
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(*DEGRADE["blur"]))))
    image = ImageEnhance.Color(image).enhance(float(rng.uniform(*DEGRADE["colour"])))
    image = ImageEnhance.Contrast(image).enhance(float(rng.uniform(*DEGRADE["contrast"])))
    image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(*DEGRADE["brightness"])))
    pixels = np.asarray(image, dtype=np.float32)
    pixels = pixels + rng.normal(0.0, float(rng.uniform(*DEGRADE["noise"])), pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    low, high = DEGRADE["size"]
    return image.resize((int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1))),
                        Image.Resampling.BILINEAR)


def make_demo_dataset(root: Path, counts: dict[str, int] = DEMO_COUNTS, seed: int = 0) -> dict[str, int]:
    """Write the demo images as root/SPLIT/CLASS/SPLIT_CLASS_NNN.jpg (`plan_demo_crops`, `render_crop`): JPEG of
    varied quality, every fourth one PNG, of mixed sizes. Deterministic for a seed. Returns the images per split."""
    photos = demo_photos()
    rng = np.random.default_rng([seed, 1])
    written = dict.fromkeys(counts, 0)
    for crop in plan_demo_crops(counts, seed):
        folder = Path(root) / crop.split / crop.label
        folder.mkdir(parents=True, exist_ok=True)
        image = render_crop(photos[crop.photo], crop, rng)
        quality = int(rng.integers(DEGRADE["quality"][0], DEGRADE["quality"][1] + 1))
        if crop.index % 4 == 0:
            image.save(folder / f"{crop.name}.png")
        else:
            image.save(folder / f"{crop.name}.jpg", quality=quality)
        written[crop.split] += 1
    return written
