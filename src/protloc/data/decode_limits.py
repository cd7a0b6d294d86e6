"""Limits a file must keep before it is decoded: a regular file (not a FIFO, which would block its reader for
ever), and for a TIFF, how many pages it has and how far a compressed segment may inflate.

A small TIFF can cost far more than its size. Twenty thousand one-pixel pages in 5 MB keep tifffile busy for
minutes (its series detection compares pages with pages), so the pages are counted first by walking the chain of
image file directories, a few bytes each, and a file with more than MAX_TIFF_PAGES is refused before tifffile
reads one. A deflate strip of 1 MB can inflate to 1 GiB: imagecodecs' decoders (a dependency) write into a
buffer of the size the header gives and fail past it, but tifffile falls back to Python's zlib and lzma, which
inflate without a bound, where imagecodecs or one of its codecs is missing. For such a fallback each segment is
first inflated here with a bound of its page's size from the header, and a segment that would pass it is refused.
"""
from __future__ import annotations

import io
import lzma
import os
import stat
import struct
import zlib
from pathlib import Path

from protloc.data.limits import ImageReadError


def check_regular_file(path: Path) -> None:
    """Refuse what is not a regular file before opening it: a FIFO would block its reader for ever, a device
    would be read without end."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ImageReadError("file not found") from None
    except (OSError, ValueError) as error:  # ValueError: a NUL byte in the name
        raise ImageReadError(f"cannot be opened ({getattr(error, 'strerror', None) or error})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or other special file"
        raise ImageReadError(f"{kind}, not an image file")


# An image protloc reads has at most 4 channels, whether as samples or as pages; Z stacks, time series and
# positions stay well within this. More pages than this are refused before any is read.
MAX_TIFF_PAGES = 512

DEFLATE = (8, 32946, 50013)
LZMA = (34925,)


def count_tiff_pages(file: io.BytesIO | Path, limit: int = MAX_TIFF_PAGES) -> int:
    """The number of pages (image file directories) in a TIFF, counted up to `limit` + 1 from the chain of
    directory offsets alone. Raises ValueError for a chain that loops or a header that is not TIFF."""
    stream = file if isinstance(file, io.BytesIO) else open(file, "rb")
    try:
        stream.seek(0)
        header = stream.read(16)
        order = {b"II": "<", b"MM": ">"}.get(header[:2])
        if order is None or len(header) < 8:
            raise ValueError("not a TIFF header")
        version = struct.unpack(order + "H", header[2:4])[0]
        if version == 42:
            offset, count_format, entry_size, offset_format = struct.unpack(order + "I", header[4:8])[0], "H", 12, "I"
        elif version == 43 and len(header) == 16:
            offset, count_format, entry_size, offset_format = struct.unpack(order + "Q", header[8:16])[0], "Q", 20, "Q"
        else:
            raise ValueError(f"TIFF version {version}")
        count_size, offset_size = struct.calcsize(count_format), struct.calcsize(offset_format)
        seen: set[int] = set()
        pages = 0
        while offset and pages <= limit:
            if offset in seen:
                raise ValueError("its chain of pages loops back on itself")
            seen.add(offset)
            stream.seek(offset)
            raw = stream.read(count_size)
            if len(raw) < count_size:
                break  # a directory past the end: tifffile says what is wrong with it
            entries = struct.unpack(order + count_format, raw)[0]
            pages += 1
            stream.seek(offset + count_size + entries * entry_size)
            raw = stream.read(offset_size)
            offset = struct.unpack(order + offset_format, raw)[0] if len(raw) == offset_size else 0
        return pages
    finally:
        if stream is file:
            stream.seek(0)  # tifffile reads from where the stream stands
        else:
            stream.close()


def uses_fallback_decoder(compression: int) -> bool:
    """Whether tifffile would decode this compression with its own pure-Python fallback (no imagecodecs, or
    imagecodecs without that codec), which does not bound what it inflates."""
    import tifffile

    if compression == 1:
        return False
    try:
        decoder = tifffile.TIFF.DECOMPRESSORS[compression]
    except (KeyError, ValueError):
        return False  # tifffile cannot decode it at all, and says so
    return not getattr(decoder, "__module__", "").startswith("imagecodecs")


def inflated_size_within(data: bytes, compression: int, limit: int) -> bool:
    """Whether `data` (one segment) inflates to at most `limit` bytes, found by inflating it at most that far."""
    if compression in DEFLATE:
        return len(zlib.decompressobj().decompress(data, limit + 1)) <= limit
    if compression in LZMA:
        return len(lzma.LZMADecompressor().decompress(data, limit + 1)) <= limit
    return False  # another codec without a bounded Python decoder: refused


def check_fallback_segments(tiff, keyframe, page) -> str | None:
    """Where tifffile would inflate `page` (its header in `keyframe`) with an unbounded fallback decoder: why it
    may not (a segment that inflates past the page's own size from its header, or a codec without a bounded
    decoder), or None."""
    compression = int(keyframe.compression)
    if not uses_fallback_decoder(compression):
        return None
    if compression not in DEFLATE + LZMA:
        return f"compression {compression} needs imagecodecs (pip install imagecodecs) to be decoded safely"
    limit = int(keyframe.size) * keyframe.dtype.itemsize if keyframe.dtype is not None else 0
    handle = tiff.filehandle
    for offset, count in zip(page.dataoffsets, page.databytecounts):
        handle.seek(offset)
        if not inflated_size_within(handle.read(min(int(count), handle.size)), compression, limit):
            return f"a compressed segment inflates past the {limit:,} bytes its header gives"
    return None
