"""Decoding image files into RGB arrays, identically at extraction and prediction."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Extensions read as images; anything else in a class folder is ignored (README.txt, .json, ...).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


class ImageReadError(Exception):
    """One file is not a usable image; str(exc) is the reason."""


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit grayscale: scale to 8 bits instead of clipping everything above 255 to white; float: clipped.
        array = np.asarray(image, dtype=np.float64)
        wide = image.mode.startswith("I;16") or (image.mode == "I" and array.max() > 255)
        image = Image.fromarray(np.clip(array * (255.0 / 65535.0 if wide else 1.0), 0, 255).astype(np.uint8), mode="L")
    elif image.mode in ("P", "PA", "LA", "RGBA") or "transparency" in image.info:
        # Composite transparency over white, as viewers show it, rather than exposing hidden colours.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def load_rgb(source: str | Path | bytes, size: int, max_pixels: int) -> np.ndarray:
    """Read an image file, or its bytes, as a size x size x 3 uint8 array (EXIF orientation applied, bilinear
    resize): extraction, `ffx predict` and the served model decode alike. ImageReadError, with a short reason, for
    anything that is not a usable image."""
    try:
        if isinstance(source, (bytes, bytearray)):
            if not source:
                raise ImageReadError("empty value (0 bytes)")
            opened = io.BytesIO(source)
        else:
            opened = Path(source)
            if not opened.is_file():
                raise ImageReadError("no such file")
            if opened.stat().st_size == 0:
                raise ImageReadError("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(opened) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageReadError(
                        f"{width}x{height} = {width * height} pixels exceeds data.max_pixels={max_pixels}")
                image.load()
                image = ImageOps.exif_transpose(image)
                rgb = _to_rgb(image)
                if rgb.size != (size, size):
                    rgb = rgb.resize((size, size), Image.BILINEAR)
                return np.asarray(rgb, dtype=np.uint8)
    except Image.UnidentifiedImageError:
        raise ImageReadError("not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(f"decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"cannot decode: {exc}") from None


def check_image(path: str | Path, max_pixels: int) -> str | None:
    """The reason `path` cannot be used, or None when it decodes fully."""
    try:
        load_rgb(path, 8, max_pixels)
    except ImageReadError as exc:
        return str(exc)
    return None
