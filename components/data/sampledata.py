"""The bundled demo dataset, generated offline from photographs that installed packages ship."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

DEMO_COUNTS = {"train": 30, "valid": 12, "test": 12}  # images per class
HALVES = ("left", "right")


def demo_photos() -> dict[str, np.ndarray]:
    """scikit-learn's `china.jpg` and `flower.jpg`, and matplotlib's `grace_hopper.jpg`, as RGB arrays."""
    from matplotlib import cbook
    from sklearn.datasets import load_sample_images

    sample = load_sample_images()
    photos = {Path(name).stem: np.asarray(image) for name, image in zip(sample.filenames, sample.images)}
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as hopper:
        photos["hopper"] = np.asarray(hopper.convert("RGB"))
    return photos


def make_demo_dataset(root: Path, counts: dict[str, int] = DEMO_COUNTS, seed: int = 0) -> dict[str, int]:
    """Six classes, `PHOTO_left` and `PHOTO_right`: random crops whose centre lies in that half of the photo.

    Crops near the middle of a photo show much the same thing from either half, and they vary in size,
    flip and brightness, so the task is not trivially separable: heads of different sizes score differently,
    which is what a demo search should show. Saved as JPEG and PNG of mixed sizes, in SPLIT/CLASS/ folders.
    Returns the number of images written per split.
    """
    rng = np.random.default_rng(seed)
    written = {}
    photos = demo_photos()
    for split, per_class in counts.items():
        written[split] = 0
        for photo_name, photo in sorted(photos.items()):
            height, width = photo.shape[:2]
            for half_index, half in enumerate(HALVES):
                folder = Path(root) / split / f"{photo_name}_{half}"
                folder.mkdir(parents=True, exist_ok=True)
                for index in range(per_class):
                    side = int(rng.integers(96, min(height, width // 2)))
                    centre_x = int(rng.integers(half_index * width // 2, (half_index + 1) * width // 2))
                    left = int(np.clip(centre_x - side // 2, 0, width - side))
                    top = int(rng.integers(0, height - side))
                    crop = Image.fromarray(photo[top:top + side, left:left + side])
                    if rng.random() < 0.5:
                        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
                    crop = ImageEnhance.Brightness(crop).enhance(float(rng.uniform(0.7, 1.3)))
                    crop = crop.resize((int(rng.integers(48, 200)), int(rng.integers(48, 200))))
                    suffix = ".png" if index % 4 == 0 else ".jpg"
                    crop.save(folder / f"{split}_{photo_name}_{half}_{index:03d}{suffix}")
                    written[split] += 1
    return written
