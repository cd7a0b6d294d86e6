"""Decode once: images decoded, fitted to the model's channels and resized to its input size, kept on disk as uint8.

Decoding and resizing a 512 px PNG costs about 10 ms of CPU; reading its 224 px result back costs about 0.1 ms.
So the first read of an image at a given size, channel set and intensity scale stores the result, and later
epochs, phases, folds, runs and predictions read it back. The stored pixels are exactly what the presets' first step (the
resize) would have produced, so training with or without the cache gives the same weights.

Where: $PROTLOC_CACHE_DIR, else $XDG_CACHE_HOME/protloc, else ~/.cache/protloc. Layout:
`images-v1/<2 hex>/<key>.u8`, one file per image and variant: a 20-byte header (the decoded file's own height,
width and channels, which the pre-training check needs, and a CRC-32 of the pixels) and the raw channels x size x
size bytes.

A careful store (docs/security.md): the folder must belong to this user and be writable by no one else, and no
folder above it may let others replace it; otherwise the run goes on without the cache after one line that says
why. Nothing inside it is followed through a symbolic link, an entry is read only when it is a regular file of
this user whose checksum holds (anything else is decoded again and replaced), and eviction removes only files
named as this module names its entries. A cache that cannot be used (read-only, a file where a folder should be,
a full disk) costs speed, never the run: one line, then the images are decoded each time.
Keys: sha256 of the image file's absolute path, byte size, mtime_ns, ctime_ns and inode, and a hash of its first
and last 8 KiB (all of it when smaller) (every file, for stain sets), the channel count and grayscale placement
(gray_as), the bit depth (the intensity scale), the size, the pixel limit (PROTLOC_MAX_PIXELS: an image the
limit refuses is refused with or without the cache), and a fingerprint of the decoder (the source of
protloc.data.images, .microscopy and .stains and the versions of torch, torchvision, Pillow, numpy, tifffile
and imagecodecs). A stat and two small
reads cost microseconds where hashing the contents would read every file in full each epoch. Rewriting a file
changes its ctime even when its mtime is set back (only the kernel sets ctime), and a change at either end of
the file changes the sampled hash, so a changed file is decoded again, never served stale.

One file per image rather than one memory-mapped array per dataset (benchmarks/bench_cache_formats.py: 0.1 ms
against 0.04 ms a read, both small beside augmentation and the model): each image keyed on its own, filled safely
from any number of processes by writing a temporary name then renaming, evicted per image.

Size limit: a file `usage`, updated under a file lock, counts the bytes held. A new entry that would pass the
limit is not stored (its image is decoded each time, as without a cache); entries are never removed during a
run. At the start of a run, `prepare` marks the run's own entries as recently used and removes the least
recently used others until the run's missing images fit.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import os
import re
import time
import uuid
import zlib
from pathlib import Path
from typing import Iterable, Sequence

import torch

from protloc.data.cache_files import (CLOEXEC, HEADER, MAGIC, NOFOLLOW, file_signature, folder_problem,
                                      is_own_regular_file, locked_usage_file, open_own_file, own_entries, own_subfolder,
                                      read_entry, read_usage, write_usage)
from protloc.data.images import (ImageReadError, check_pixel_count, convert_channels, fit_stored, load_image,
                                 pixel_limit, read_image, to_chw_tensor)

CACHE_DIR_ENV = "PROTLOC_CACHE_DIR"
CACHE_LIMIT_ENV = "PROTLOC_CACHE_LIMIT_GB"
DEFAULT_LIMIT_GB = 10.0  # the 19,236 Zero-to-GANs images take 2.9 GB at 224 px
IMAGES_FOLDER = "images-v1"
FEATURES_FOLDER = "features-v1"  # protloc.training.features: frozen-backbone features, under the same limit
ENTRY_SUFFIX = ".u8"
FEATURES_SUFFIX = ".f32"  # protloc.training.features writes them (header, CRC-32, float32 values)
USAGE_FILE = "usage"
# Only names this module gives are ever read or removed: entries, features and their temporaries.
ENTRY_NAME = re.compile(r"[0-9a-f]{64}\.(u8|f32|npy)(\.\d+-[0-9a-f]{8}\.tmp)?")
STALE_TEMPORARY_SECONDS = 86400  # a temporary file this old was left by a killed process

log = logging.getLogger("protloc")


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "protloc"


def check_limit_gb(value, where: str) -> float:
    """A cache limit in gigabytes: a finite number, 0 or more. Raises ProtlocError naming `where`."""
    from protloc.errors import ProtlocError

    try:
        limit = float(value)
    except (TypeError, ValueError):
        limit = math.nan
    if not (math.isfinite(limit) and limit >= 0):
        raise ProtlocError(f"{where} {value}: expected a number of gigabytes, 0 or more (and finite)")
    return limit


def default_limit_gb() -> float:
    text = os.environ.get(CACHE_LIMIT_ENV)
    return check_limit_gb(text, f"${CACHE_LIMIT_ENV}=") if text else DEFAULT_LIMIT_GB


@functools.cache
def decoder_fingerprint() -> str:
    """Changes whenever decoding could: protloc's image reader or a library that decodes or resizes."""
    from importlib import metadata

    import protloc.data.images as images

    import protloc.data.microscopy as microscopy
    import protloc.data.stains as stains

    parts = [hashlib.sha256(Path(module.__file__).read_bytes()).hexdigest() for module in (images, microscopy, stains)]
    for package in ("torch", "torchvision", "pillow", "numpy", "tifffile", "imagecodecs"):
        try:
            parts.append(f"{package}={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{package}=none")
    return "|".join(parts)


