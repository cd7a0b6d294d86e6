"""The image cache as a careful store, against a user who can write where the cache lives (issue 31: findings 1,
4, 6 and 10's pixel limit). Predictions with the cache must equal those without it, whatever was planted."""
from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from protloc.cli import main
from protloc.data.cache import HEADER, IMAGES_FOLDER, USAGE_FILE, ImageCache, entry_key, open_image_cache


def write_png(path: Path, value: int | None = None, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    pixels = np.full((40, 48, 3), value, np.uint8) if value is not None else rng.integers(0, 256, (40, 48, 3), np.uint8)
    Image.fromarray(pixels).save(path, compress_level=0)
    return path


def plant(cache_dir: Path, source: Path, channels: int, size: int, value: int) -> Path:
    """An entry another user could write: the right name for `source`, a good checksum, pixels of `value`."""
    entry = ImageCache(cache_dir, limit_bytes=0).entry_path(entry_key(source, channels, size))
    entry.parent.mkdir(parents=True, exist_ok=True)
    pixels = bytes([value]) * (channels * size * size)
    entry.write_bytes(HEADER.pack(b"plc2", 40, 48, 3, zlib.crc32(pixels)) + pixels)
    return entry


@pytest.fixture(scope="module")
def spread_run(untrained_run, tmp_path_factory):
    return untrained_run(tmp_path_factory.mktemp("cache-run") / "run", spread=30)


def predict(run: Path, image: Path, out: Path, *options) -> tuple[int, list[str]]:
    code = main(["predict", str(run), str(image), "--out", str(out), "--workers", "0", "--probabilities",
                 *map(str, options)])
    return code, (out.read_text().splitlines() if code == 0 else [])


def test_a_cache_folder_others_can_write_is_not_used(spread_run, tmp_path, capsys):
    image = write_png(tmp_path / "cell.png", seed=1)
    shared = tmp_path / "shared"
    shared.mkdir()
    plant(shared, image, 3, 32, value=255)
    shared.chmod(0o777)
    plain = predict(spread_run, image, tmp_path / "plain.csv", "--no-cache")
    assert predict(spread_run, image, tmp_path / "shared.csv", "--cache-dir", shared) == plain
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and str(shared) in warnings[0] and "others can write" in warnings[0]


def test_eviction_removes_only_the_caches_own_entries_and_follows_no_link(tmp_path):
    images = [write_png(tmp_path / f"{index}.png", seed=index) for index in range(4)]
    victim = tmp_path / "victim"
    victim.mkdir()
    old = 1_000_000
    cache = ImageCache(tmp_path / "cache", limit_bytes=2 * (HEADER.size + 3 * 32 * 32))
    cache.load(images[0], 3, 32)
    shard = cache.folder / IMAGES_FOLDER
    # Two subfolder names the first entry does not already use (its name is a hash of the file's key).
    linked, planted = [name for name in ("ab", "cd", "ef", "12") if not (shard / name).exists()][:2]
    kept = [victim / f"{linked * 32}.u8", victim / "notes.txt"]
    for path in kept:
        path.write_text("mine")
    (shard / linked).symlink_to(victim)  # a subfolder that is a link out of the cache
    link = cache.entry_path(planted * 32)
    link.parent.mkdir()
    link.symlink_to(kept[0])  # an entry that is a link
    (shard / planted / "README").write_text("not an entry")
    for path in [*kept, link.parent / "README"]:
        os.utime(path, (old, old))
    cache.prepare(images[1:], 3, 32)  # three missing images: eviction runs
    assert all(path.read_text() == "mine" for path in kept)
    assert link.is_symlink() and (shard / planted / "README").exists()


def test_the_usage_file_is_never_written_through_a_link(tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    folder = tmp_path / "cache"
    folder.mkdir(mode=0o700)
    (folder / USAGE_FILE).symlink_to(victim)
    image = write_png(tmp_path / "cell.png")
    cache = ImageCache(folder, limit_bytes=10**9)
    assert torch.equal(cache.load(image, 3, 32), ImageCache(tmp_path / "other", limit_bytes=10**9).load(image, 3, 32))
    cache.prepare([image], 3, 32)
    assert victim.read_text() == "precious\n"


def test_a_same_size_rewrite_with_its_old_mtime_is_decoded_again(tmp_path):
    path = write_png(tmp_path / "cell.png", value=10)
    cache = open_image_cache(tmp_path / "cache", limit_gb=1)
    assert int(cache.load(path, 3, 32).max()) == 10
    before = path.stat()
    write_png(path, value=200)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert int(cache.load(path, 3, 32).min()) == 200


def test_a_damaged_entry_is_decoded_again_not_served(tmp_path):
    path = write_png(tmp_path / "cell.png", seed=3)
    cache = open_image_cache(tmp_path / "cache", limit_gb=1)
    expected = cache.load(path, 3, 32)
    entry = cache.entry_path(entry_key(path, 3, 32))
    data = bytearray(entry.read_bytes())
    data[HEADER.size + 100] ^= 0x55  # one flipped byte among the pixels
    entry.write_bytes(bytes(data))
    assert torch.equal(cache.load(path, 3, 32), expected)
    assert entry.read_bytes() != bytes(data)  # and replaced by a whole entry


def break_usage(folder: Path) -> None:
    (folder / USAGE_FILE).mkdir(parents=True)


def break_images(folder: Path) -> None:
    folder.mkdir()
    (folder / IMAGES_FOLDER).write_text("a file where a folder belongs")


@pytest.mark.parametrize("damage", [break_usage, break_images, None], ids=["usage-a-folder", "images-a-file", "in-proc"])
def test_an_unusable_cache_says_one_line_and_the_run_goes_on(damage, spread_run, tmp_path, capsys):
    image = write_png(tmp_path / "cell.png", seed=2)
    folder = tmp_path / "cache" if damage else Path("/proc/protloc-cache")
    if damage:
        damage(folder)
    plain = predict(spread_run, image, tmp_path / "plain.csv", "--no-cache")
    assert plain[0] == 0
    capsys.readouterr()
    assert predict(spread_run, image, tmp_path / "cached.csv", "--cache-dir", folder) == plain
    error = capsys.readouterr().err
    warnings = [line for line in error.splitlines() if "warning" in line]
    assert len(warnings) == 1 and str(folder) in warnings[0] and "Traceback" not in error


def test_the_pixel_limit_holds_for_cached_images(spread_run, tmp_path, monkeypatch, capsys):
    image = write_png(tmp_path / "cell.png", seed=4)
    cache = tmp_path / "cache"
    assert predict(spread_run, image, tmp_path / "warm.csv", "--cache-dir", cache)[0] == 0
    monkeypatch.setenv("PROTLOC_MAX_PIXELS", "1000")  # the image has 40 x 48 x 3 = 5,760
    for options in (["--no-cache"], ["--cache-dir", cache]):
        capsys.readouterr()
        assert predict(spread_run, image, tmp_path / "limited.csv", *options)[0] == 2
        assert "more than the limit of 1,000" in capsys.readouterr().err
