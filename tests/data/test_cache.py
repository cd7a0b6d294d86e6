"""The image cache: exact pixels, keys that never serve a changed file, the size limit, and many processes at once."""
from __future__ import annotations

import multiprocessing
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from protloc.data.cache import HEADER, IMAGES_FOLDER, ImageCache, entry_key, open_image_cache
from protloc.data.check import find_image_problems
from protloc.data.dataset import ImageDataset
from protloc.data.images import ImageReadError, load_image
from protloc.data.readers import read_dataset
from protloc.data.transforms import eval_transforms, resize_transform

ENTRY_BYTES = HEADER.size + 3 * 32 * 32


def write_png(path: Path, seed: int, shape=(40, 48, 3)) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def images(tmp_path) -> list[Path]:
    folder = tmp_path / "images"
    folder.mkdir()
    return [write_png(folder / f"{i}.png", seed=i) for i in range(6)]


def reference(source, channels: int, size: int, **variant) -> torch.Tensor:
    """What the presets' resize makes of the decoded image, without any cache."""
    array = load_image(source, channels, **variant)
    return resize_transform(size)(torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))))


def entries(cache: ImageCache) -> list[Path]:
    return sorted(path for path in (cache.folder / IMAGES_FOLDER).glob("*/*") if path.suffix == ".u8")


def rewrite(entry: Path, pixels: bytes | None = None, shape: tuple[int, int, int] | None = None) -> None:
    """Replace an entry's pixels (and the decoded shape its header records) by a whole entry with a good checksum,
    as the cache itself would write it."""
    magic, *stored_shape, _checksum = HEADER.unpack(entry.read_bytes()[: HEADER.size])
    pixels = pixels if pixels is not None else entry.read_bytes()[HEADER.size:]
    entry.write_bytes(HEADER.pack(magic, *(shape or stored_shape), zlib.crc32(pixels)) + pixels)


def blacken(entry: Path) -> None:
    """Zero an entry's pixels, keeping it whole: a read of the entry then shows, a decode would not."""
    rewrite(entry, bytes(entry.stat().st_size - HEADER.size))


def test_cached_images_are_the_resized_pixels_and_are_read_back(images, tmp_path):
    cache = open_image_cache(tmp_path / "cache", limit_gb=1)
    first = cache.load(images[0], 3, 32)
    assert first.dtype == torch.uint8 and first.shape == (3, 32, 32)
    assert torch.equal(first, reference(images[0], 3, 32))
    (entry,) = entries(cache)
    # Read back from the entry, not decoded again: change the stored bytes and the change shows.
    blacken(entry)
    assert cache.load(images[0], 3, 32).sum() == 0


def test_stain_sets_are_cached_as_their_composite(tmp_path):
    stains = [write_png(tmp_path / f"s_{name}.png", seed=i, shape=(40, 40)) for i, name in enumerate("rgby")]
    cache = open_image_cache(tmp_path / "cache", limit_gb=1)
    for _ in range(2):
        assert torch.equal(cache.load(stains, 4, 24), reference(stains, 4, 24))


def test_a_changed_file_is_decoded_again(images, tmp_path):
    cache = open_image_cache(tmp_path / "cache", limit_gb=1)
    path = images[0]
    cache.load(path, 3, 32)
    # Same byte size, new pixels (uncompressed), only the modification time tells them apart.
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(path, compress_level=0)
    size = path.stat().st_size
    Image.fromarray(np.full((40, 48, 3), 200, np.uint8)).save(path, compress_level=0)
    assert path.stat().st_size == size
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert torch.equal(cache.load(path, 3, 32), torch.full((3, 32, 32), 200, dtype=torch.uint8))
    # A new size (a different file written under the same name) likewise.
    write_png(path, seed=99)
    assert torch.equal(cache.load(path, 3, 32), reference(path, 3, 32))


