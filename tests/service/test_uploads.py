"""decode_upload: uploads convert exactly as `protloc predict` reads files (the same decoder, limited to PNG,
JPEG and TIFF), huge images are refused from their header before any pixel is decoded, and each refusal
maps to its HTTP status."""
from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
import tifffile
from PIL import Image

from protloc.data.images import ImageReadError, ImageTooLarge, UnsupportedImage, compose_stains, decode_image, load_image
from protloc.service.uploads import decode_upload, http_status

LIMIT = 64_000_000  # the service's default

RNG = np.random.default_rng(0)


def saved(tmp_path, name: str, write) -> tuple[bytes, np.ndarray]:
    """(the file's bytes, what data/images.py reads from it)."""
    path = tmp_path / name
    write(path)
    return path.read_bytes(), decode_image(path)


CASES = {
    "rgb.png": lambda p: Image.fromarray(RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(p),
    "gray.png": lambda p: Image.fromarray(RNG.integers(0, 256, (20, 30), dtype=np.uint8)).save(p),
    "rgba.png": lambda p: Image.fromarray(RNG.integers(0, 256, (20, 30, 4), dtype=np.uint8)).save(p),
    "palette.png": lambda p: Image.fromarray(RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)).convert("P").save(p),
    "gray16.png": lambda p: Image.fromarray(RNG.integers(0, 4096, (20, 30), dtype=np.uint16)).save(p),
    "photo.jpg": lambda p: Image.fromarray(RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(p, quality=90),
    "uint16.tif": lambda p: tifffile.imwrite(p, RNG.integers(0, 65536, (20, 30, 3), dtype=np.uint16)),
    "channel-first.tif": lambda p: tifffile.imwrite(p, RNG.integers(0, 256, (4, 20, 30), dtype=np.uint8)),
    "float.tif": lambda p: tifffile.imwrite(p, RNG.random((20, 30), dtype=np.float32)),
    "zlib.tif": lambda p: tifffile.imwrite(p, RNG.integers(0, 256, (20, 30), dtype=np.uint8), compression="zlib"),
}


@pytest.mark.parametrize("name", CASES)
def test_uploads_decode_as_files_are_read(tmp_path, name):
    data, expected = saved(tmp_path, name, CASES[name])
    decoded = decode_upload(data, max_pixels=LIMIT)
    assert decoded.dtype == np.uint8 and decoded.shape == expected.shape
    np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize("kind", ["png", "tiff"])
def test_a_huge_image_is_refused_from_its_header_without_decoding(bombs, kind):
    data = bombs[kind].read_bytes()
    assert len(data) < 300_000  # a small file...
    tracemalloc.start()
    with pytest.raises(ImageTooLarge, match="more than the limit of 64,000,000") as refused:
        decode_upload(data, max_pixels=LIMIT)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 20 * 1024 * 1024  # ...of a 196 or 243 MB image, never inflated
    assert http_status(refused.value) == 413


def test_the_pixel_cap_is_the_callers(tmp_path):
    data, _ = saved(tmp_path, "rgb.png", CASES["rgb.png"])
    assert decode_upload(data, max_pixels=1800).shape == (20, 30, 3)  # height x width x channels
    with pytest.raises(ImageTooLarge, match="20 x 30 x 3 image: 1,800 pixels, more than the limit of 1,799"):
        decode_upload(data, max_pixels=1799)


def test_a_tiff_stack_of_many_pages_is_refused_as_an_unexpected_shape(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((7, 20, 30), dtype=np.uint8))
    with pytest.raises(ImageReadError, match=r"unexpected image shape \(7, 20, 30\)") as refused:
        decode_upload(path.read_bytes(), max_pixels=LIMIT)
    assert http_status(refused.value) == 422


def test_a_tiff_stack_over_the_limit_is_refused_from_its_first_page(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((50, 20, 30), dtype=np.uint8))
    with pytest.raises(ImageTooLarge, match="more than the limit of 25,000"):
        decode_upload(path.read_bytes(), max_pixels=25_000)


def test_float64_tiff_data_over_the_byte_budget_is_refused(tmp_path):
    path = tmp_path / "wide.tif"
    tifffile.imwrite(path, np.zeros((100, 100, 4), dtype=np.float64))  # 320 KB decoded for 40,000 pixels
    with pytest.raises(ImageTooLarge, match="more than the limit of 160,000 decoded bytes"):
        decode_upload(path.read_bytes(), max_pixels=40_000)
    tifffile.imwrite(path, np.zeros((100, 100, 4), dtype=np.float32))  # float32 at the limit fits
    assert decode_upload(path.read_bytes(), max_pixels=40_000).shape == (100, 100, 4)


@pytest.mark.parametrize("data, status, says", [
    (b"", 422, "empty file"),
    (b"GIF89a not what we take", 415, r"not PNG, JPEG or TIFF"),
    (b"II*\x00" + b"\xff" * 40, 422, "TIFF file without image data"),
])
def test_other_files_are_refused_with_a_reason(data, status, says):
    with pytest.raises(ImageReadError, match=says) as refused:
        decode_upload(data, max_pixels=LIMIT)
    assert http_status(refused.value) == status


def test_a_gif_that_predict_reads_is_not_an_upload(tmp_path):
    path = tmp_path / "cells.gif"
    Image.fromarray(RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)).convert("P").save(path)
    assert decode_image(path).shape == (20, 30, 3)  # files on disk: any format PIL knows
    with pytest.raises(UnsupportedImage):
        decode_upload(path.read_bytes(), max_pixels=LIMIT)


def test_a_truncated_png_is_refused_as_damaged():
    buffer = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
    with pytest.raises(ImageReadError, match="not a readable image") as refused:
        decode_upload(buffer.getvalue()[: len(buffer.getvalue()) // 2], max_pixels=LIMIT)
    assert http_status(refused.value) == 422


def test_stains_stack_as_load_image_stacks_stain_files(tmp_path):
    # Two grayscale stains and one saved in colour, as HPA's web images are: read as predict reads them.
    images = [RNG.integers(0, 256, (5, 6, 1), dtype=np.uint8), RNG.integers(0, 256, (5, 6, 3), dtype=np.uint8),
              RNG.integers(0, 256, (5, 6, 1), dtype=np.uint8)]
    paths = []
    for index, image in enumerate(images):
        paths.append(tmp_path / f"stain{index}.png")
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(paths[-1])
    uploads = [decode_upload(path.read_bytes(), max_pixels=LIMIT) for path in paths]
    np.testing.assert_array_equal(compose_stains(uploads), load_image(paths, channels=3))
    with pytest.raises(ImageReadError, match="stain images differ in size"):
        compose_stains([images[0], np.zeros((5, 7, 1), dtype=np.uint8)])