def source_paths(source: str | Path | Sequence[str | Path]) -> list[str]:
    return [str(source)] if isinstance(source, (str, Path)) else [str(path) for path in source]


def entry_key(source, channels: int, size: int, *, bit_depth: int | None = None, gray_as: str | None = None,
              stain_map: dict | None = None) -> str:
    """The key of `source` (a file, or one file per stain) decoded at `bit_depth` to `channels` (a grayscale file
    placed as `gray_as`) at `size`. Raises OSError when a file cannot be opened or is not a regular file (the
    caller then decodes, which names the problem)."""
    variant = f"channels={channels}|gray_as={gray_as}|bit_depth={bit_depth}|size={size}|max_pixels={pixel_limit()}"
    if stain_map:  # the names of a microscope file's channels -> stains (microscopy.py)
        variant += f"|stain_map={sorted(stain_map.items(), key=str)}"
    digest = hashlib.sha256(f"{decoder_fingerprint()}|{variant}".encode())
    for path in source_paths(source):
        digest.update(f"|{file_signature(path)}".encode())
    return digest.hexdigest()


def fit_and_resize(array, channels: int, size: int, gray_as: str | None) -> torch.Tensor:
    from protloc.data.transforms import resize_transform

    return resize_transform(size)(to_chw_tensor(convert_channels(array, channels, gray_as=gray_as))).contiguous()


