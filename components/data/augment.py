"""Image views for extraction-time augmentation and test-time augmentation (TTA).

A view is a small, fully described transformation of a decoded image (flip, crop/zoom, brightness, contrast).
Augmented views are drawn from a generator seeded by the augmentation seed, the copy index and the image's
content hash, so an image gets the same views whatever split order, batch or run it is extracted in; that
makes a view's features cacheable by content like any other (see `row_key`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from components.config import AugmentConfig


@dataclass(frozen=True)
class View:
    flip: bool = False          # mirror left-right
    crop: float = 1.0           # side of the kept square, as a fraction of the image (1: no crop); resized back up
    top: float = 0.0            # where the crop starts, as a fraction of the free margin (0..1)
    left: float = 0.0
    brightness: float = 0.0     # added to every pixel, as a fraction of 255
    contrast: float = 1.0       # pixels scaled about the image mean

    @property
    def is_original(self) -> bool:
        return self == ORIGINAL

    @property
    def spec(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def apply(self, image: np.ndarray) -> np.ndarray:
        """uint8 (S, S, 3) -> uint8 (S, S, 3)."""
        if self.is_original:
            return image
        out = mirrored(image) if self.flip else image
        size = out.shape[0]
        side = max(1, int(round(self.crop * size)))
        if side < size:
            top = int(round(self.top * (size - side)))
            left = int(round(self.left * (size - side)))
            patch = np.ascontiguousarray(out[top:top + side, left:left + side])
            out = np.asarray(Image.fromarray(patch).resize((size, size), Image.BILINEAR))
        if self.brightness or self.contrast != 1.0:
            pixels = out.astype(np.float32)
            mean = pixels.mean()
            pixels = (pixels - mean) * self.contrast + mean + 255.0 * self.brightness
            out = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(out)


ORIGINAL = View()
FLIP = View(flip=True)


def row_key(image_sha1: str, view: View) -> str:
    """Cache key of one image seen through one view: the image's SHA-1 for the original, else a SHA-1 of both."""
    if view.is_original:
        return image_sha1
    return hashlib.sha1(f"{image_sha1}|{json.dumps(view.spec, sort_keys=True)}".encode()).hexdigest()


def augmented_views(image_sha1: str, augment: AugmentConfig) -> list[View]:
    """The `augment.copies` random views of one image, determined by its content and the seed."""
    views = []
    for copy in range(augment.copies):
        rng = np.random.default_rng([augment.seed, copy, int(image_sha1[:15], 16)])
        flip, crop, top, left, brightness, contrast = rng.random(6)
        views.append(View(
            flip=bool(augment.flip and flip < 0.5),
            crop=float(1.0 - augment.crop * crop),
            top=float(top) if augment.crop else 0.0,
            left=float(left) if augment.crop else 0.0,
            brightness=float(augment.brightness * (2 * brightness - 1)),
            contrast=float(1.0 + augment.contrast * (2 * contrast - 1)),
        ))
    return views


def mirrored(pixels: np.ndarray) -> np.ndarray:
    """An image (H, W, 3) or a batch of them (N, H, W, 3) mirrored left-right: a view's flip, and the test-time
    augmentation view."""
    return np.ascontiguousarray(np.flip(pixels, axis=-2))
