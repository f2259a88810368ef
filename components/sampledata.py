"""The bundled demo dataset, generated offline from the two photographs scikit-learn ships."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

DEMO_COUNTS = {"train": 60, "valid": 20, "test": 20}  # images per class


def make_demo_dataset(root: Path, counts: dict[str, int] = DEMO_COUNTS, seed: int = 0) -> dict[str, int]:
    """Random crops of sklearn's `china.jpg` and `flower.jpg`, one class each, in SPLIT/CLASS/ folders.

    Crops vary in size, position, flip and brightness and are saved as JPEG and PNG, so the demo
    exercises mixed sizes and formats. Returns the number of images written per split.
    """
    from sklearn.datasets import load_sample_images

    sample = load_sample_images()
    sources = {Path(name).stem: np.asarray(image) for name, image in zip(sample.filenames, sample.images)}
    rng = np.random.default_rng(seed)
    written = {}
    for split, per_class in counts.items():
        written[split] = 0
        for class_name, photo in sorted(sources.items()):
            folder = Path(root) / split / class_name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                height, width = photo.shape[:2]
                side = int(rng.integers(160, min(height, width)))  # big enough to show what the photo is of
                top, left = int(rng.integers(0, height - side)), int(rng.integers(0, width - side))
                crop = Image.fromarray(photo[top:top + side, left:left + side])
                if rng.random() < 0.5:
                    crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
                crop = ImageEnhance.Brightness(crop).enhance(float(rng.uniform(0.7, 1.3)))
                crop = crop.resize((int(rng.integers(48, 200)), int(rng.integers(48, 200))))
                suffix = ".png" if index % 4 == 0 else ".jpg"
                crop.save(folder / f"{split}_{class_name}_{index:03d}{suffix}")
                written[split] += 1
    return written
