"""decode_upload: uploads convert exactly as `protloc predict` reads files, and huge images are refused from
their header, before any pixel is decoded."""
from __future__ import annotations

import io
import time
import tracemalloc

import numpy as np
import pytest
import tifffile
from PIL import Image

from protloc.data.images import decode_image
from protloc.service.uploads import (ImageTooLarge, UnreadableImage, UnsupportedImage, compose_stains,
                                     decode_upload)

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
    decoded = decode_upload(data)
    assert decoded.dtype == np.uint8 and decoded.shape == expected.shape
    np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize("kind", ["png", "tiff"])
def test_a_huge_image_is_refused_from_its_header_without_decoding(bombs, kind):
    data = bombs[kind].read_bytes()
    assert len(data) < 300_000  # a small file...
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge, match="over the limit of 16,000,000 pixels"):
        decode_upload(data)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 20 * 1024 * 1024 and elapsed < 1.0  # ...of a 196 or 243 MB image, never inflated


def test_the_pixel_cap_is_the_callers(tmp_path):
    data, _ = saved(tmp_path, "rgb.png", CASES["rgb.png"])
    assert decode_upload(data, max_pixels=600).shape == (20, 30, 3)
    with pytest.raises(ImageTooLarge, match="30 x 20 pixels is over the limit of 599"):
        decode_upload(data, max_pixels=599)


def test_a_tiff_stack_of_many_pages_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((7, 20, 30), dtype=np.uint8))
    with pytest.raises(UnreadableImage, match=r"unexpected image shape \(7, 20, 30\)"):
        decode_upload(path.read_bytes())


def test_float64_tiff_data_over_the_byte_budget_is_refused(tmp_path):
    path = tmp_path / "wide.tif"
    tifffile.imwrite(path, np.zeros((100, 100, 4), dtype=np.float64))  # 320 KB decoded for 10,000 pixels
    with pytest.raises(ImageTooLarge, match="decoded bytes"):
        decode_upload(path.read_bytes(), max_pixels=10_000)


@pytest.mark.parametrize("data, error, says", [
    (b"", UnreadableImage, "empty file"),
    (b"GIF89a not what we take", UnsupportedImage, "not a PNG, JPEG or TIFF"),
    (b"II*\x00" + b"\xff" * 40, UnreadableImage, "damaged TIFF"),
])
def test_other_files_are_refused_with_a_reason(data, error, says):
    with pytest.raises(error, match=says):
        decode_upload(data)


def test_a_truncated_png_is_refused_as_damaged():
    buffer = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
    with pytest.raises(UnreadableImage, match="damaged PNG"):
        decode_upload(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def test_stains_stack_as_load_image_stacks_stain_files():
    planes = [RNG.integers(0, 256, (5, 6, 1), dtype=np.uint8) for _ in range(3)]
    np.testing.assert_array_equal(compose_stains(planes), np.concatenate(planes, axis=-1))
    with pytest.raises(UnreadableImage, match="stain images differ in size"):
        compose_stains([planes[0], np.zeros((5, 7, 1), dtype=np.uint8)])