def test_sizes_channel_sets_and_intensity_scales_get_their_own_entries(images, tmp_path):
    cache = open_image_cache(tmp_path / "cache", limit_gb=1)
    wide = tmp_path / "wide.png"  # 16-bit grayscale, values up to 4000: 12-bit camera data
    Image.fromarray(np.random.default_rng(5).integers(0, 4000, (40, 48), dtype=np.uint16)).save(wide)
    variants = [(images[0], 3, 32, {}), (images[0], 3, 16, {}), (images[0], 1, 32, {}),
                (wide, 1, 32, {"bit_depth": 12}), (wide, 1, 32, {"bit_depth": 16}),
                (wide, 3, 32, {"bit_depth": 12, "gray_as": "green"}), (wide, 3, 32, {"bit_depth": 12, "gray_as": "red"})]
    for source, channels, size, variant in variants:
        for _ in range(2):  # stored, then read back
            image = cache.load(source, channels, size, **variant)
            assert image.shape == (channels, size, size)
            assert torch.equal(image, reference(source, channels, size, **variant))
    assert len(entries(cache)) == len(variants)
    assert not torch.equal(cache.load(wide, 1, 32, bit_depth=12), cache.load(wide, 1, 32, bit_depth=16))


def test_a_truncated_entry_is_decoded_and_written_again(images, tmp_path):
    cache = open_image_cache(tmp_path / "cache", limit_gb=1)
    cache.load(images[0], 3, 32)
    (entry,) = entries(cache)
    entry.write_bytes(b"\x01" * 100)  # as a crash in the middle of a write would leave it
    assert torch.equal(cache.load(images[0], 3, 32), reference(images[0], 3, 32))
    assert entry.stat().st_size == ENTRY_BYTES


def test_unreadable_files_raise_as_without_a_cache_and_are_not_stored(tmp_path):
    cache = open_image_cache(tmp_path / "cache", limit_gb=1)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match="not a readable image"):
        cache.load(broken, 3, 32)
    with pytest.raises(ImageReadError, match="file not found"):
        cache.load(tmp_path / "missing.png", 3, 32)
    assert entries(cache) == []


def test_entries_past_the_limit_are_not_stored_but_still_served(images, tmp_path):
    cache = ImageCache(tmp_path / "cache", limit_bytes=int(2.5 * ENTRY_BYTES))
    for path in images[:4]:
        assert torch.equal(cache.load(path, 3, 32), reference(path, 3, 32))
    assert len(entries(cache)) == 2 and cache.refused == 2
    assert cache.used_bytes() == 2 * ENTRY_BYTES


def test_prepare_makes_room_by_removing_the_least_recently_used_other_entries(images, tmp_path):
    cache = ImageCache(tmp_path / "cache", limit_bytes=3 * ENTRY_BYTES)
    stored = {}
    for age, path in enumerate(images[:3]):  # images[0] used longest ago
        cache.load(path, 3, 32)
        stored[path] = cache.entry_path(entry_key(path, 3, 32))
        os.utime(stored[path], (1_000_000 + age, 1_000_000 + age))
    # The next run reads images[0] (stored, so kept however old) and two new images.
    cache.prepare([images[0], images[3], images[4]], 3, 32)
    assert stored[images[0]].exists() and not stored[images[1]].exists() and not stored[images[2]].exists()
    assert cache.used_bytes() == ENTRY_BYTES
    for path in (images[3], images[4]):
        cache.load(path, 3, 32)
    assert len(entries(cache)) == 3 and cache.refused == 0


def load_all(args) -> list[bytes]:
    folder, paths = args
    cache = ImageCache(folder, limit_bytes=10**9)
    return [cache.load(path, 3, 32).numpy().tobytes() for path in paths]


def test_processes_filling_one_cache_at_once_store_each_image_whole(images, tmp_path):
    folder = tmp_path / "cache"
    orders = [images, images[::-1], images[2:] + images[:2], images]
    with multiprocessing.get_context("fork").Pool(4) as pool:  # as DataLoader workers start on Linux
        results = pool.map(load_all, [(folder, order) for order in orders])
    for order, result in zip(orders, results):
        assert result == [reference(path, 3, 32).numpy().tobytes() for path in order]
    cache = ImageCache(folder, limit_bytes=10**9)
    assert len(entries(cache)) == len(images)
    assert not list(folder.rglob("*.tmp")) and not list(folder.rglob("*.part"))  # no temporaries left
    # Two processes missing the same image both count it; the next run's prepare recounts exactly.
    assert cache.used_bytes() >= len(images) * ENTRY_BYTES
    cache.prepare(images, 3, 32)
    assert cache.used_bytes() == len(images) * ENTRY_BYTES
    assert all(torch.equal(cache.load(path, 3, 32), reference(path, 3, 32)) for path in images)


