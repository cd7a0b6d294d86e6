"""Decode once: images decoded, fitted to the model's channels and resized to its input size, kept on disk as uint8.

Decoding and resizing a 512 px PNG costs about 10 ms of CPU; reading its 224 px result back costs about 0.1 ms.
So the first read of an image at a given size, channel set and intensity scale stores the result, and later
epochs, phases, folds, runs and predictions read it back. The stored pixels are exactly what the presets' first step (the
resize) would have produced, so training with or without the cache gives the same weights.

Where: $PROTLOC_CACHE_DIR, else $XDG_CACHE_HOME/protloc, else ~/.cache/protloc. Layout:
`images-v1/<2 hex>/<key>.u8`, one file per image and variant: a 16-byte header (the decoded file's own height,
width and channels, which the pre-training check needs) and the raw channels x size x size bytes.

Keys: sha256 of the image file's absolute path, byte size and mtime_ns (every file, for stain sets), the
channel count and grayscale placement (gray_as), the bit depth (the intensity scale), the size, and a
fingerprint of the decoder (the source of protloc.data.images, .microscopy and .stains and the versions
of torch, torchvision, Pillow, numpy, tifffile and imagecodecs). A stat costs microseconds where hashing the contents would
read every file in full each epoch; rewriting, replacing or touching a file changes its mtime, so a changed
file is decoded again, never served stale. (The one miss: a same-size rewrite within the file system's time
resolution, nanoseconds on ext4, APFS and NTFS.)

Why one file per image rather than one memory-mapped array per dataset (benchmarks/bench_cache_formats.py):
reading a file back took about 0.1 ms and a slice of one memmap about 0.04 ms, both small beside the ~2 ms of
augmentation and 7+ ms of model time per image on a CPU. One file per image keys each image on its own (folds,
subsets and new test folders share entries), fills safely from any number of processes (DataLoader workers,
DDP ranks, concurrent runs) by writing to a temporary name and renaming, and evicts per image. The OS page
cache keeps hot entries in memory, shared by all processes.

Size limit: a file `usage`, updated under a file lock, counts the bytes held. A new entry that would pass the
limit is not stored (its image is decoded each time, as without a cache); entries are never removed during a
run. At the start of a run, `prepare` marks the run's own entries as recently used and removes the least
recently used others until the run's missing images fit.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import struct
import time
import uuid
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import torch

from protloc.data.images import ImageReadError, convert_channels, fit_stored, load_image, read_image, to_chw_tensor

CACHE_DIR_ENV = "PROTLOC_CACHE_DIR"
CACHE_LIMIT_ENV = "PROTLOC_CACHE_LIMIT_GB"
DEFAULT_LIMIT_GB = 10.0  # the 19,236 Zero-to-GANs images take 2.9 GB at 224 px
IMAGES_FOLDER = "images-v1"
FEATURES_FOLDER = "features-v1"  # protloc.training.features: frozen-backbone features, under the same limit
ENTRY_SUFFIX = ".u8"
HEADER = struct.Struct("<4sIII")  # magic, then the decoded file's height, width and channels
MAGIC = b"plc1"
USAGE_FILE = "usage"
# mtime is the least-recently-used clock; refreshing it at most hourly keeps reads free of metadata writes.
TOUCH_AFTER_SECONDS = 3600
STALE_TEMPORARY_SECONDS = 86400  # a temporary file this old was left by a killed process


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "protloc"


def default_limit_gb() -> float:
    text = os.environ.get(CACHE_LIMIT_ENV)
    if not text:
        return DEFAULT_LIMIT_GB
    try:
        return float(text)
    except ValueError:
        from protloc.errors import ProtlocError

        raise ProtlocError(f"${CACHE_LIMIT_ENV}={text!r}: expected a number of gigabytes") from None


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
    placed as `gray_as`) at `size`. Raises OSError when a file cannot be stat-ed (the caller then decodes, which
    names the problem)."""
    variant = f"channels={channels}|gray_as={gray_as}|bit_depth={bit_depth}|size={size}"
    if stain_map:  # the names of a microscope file's channels -> stains (microscopy.py)
        variant += f"|stain_map={sorted(stain_map.items(), key=str)}"
    digest = hashlib.sha256(f"{decoder_fingerprint()}|{variant}".encode())
    for path in source_paths(source):
        stat = os.stat(path)
        digest.update(f"|{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
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


def read_header(file) -> tuple[int, int, int] | None:
    header = file.read(HEADER.size)
    if len(header) != HEADER.size:
        return None
    magic, *shape = HEADER.unpack(header)
    return tuple(shape) if magic == MAGIC else None


def stored_shape(path: Path) -> tuple[int, int, int] | None:
    try:
        with open(path, "rb") as file:
            return read_header(file)
    except OSError:
        return None


def read_entry(path: Path, shape: tuple[int, int, int]) -> torch.Tensor | None:
    """The stored image, or None when there is none (or only a truncated one, left by a crash)."""
    nbytes = shape[0] * shape[1] * shape[2]
    try:
        with open(path, "rb", buffering=0) as file:
            stat = os.fstat(file.fileno())
            if stat.st_size != HEADER.size + nbytes or read_header(file) is None:
                return None
            image = torch.empty(shape, dtype=torch.uint8)
            view, done = memoryview(image.numpy()).cast("B"), 0
            while done < nbytes:
                count = file.readinto(view[done:])
                if not count:
                    return None
                done += count
            if time.time() - stat.st_mtime > TOUCH_AFTER_SECONDS:
                with contextlib.suppress(OSError):
                    os.utime(path)
            return image
    except FileNotFoundError:
        return None


class ImageCache:
    """A cache folder with a size limit. Picklable (it holds paths and numbers only), so DataLoader workers and
    DDP ranks each use their own copy on the same folder."""

    def __init__(self, folder: str | Path, *, limit_bytes: int):
        self.folder = Path(folder)
        self.limit_bytes = int(limit_bytes)
        self.refused = 0  # entries this process did not store because the cache was full
        self._warned = False

    def __repr__(self) -> str:
        return f"ImageCache({str(self.folder)!r}, limit {self.limit_bytes / 1e9:.1f} GB)"

    def entry_path(self, key: str) -> Path:
        return self.folder / IMAGES_FOLDER / key[:2] / f"{key}{ENTRY_SUFFIX}"

    def load(self, source, channels: int, size: int, *, bit_depth: int | None = None,
             gray_as: str | None = None, stain_map: dict | None = None) -> torch.Tensor:
        """uint8 (channels, size, size) for `source`, as images.load_image reads it then resized: stored, or
        decoded now and stored. Raises the reader's ImageReadError for files that cannot be read."""
        variant = dict(bit_depth=bit_depth, gray_as=gray_as, stain_map=stain_map)
        try:
            path = self.entry_path(entry_key(source, channels, size, **variant))
        except OSError:
            return decode_resized(source, channels, size, **variant)[0]  # a missing file: the reader says so
        image = read_entry(path, (channels, size, size))
        if image is None:
            image, decoded_shape = decode_resized(source, channels, size, **variant)
            self.store(path, image, decoded_shape)
        return image

    def probe(self, path: str, *, channels: int, size: int, bit_depth: int | None = None,
              gray_as: str | None = None) -> tuple[str, tuple[int, ...] | None, str | None]:
        """protloc.data.check's probe, (path, decoded shape, error), filling the cache on the way: a file stored
        before is unchanged since (the key holds its size and mtime), so it still decodes and its header says its
        shape; any other is decoded in full, as the check needs anyway, and stored for the first epoch unless the
        run cannot read it (channels or bit depth, which the check reports from the shape)."""
        try:
            entry = self.entry_path(entry_key(path, channels, size, bit_depth=bit_depth, gray_as=gray_as))
        except OSError:
            entry = None  # a missing file, which decoding reports
        shape = stored_shape(entry) if entry is not None else None
        if shape is not None:
            return path, shape, None
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
        """Write an entry under a temporary name, then rename: readers and other writers never see half a file.
        A cache that cannot be written (full disk, read-only folder) costs speed, never the run."""
        nbytes = HEADER.size + image.numel()
        try:
            if not self.reserve(nbytes):
                self.refused += 1
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
            try:
                with open(temporary, "wb") as file:
                    file.write(HEADER.pack(MAGIC, *decoded_shape))
                    file.write(memoryview(image.numpy()).cast("B"))
                os.replace(temporary, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
        except OSError as error:
            if not self._warned:
                self._warned = True
                warnings.warn(f"image cache {self.folder}: cannot store images ({error}); decoding them each time",
                              RuntimeWarning, stacklevel=2)

    # ------------------------------------------------------------ the size limit

    @contextlib.contextmanager
    def _usage_file(self):
        """The usage file, open and exclusively locked (across processes; a no-op lock where fcntl is missing)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / USAGE_FILE, "a+", encoding="ascii") as file:
            try:
                import fcntl
            except ImportError:  # not POSIX: the limit then holds per process only
                fcntl = None
            if fcntl is not None:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX)
            try:
                yield file
            finally:
                if fcntl is not None:
                    fcntl.flock(file.fileno(), fcntl.LOCK_UN)

    @staticmethod
    def _read_usage(file) -> int | None:
        file.seek(0)
        text = file.read().strip()
        return int(text) if text.isdigit() else None

    @staticmethod
    def _write_usage(file, used: int) -> None:
        file.seek(0)
        file.truncate()
        file.write(str(used))
        file.flush()

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
        """(mtime, bytes, path) of every entry; temporary files of killed processes are removed on the way."""
        found = []
        now = time.time()
        paths = [*(self.folder / IMAGES_FOLDER).glob("*/*"), *(self.folder / FEATURES_FOLDER).glob("*")]
        for path in paths:
            try:
                stat = path.stat()
            except FileNotFoundError:  # renamed or removed by another process meanwhile
                continue
            if path.suffix == ".tmp":
                if now - stat.st_mtime > STALE_TEMPORARY_SECONDS:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                continue
            found.append((stat.st_mtime, stat.st_size, path))
        return found

    def prepare(self, sources: Iterable, channels: int, size: int | Sequence[int], *, bit_depth: int | None = None,
                gray_as: str | None = None, stain_map: dict | None = None) -> None:
        """Before a run reads `sources`: mark their entries as just used and, if the images not yet stored would
        pass the limit, remove the least recently used other entries until they fit. Recounts the usage. `size`
        is one for all or one per source (a run keeps its training images larger than its validation images)."""
        sources = list(sources)
        sizes = [size] * len(sources) if isinstance(size, int) else list(size)
        with self._usage_file() as file:
            own, missing = set(), 0
            for source, side in zip(sources, sizes):
                try:
                    path = self.entry_path(entry_key(source, channels, side, bit_depth=bit_depth, gray_as=gray_as,
                                                     stain_map=stain_map))
                    os.utime(path)
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
                        path.unlink()
                    used -= entry_bytes
            self._write_usage(file, used)

    def used_bytes(self) -> int:
        with self._usage_file() as file:
            used = self._read_usage(file)
        return used if used is not None else sum(entry_bytes for _, entry_bytes, _ in self._entries())


def open_image_cache(cache_dir: str | Path | None = None, limit_gb: float | None = None) -> ImageCache:
    """The cache in `cache_dir` (default: default_cache_dir()) holding at most `limit_gb` (default
    $PROTLOC_CACHE_LIMIT_GB, else 10 GB)."""
    from protloc.errors import ProtlocError

    limit = default_limit_gb() if limit_gb is None else float(limit_gb)
    if not limit >= 0:
        raise ProtlocError(f"--cache-limit-gb {limit_gb}: expected 0 or more gigabytes")
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if folder.exists() and not folder.is_dir():
        raise ProtlocError(f"--cache-dir {folder}: exists and is not a folder")
    return ImageCache(folder, limit_bytes=int(limit * 1e9))
