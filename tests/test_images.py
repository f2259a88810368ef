import io

import numpy as np
import pytest
from PIL import Image

from components.data.images import ImageReadError, check_image, is_image_name, load_rgb


def _save(path, image, **kwargs):
    image.save(path, **kwargs)
    return path


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16"])
def test_every_mode_becomes_rgb_uint8(tmp_path, mode):
    base = Image.new("RGB", (40, 30), (120, 60, 30))
    image = base.convert(mode) if mode != "I;16" else Image.fromarray(np.full((30, 40), 40000, np.uint16))
    suffix = ".jpg" if mode == "CMYK" else ".png"
    array = load_rgb(_save(tmp_path / f"x{suffix}", image), 16, 10**8)
    assert array.shape == (16, 16, 3) and array.dtype == np.uint8


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    path = _save(tmp_path / "g16.png", Image.fromarray(np.full((8, 8), 32768, np.uint16)))
    assert abs(int(load_rgb(path, 8, 10**8)[0, 0, 0]) - 128) <= 1


def test_transparency_is_composited_over_white(tmp_path):
    path = _save(tmp_path / "a.png", Image.new("RGBA", (8, 8), (0, 0, 0, 0)))
    assert load_rgb(path, 8, 10**8).min() == 255


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    path = _save(tmp_path / "r.jpg", image, exif=exif, quality=95)
    array = load_rgb(path, 40, 10**8)
    assert array[:10].mean() > 200 and array[30:].mean() < 60  # white ends up on top


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"),
    (b"this is not an image", "not an image"),
])
def test_unusable_files_get_a_reason(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    assert reason in check_image(path, 10**8)


def test_truncated_jpeg_is_refused(tmp_path):
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    assert "cannot decode" in check_image(path, 10**8)


def test_pixel_limit_refuses_decompression_bombs(tmp_path):
    path = _save(tmp_path / "big.png", Image.new("L", (300, 300)))
    with pytest.raises(ImageReadError, match="exceeds data.max_pixels=1000"):
        load_rgb(path, 8, 1000)


def test_tiny_image_is_upscaled(tmp_path):
    assert load_rgb(_save(tmp_path / "one.png", Image.new("RGB", (1, 1), (9, 9, 9))), 4, 100).shape == (4, 4, 3)


def test_hidden_and_non_image_names_are_not_images():
    assert is_image_name(__import__("pathlib").Path("a.JPG"))
    for name in (".DS_Store", "._a.jpg", "README.txt", "x.json"):
        assert not is_image_name(__import__("pathlib").Path(name))