def test_dataloader_workers_fill_the_cache_with_what_the_uncached_dataset_gives(demo_data, tmp_path):
    table = read_dataset(demo_data, split="train").subset(np.arange(24))
    transform = eval_transforms(image_size=32, mean=[0.5] * 3, std=[0.25] * 3)
    cache = open_image_cache(tmp_path / "cache", limit_gb=1)
    plain = ImageDataset(table, channels=3, transform=transform, image_size=32)
    cached = ImageDataset(table, channels=3, transform=transform, image_size=32, cache=cache)
    expected = torch.cat([images for images, *_ in DataLoader(plain, batch_size=8)])
    for _ in range(2):  # filled by two worker processes, then read back by them
        actual = torch.cat([images for images, *_ in DataLoader(cached, batch_size=8, num_workers=2)])
        assert torch.equal(actual, expected)
    assert len(entries(cache)) == 24


def test_predict_reads_the_cache_it_filled_and_no_cache_writes_none(untrained_run, demo_data, tmp_path):
    from protloc.cli import main

    run_dir = untrained_run(spread=30)

    def predict(out, *options) -> list[str]:
        assert main(["predict", str(run_dir), str(demo_data), "--out", str(out), "--workers", "0", "--probabilities",
                     *map(str, options)]) == 0
        return out.read_text().splitlines()

    plain = predict(tmp_path / "plain.csv", "--no-cache", "--cache-dir", tmp_path / "unused")
    assert not (tmp_path / "unused").exists()
    assert predict(tmp_path / "cold.csv", "--cache-dir", tmp_path / "cache") == plain
    stored = entries(ImageCache(tmp_path / "cache", limit_bytes=0))
    assert len(stored) == 16  # the demo data's test images
    assert predict(tmp_path / "warm.csv", "--cache-dir", tmp_path / "cache") == plain
    blacken(stored[0])  # read back, not decoded: one image turns black
    changed = [a for a, b in zip(predict(tmp_path / "marked.csv", "--cache-dir", tmp_path / "cache"), plain) if a != b]
    assert len(changed) == 1


def test_the_pre_training_check_fills_the_cache_then_reads_shapes_from_it(demo_data, tmp_path):
    table = read_dataset(demo_data, split="train").subset(np.arange(12))
    sources = list(table.frame["source"])
    cache = open_image_cache(tmp_path / "cache", limit_gb=1)
    probe = cache.checking_probe(sources, 3, 32)
    assert find_image_problems(table, show_progress=False) == []
    assert find_image_problems(table, show_progress=False, probe=probe) == []
    assert len(entries(cache)) == 12  # stored for the first epoch
    assert all(torch.equal(cache.load(source, 3, 32), reference(source, 3, 32)) for source in sources)
    # Later checks take the decoded shape from the entry's header rather than decoding the file again.
    entry = cache.entry_path(entry_key(sources[1], 3, 32))
    rewrite(entry, shape=(7, 9, 3))
    (problem,) = find_image_problems(table, show_progress=False, probe=probe)
    assert problem.startswith(f"{sources[1]}: unexpected size 9x7")


def test_the_check_reports_unreadable_files_alike_with_the_cache(images, tmp_path):
    (images[0].parent / "broken.png").write_bytes(b"not a png")
    table = read_dataset(images[0].parent, layout="folder", split="test")
    cache = open_image_cache(tmp_path / "cache", limit_gb=1)
    plain = find_image_problems(table, show_progress=False)
    assert len(plain) == 1 and "broken.png: not a readable image" in plain[0]
    assert find_image_problems(table, show_progress=False, probe=cache.checking_probe(table.frame["source"], 3, 32)) == plain
    assert len(entries(cache)) == len(images)