def decode_resized(source, channels: int, size: int, *, bit_depth: int | None = None, gray_as: str | None = None,
                   stain_map: dict | None = None) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(uint8 (channels, size, size) decoded, channel-fitted and resized exactly as images.load_image and the
    presets' first step do, the decoded file's own (height, width, channels)). Raises ImageReadError."""
    from protloc.data.transforms import resize_transform

    if isinstance(source, (str, Path)):
        stored = read_image(source)
        array = fit_stored(stored, channels, bit_depth=bit_depth, gray_as=gray_as, stain_map=stain_map)
        return resize_transform(size)(to_chw_tensor(array)).contiguous(), tuple(stored.pixels.shape)
    array = load_image(source, channels, bit_depth=bit_depth, gray_as=gray_as)  # a stain set
    return resize_transform(size)(to_chw_tensor(array)).contiguous(), (*array.shape[:2], len(source))


class ImageCache:
    """A cache folder with a size limit. Picklable (it holds paths and numbers only), so DataLoader workers and
    DDP ranks each use their own copy on the same folder."""

    def __init__(self, folder: str | Path, *, limit_bytes: int):
        self.folder = Path(os.path.realpath(Path(folder).expanduser()))
        self.limit_bytes = int(limit_bytes)
        self.refused = 0  # entries this process did not store because the cache was full
        self.problem: str | None = None  # why this process stopped using the cache, once said

    def __repr__(self) -> str:
        return f"ImageCache({str(self.folder)!r}, limit {self.limit_bytes / 1e9:.1f} GB)"

    def entry_path(self, key: str) -> Path:
        return self.folder / IMAGES_FOLDER / key[:2] / f"{key}{ENTRY_SUFFIX}"

    def features_path(self, key: str) -> Path:
        return self.folder / FEATURES_FOLDER / f"{key}{FEATURES_SUFFIX}"

    # ------------------------------------------------------------ whether the folder can be used

    def give_up(self, why: str) -> None:
        """Stop using the cache in this process, saying why once."""
        if self.problem is None:
            self.problem = why
            log.warning(f"image cache {self.folder}: {why}; going on without it (images decoded each time)")

    def usable(self) -> bool:
        """Whether the cache may be used: its folder made if missing (owner-only) and safe (folder_problem), its
        parts what they should be. Checked once per process; a problem is said once and the cache left alone."""
        if self.problem is not None:
            return False
        if getattr(self, "_checked", False):
            return True
        try:
            if not os.path.lexists(self.folder):
                self.folder.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileExistsError):
                    os.mkdir(self.folder, 0o700)
            why = folder_problem(self.folder)
            if why is None:
                for name in (IMAGES_FOLDER, FEATURES_FOLDER):
                    if not own_subfolder(self.folder / name, make=True):
                        why = f"{name} is not a folder of this user that only this user can write in"
                        break
            if why is None:
                usage = self.folder / USAGE_FILE
                if os.path.lexists(usage) and not is_own_regular_file(os.lstat(usage)):
                    why = f"{USAGE_FILE} is not a regular file of this user"
        except OSError as error:
            why = f"cannot be used ({error.strerror or error})"
        if why is not None:
            self.give_up(why)
            return False
        self._checked = True
        return True

    # ------------------------------------------------------------ images

    def load(self, source, channels: int, size: int, *, bit_depth: int | None = None,
             gray_as: str | None = None, stain_map: dict | None = None) -> torch.Tensor:
        """uint8 (channels, size, size) for `source`, as images.load_image reads it then resized: stored, or
        decoded now and stored. Raises the reader's ImageReadError for files that cannot be read."""
        variant = dict(bit_depth=bit_depth, gray_as=gray_as, stain_map=stain_map)
        if not self.usable():
            return decode_resized(source, channels, size, **variant)[0]
        try:
            path = self.entry_path(entry_key(source, channels, size, **variant))
        except OSError:
            return decode_resized(source, channels, size, **variant)[0]  # a missing file: the reader says so
        found = read_entry(path, (channels, size, size))
        if found is not None:
            return found[0]
        image, decoded_shape = decode_resized(source, channels, size, **variant)
        self.store(path, image, decoded_shape)
        return image

    def probe(self, path: str, *, channels: int, size: int, bit_depth: int | None = None,
              gray_as: str | None = None) -> tuple[str, tuple[int, ...] | None, str | None]:
        """protloc.data.check's probe, (path, decoded shape, error), filling the cache on the way: a file stored
        before is unchanged since (the key holds its signature), so it still decodes and its header says its
        shape; any other is decoded in full, as the check needs anyway, and stored for the first epoch unless the
        run cannot read it (channels or bit depth, which the check reports from the shape)."""
        entry = None
        if self.usable():
            try:
                entry = self.entry_path(entry_key(path, channels, size, bit_depth=bit_depth, gray_as=gray_as))
            except OSError:
                entry = None  # a missing file, which decoding reports
        found = read_entry(entry, (channels, size, size)) if entry is not None else None
        if found is not None:
            try:
                check_pixel_count(found[1])
            except ImageReadError as error:
                return path, None, str(error)
            return path, found[1], None
        try:
            stored = read_image(path)
        except ImageReadError as error:
            return path, None, str(error)
        try:
            image = fit_and_resize(fit_stored(stored, channels, bit_depth=bit_depth, gray_as=gray_as), channels, size,
                                   gray_as)
        except ImageReadError:
            return path, tuple(stored.pixels.shape), None
        if entry is not None:
            self.store(entry, image, tuple(stored.pixels.shape))
        return path, tuple(stored.pixels.shape), None

    def checking_probe(self, sources: Iterable, channels: int, size: int, *, bit_depth: int | None = None,
                       gray_as: str | None = None):
        """`probe` for protloc.data.check over a table's sources, or None for stain sets (checked file by file but
        cached as composites), which keep the check's own."""
        if all(isinstance(source, (str, Path)) for source in sources):
            return functools.partial(self.probe, channels=channels, size=size, bit_depth=bit_depth, gray_as=gray_as)
        return None

    def store(self, path: Path, image: torch.Tensor, decoded_shape: tuple[int, int, int]) -> None:
        """Write an entry under a temporary name, then rename: readers and other writers never see half a file."""
        pixels = memoryview(image.numpy()).cast("B")
        self.write_entry(path, HEADER.pack(MAGIC, *decoded_shape, zlib.crc32(pixels)), pixels)

    def write_entry(self, path: Path, header: bytes, payload) -> None:
        """Header then payload to `path`, within the size limit, through an owner-only temporary file made
        without following links; a cache that cannot be written costs speed, never the run."""
        if not self.usable():
            return
        try:
            if not own_subfolder(path.parent, make=True):
                return self.give_up(f"{path.parent} is not a folder of this user that only this user can write in")
            if not self.reserve(len(header) + len(payload)):
                self.refused += 1
                return
            temporary = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC, 0o600)
            try:
                with open(descriptor, "wb") as file:
                    file.write(header)
                    file.write(payload)
                os.replace(temporary, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
        except OSError as error:
            self.give_up(f"cannot store images ({error.strerror or error})")

    # ------------------------------------------------------------ the size limit

    def _usage_file(self):
        return locked_usage_file(self.folder / USAGE_FILE)

    _read_usage = staticmethod(read_usage)
    _write_usage = staticmethod(write_usage)

    def reserve(self, nbytes: int) -> bool:
        """Count `nbytes` more as held, if that stays within the limit; False (and nothing counted) if not."""
        with self._usage_file() as file:
            used = self._read_usage(file)
            if used is None:
                used = sum(entry_bytes for _, entry_bytes, _ in self._entries())
            if used + nbytes > self.limit_bytes:
                return False
            self._write_usage(file, used + nbytes)
            return True

    def _entries(self) -> list[tuple[float, int, Path]]:
        """(mtime, bytes, path) of every entry (cache_files.own_entries); temporaries of killed processes removed."""
        return own_entries([self.folder / IMAGES_FOLDER], [self.folder / FEATURES_FOLDER], ENTRY_NAME,
                           stale_after=STALE_TEMPORARY_SECONDS)

    def prepare(self, sources: Iterable, channels: int, size: int | Sequence[int], *, bit_depth: int | None = None,
                gray_as: str | None = None, stain_map: dict | None = None) -> None:
        """Before a run reads `sources`: mark their entries as just used and, if the images not yet stored would
        pass the limit, remove the least recently used other entries until they fit. Recounts the usage. `size`
        is one for all or one per source (a run keeps its training images larger than its validation images)."""
        if not self.usable():
            return
        sources = list(sources)
        sizes = [size] * len(sources) if isinstance(size, int) else list(size)
        try:
            with self._usage_file() as file:
                own, missing = set(), 0
                for source, side in zip(sources, sizes):
                    try:
                        path = self.entry_path(entry_key(source, channels, side, bit_depth=bit_depth, gray_as=gray_as,
                                                         stain_map=stain_map))
                        os.utime(path, follow_symlinks=False)
                        own.add(path)
                    except OSError:  # not stored yet (or an unreadable source, which will not be stored)
                        missing += HEADER.size + channels * side * side
                entries = sorted(self._entries())
                used = sum(entry_bytes for _, entry_bytes, _ in entries)
                for _, entry_bytes, path in entries:
                    if used + min(missing, self.limit_bytes) <= self.limit_bytes:
                        break
                    if path not in own:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(path)
                        used -= entry_bytes
                self._write_usage(file, used)
        except OSError as error:
            self.give_up(f"cannot be used ({error.strerror or error})")

    def used_bytes(self) -> int:
        if not self.usable():
            return 0
        with self._usage_file() as file:
            used = self._read_usage(file)
        return used if used is not None else sum(entry_bytes for _, entry_bytes, _ in self._entries())


def open_image_cache(cache_dir: str | Path | None = None, limit_gb: float | None = None) -> ImageCache | None:
    """The cache in `cache_dir` (default: default_cache_dir()) holding at most `limit_gb` (default
    $PROTLOC_CACHE_LIMIT_GB, else 10 GB); None, after one line that says why, when the folder cannot be used
    (see ImageCache.usable). Raises ProtlocError for a limit that is not a finite number of 0 or more."""
    limit = default_limit_gb() if limit_gb is None else check_limit_gb(limit_gb, "--cache-limit-gb")
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    cache = ImageCache(folder, limit_bytes=int(limit * 1e9))
    return cache if cache.usable() else None
