"""The files of the image cache (protloc.data.cache), handled as a careful store: the folder must be this user's
alone, nothing in it is reached through a symbolic link, and only regular files of this user are read back.
See docs/security.md."""
from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import zlib
import re
import time
import stat as stat_module
from pathlib import Path

import torch

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted where a file is expected must not block the open
CLOEXEC = getattr(os, "O_CLOEXEC", 0)
SAMPLE_BYTES = 8192  # hashed from each end of an image file for its key
HEADER = struct.Struct("<4sIIII")  # an entry's magic, the decoded file's height, width and channels, a CRC-32
MAGIC = b"plc2"
# mtime is the least-recently-used clock; refreshing it at most hourly keeps reads free of metadata writes.
TOUCH_AFTER_SECONDS = 3600


def file_signature(path: str) -> str:
    """What tells one version of a file from another without reading it all: its stat fields that a rewrite
    changes (size, mtime, ctime, inode) and a hash of its first and last SAMPLE_BYTES. Raises OSError for a
    file that cannot be opened and for anything but a regular file (a FIFO would block its reader)."""
    descriptor = os.open(path, os.O_RDONLY | NONBLOCK | CLOEXEC)
    try:
        stat = os.fstat(descriptor)
        if not stat_module.S_ISREG(stat.st_mode):
            raise OSError(f"{path}: not a regular file")
        sample = hashlib.blake2b(digest_size=16)
        sample.update(os.read(descriptor, SAMPLE_BYTES))
        if stat.st_size > SAMPLE_BYTES:
            os.lseek(descriptor, max(SAMPLE_BYTES, stat.st_size - SAMPLE_BYTES), os.SEEK_SET)
            sample.update(os.read(descriptor, SAMPLE_BYTES))
    finally:
        os.close(descriptor)
    return (f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}|{stat.st_ino}|"
            f"{sample.hexdigest()}")


def is_own_regular_file(stat: os.stat_result) -> bool:
    return stat_module.S_ISREG(stat.st_mode) and stat.st_uid == os.geteuid()


def open_own_file(path: Path) -> int | None:
    """A read descriptor of `path` when it is a regular file of this user reached without a symbolic link at its
    last step; else None (and nothing read)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | NOFOLLOW | NONBLOCK | CLOEXEC)
    except OSError:  # missing, a symbolic link (ELOOP), unreadable
        return None
    if not is_own_regular_file(os.fstat(descriptor)):
        os.close(descriptor)
        return None
    return descriptor


def read_exactly(descriptor: int, view: memoryview) -> bool:
    done = 0
    while done < len(view):
        count = os.readv(descriptor, [view[done:]])
        if not count:
            return False
        done += count
    return True


def folder_problem(folder: Path) -> str | None:
    """Why `folder` (made already, its path resolved) is not safe to keep a cache in, or None. It must be a folder
    of this user that no one else may write in; each folder above it must belong to this user or root and, when
    others may write in it, be sticky (as /tmp is), so that no one else can rename the cache away and put their
    own in its place."""
    try:
        stat = os.lstat(folder)
    except OSError as error:
        return f"cannot be used ({error.strerror or error})"
    if not stat_module.S_ISDIR(stat.st_mode):
        return "is not a folder"
    if stat.st_uid != os.geteuid():
        return f"belongs to another user (uid {stat.st_uid}); use a folder of your own"
    if stat.st_mode & 0o022:
        return (f"others can write in it (mode {stat.st_mode & 0o7777:o}): make it yours alone (chmod go-w {folder}) "
                "or use a folder of your own")
    for parent in folder.parents:
        try:
            above = os.lstat(parent)
        except OSError:
            continue
        if above.st_uid not in (0, os.geteuid()):
            return f"lies in {parent}, which belongs to another user (uid {above.st_uid})"
        if above.st_mode & 0o002 and not above.st_mode & stat_module.S_ISVTX:
            return f"lies in {parent}, which anyone can write in (mode {above.st_mode & 0o7777:o}, not sticky)"
    return None


def own_subfolder(path: Path, *, make: bool) -> bool:
    """Whether `path` is (or, with `make`, has been made) a folder of this user, not a symbolic link, that no one
    else may write in."""
    try:
        stat = os.lstat(path)
    except FileNotFoundError:
        if not make:
            return False
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        stat = os.lstat(path)
    return stat_module.S_ISDIR(stat.st_mode) and stat.st_uid == os.geteuid() and not stat.st_mode & 0o022


SUBFOLDER_NAME = re.compile(r"[0-9a-f]{2}")  # images-v1/<2 hex>/


def own_entries(sharded: list[Path], flat: list[Path], name: re.Pattern, *, stale_after: float) -> list[tuple[float, int, Path]]:
    """(mtime, bytes, path) of the regular files of this user whose names match `name`, in the folders `flat` and
    in the <2 hex> subfolders of `sharded`: folders of this user only, none reached through a link, so that
    eviction never removes what the cache did not write. Temporaries (.tmp) older than `stale_after` seconds,
    left by killed processes, are removed on the way."""
    folders = list(flat)
    for parent in sharded:
        with contextlib.suppress(OSError), os.scandir(parent) as listing:
            folders += [Path(item.path) for item in listing
                        if SUBFOLDER_NAME.fullmatch(item.name) and item.is_dir(follow_symlinks=False)]
    found, now = [], time.time()
    for folder in folders:
        if not own_subfolder(folder, make=False):
            continue
        try:
            with os.scandir(folder) as listing:
                items = [item for item in listing if name.fullmatch(item.name)]
        except OSError:
            continue
        for item in items:
            try:
                stat = item.stat(follow_symlinks=False)
            except FileNotFoundError:  # renamed or removed by another process meanwhile
                continue
            if not is_own_regular_file(stat):
                continue
            if item.name.endswith(".tmp"):
                if now - stat.st_mtime > stale_after:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(item.path)
                continue
            found.append((stat.st_mtime, stat.st_size, Path(item.path)))
    return found


@contextlib.contextmanager
def locked_usage_file(path: Path):
    """The cache's usage file, open and exclusively locked (across processes; a no-op lock where fcntl is missing).
    Opened without following a link, and only as a regular file of this user; raises OSError otherwise."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | NOFOLLOW | NONBLOCK | CLOEXEC, 0o600)
    if not is_own_regular_file(os.fstat(descriptor)):
        os.close(descriptor)
        raise OSError(f"{path.name} is not a regular file of this user")
    with open(descriptor, "r+", encoding="ascii") as file:
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


def read_usage(file) -> int | None:
    file.seek(0)
    try:
        text = file.read(32).strip()
    except UnicodeDecodeError:
        return None
    return int(text) if text.isdigit() else None


def write_usage(file, used: int) -> None:
    file.seek(0)
    file.truncate()
    file.write(str(used))
    file.flush()


def read_entry(path: Path, shape: tuple[int, int, int]) -> tuple[torch.Tensor, tuple[int, int, int]] | None:
    """(the stored image, the decoded file's shape), or None when there is none whole: missing, truncated (left by
    a crash), damaged (its checksum fails), or not a regular file of this user."""
    nbytes = shape[0] * shape[1] * shape[2]
    descriptor = open_own_file(path)
    if descriptor is None:
        return None
    try:
        stat = os.fstat(descriptor)
        if stat.st_size != HEADER.size + nbytes:
            return None
        header = os.read(descriptor, HEADER.size)
        if len(header) != HEADER.size:
            return None
        magic, height, width, channels, checksum = HEADER.unpack(header)
        if magic != MAGIC:
            return None
        image = torch.empty(shape, dtype=torch.uint8)
        view = memoryview(image.numpy()).cast("B")
        if not read_exactly(descriptor, view) or zlib.crc32(view) != checksum:
            return None
        if time.time() - stat.st_mtime > TOUCH_AFTER_SECONDS:
            with contextlib.suppress(OSError):
                os.utime(descriptor) if os.utime in os.supports_fd else os.utime(path, follow_symlinks=False)
        return image, (height, width, channels)
    except OSError:
        return None
    finally:
        os.close(descriptor)
