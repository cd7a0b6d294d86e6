"""Reading microscope images of any common kind into one form: uint8, height x width x channels.

PNG, JPEG and TIFF; 8- or 16-bit; 1, 3 or 4 channels; any size. `read_pixels` is the one decoder, for files
and for uploaded bytes alike, and keeps each file's stored depth (a 16-bit RGB PNG stays 16-bit: PIL would keep
only its high byte, so such PNGs go through libpng by imagecodecs); `decode_image` scales its pixels to uint8 by
the dataset's bit depth, the same for every image of a run (see to_uint8). The HPA layouts store one grayscale file per stain, which
`load_image` composes when given a stain set (see stains.py); `convert_channels` fits an image to a run's
channels by fixed, documented rules and refuses what it cannot fit without a guess.
"""
from __future__ import annotations

import io
import math
import os
import stat
import threading
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from protloc.data import BIT_DEPTHS
from protloc.data.limits import (ImageReadError, ImageTooLarge, UnsupportedImage,  # noqa: F401  (importable from here too)
                                 check_pixel_count, pixel_limit)
from protloc.data.stains import CHANNEL_COUNTS, channel_stains, describe_channel_stains, run_stains

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".czi", ".nd2", ".lif")  # the last three: microscopy.py
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders

# Decoded bytes allowed per pixel of the limit: 16-bit and float32 data at the limit fit, float64 stacks do not.
BYTES_PER_PIXEL = 4


# warnings.catch_warnings changes process-wide state and restores it: threads (the HTTP service) take turns around
# it. Only Image.open runs under it, which reads the header alone.
_PIL_OPEN_LOCK = threading.Lock()


def describe_read_error(source: str | Path | Sequence[str | Path], error: ImageReadError) -> str:
    """'PATH: why' for an image source (a file, or one file per stain) that could not be read."""
    where = error.path or (source if isinstance(source, (str, Path)) else source[0])
    return f"{where}: {error}"


def to_uint8(array: np.ndarray, bit_depth: int | None = None) -> np.ndarray:
    """Pixels of any type -> uint8, 0..255.

    uint8 stays as it is (an 8-bit file holds no more) and floats are taken as 0..1 intensities (the convention
    of image libraries). Wider integers (16-bit files) are divided by the full scale of `bit_depth`: 4095 for
    12-bit camera data in 16-bit files, 65535 for 16-bit data, brighter values saturating. The bit depth belongs
    to the dataset (a run's config.json) or is stated for the input (--bit-depth), so one pixel value maps to one
    grey level in every image. bit_depth=8, a dataset of 8-bit files, has no scale for wider pixels: they are
    read by their container's depth (0..65535 for a 16-bit file), the one reading that keeps every value.
    None, for runs from before bit depths were stored, guesses per image from its maximum (12-bit when it is
    at most 4095), which makes a pixel's grey level depend on the brightest pixel of its image.
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():  # NaN would become black without a word
            raise ImageReadError("floating-point pixels that are NaN or infinite (expected intensities in 0..1)")
        return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if bit_depth not in BIT_DEPTHS and bit_depth is not None:
        raise ValueError(f"bit depth {bit_depth}: expected one of {', '.join(map(str, BIT_DEPTHS))} or None")
    if bit_depth == 8:
        bit_depth = container_depth(array.dtype)
    array = array.astype(np.float32)
    if bit_depth is None:
        top = float(array.max()) if array.size else 0.0
        bit_depth = 12 if top <= 4095 else 16
    full_scale = float(2**bit_depth - 1)
    return (np.clip(array / full_scale, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def container_depth(dtype: np.dtype) -> int:
    """The bits a pixel type holds: 8 for uint8, 16 for uint16 (and int16, whose negative values read as 0)."""
    return np.dtype(dtype).itemsize * 8


def pil_to_array(image: Image.Image) -> np.ndarray:
    """A PIL image as (H, W) for one-channel modes, else (H, W, 3|4): palettes expanded, LA made L, other colour
    modes RGB. Files (decode_image) and the Python API's PIL images both pass here, so they convert alike."""
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode in ("LA", "CMYK", "YCbCr", "HSV", "1"):
        image = image.convert("RGB" if image.mode != "LA" else "L")
    return np.asarray(image)


def read_image(source: bytes | str | Path, *, max_pixels: int | None = None, formats: Sequence[str] | None = None):
    """An image file, by path or as its bytes -> a microscopy.StoredImage: its pixels as stored, (H, W, C) of the
    file's own type (uint8, uint16, float...), with C in 1, 3, 4 unless the file names its channels, and the
    channel names and pixel size a microscope file states. Raises ImageReadError (ImageTooLarge, UnsupportedImage).

    TIFF (known by its signature, whatever the file is called) goes through tifffile: 16-bit, multi-channel
    and channel-first stacks, OME-TIFF's channels, Z stacks and time series (microscopy.py); CZI, ND2 and LIF
    files through bioio (microscopy.py); everything else through PIL, restricted to `formats` (PIL format names)
    when given: the HTTP service lets only PNG and JPEG decoders see an upload. The pixel count comes from the
    header and is checked against `max_pixels` (pixel_limit() when None) before the pixels are decoded.
    """
    from protloc.data.microscopy import BIOIO_FORMATS, StoredImage, read_with_bioio

    in_memory = isinstance(source, (bytes, bytearray, memoryview))
    if in_memory and not len(source):
        raise ImageReadError("empty file")
    file = io.BytesIO(source) if in_memory else Path(source)
    limit = max_pixels  # None: pixel_limit(), read when needed
    if not in_memory:
        from protloc.data.decode_limits import check_regular_file

        check_regular_file(file)
    try:
        if not in_memory and file.suffix.lower() in BIOIO_FORMATS:
            stored = read_with_bioio(file, limit)
        elif _is_tiff(file):
            stored = _decode_tiff(file, limit)
        else:
            stored = StoredImage(_decode_with_pil(file, limit, formats))
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError("file not found") from None
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"too many pixels to decode ({error})") from None
    except UnidentifiedImageError:  # its message holds the path or a BytesIO's address, neither of use here
        kinds = f"not {', '.join(formats)} or TIFF" if formats else "not PNG, JPEG, TIFF or another format PIL knows"
        raise UnsupportedImage(f"not a readable image ({kinds})") from None
    except Exception as error:  # decoders raise many types for corrupt input (OSError, ValueError, struct.error...)
        raise ImageReadError(f"not a readable image ({type(error).__name__}: {error})") from None
    if stored.channel_names is None:
        stored.pixels = to_channels_last(stored.pixels)
    return stored


def read_pixels(source: bytes | str | Path, *, max_pixels: int | None = None,
                formats: Sequence[str] | None = None) -> np.ndarray:
    """An image file's pixels as stored (read_image): (H, W, C) of the file's own type."""
    return read_image(source, max_pixels=max_pixels, formats=formats).pixels


def fit_stored(stored, channels: int, *, bit_depth: int | None = None, gray_as: str | None = None,
               stain_map: dict | None = None) -> np.ndarray:
    """A read_image result -> uint8 (H, W, channels): pixels scaled by `bit_depth` (to_uint8); named channels
    picked by their names (microscopy.fit_named_channels, `stain_map`), others fitted by convert_channels."""
    array = to_uint8(stored.pixels, bit_depth)
    if stored.channel_names:
        from protloc.data.microscopy import fit_named_channels

        return fit_named_channels(array, stored.channel_names, channels, stain_map=stain_map, gray_as=gray_as)
    return convert_channels(array, channels, gray_as=gray_as)


def decode_image(source: bytes | str | Path, *, bit_depth: int | None = None, max_pixels: int | None = None,
                 formats: Sequence[str] | None = None) -> np.ndarray:
    """An image file, by path or as its bytes -> uint8 (H, W, C) with C in 1, 3, 4, wide pixels scaled by
    `bit_depth` (see to_uint8). Raises ImageReadError; see read_pixels for `max_pixels` and `formats`."""
    return to_uint8(read_pixels(source, max_pixels=max_pixels, formats=formats), bit_depth)


def _is_tiff(file: io.BytesIO | Path) -> bool:
    if isinstance(file, io.BytesIO):
        return bytes(file.getbuffer()[:4]) in TIFF_SIGNATURES
    with open(file, "rb") as stream:
        return stream.read(4) in TIFF_SIGNATURES


def _decode_tiff(file: io.BytesIO | Path, limit: int | None):
    import tifffile

    from protloc.data.microscopy import StoredImage, read_ome_tiff
    from protloc.data.decode_limits import MAX_TIFF_PAGES, check_fallback_segments, count_tiff_pages

    # Pages counted from their offsets before tifffile reads any: many small pages cost it minutes.
    if count_tiff_pages(file) > MAX_TIFF_PAGES:
        raise ImageTooLarge(f"a TIFF of more than {MAX_TIFF_PAGES:,} pages (more than any image protloc reads)")

    with tifffile.TiffFile(file) as tiff:
        if not len(tiff.pages):
            raise ImageReadError("a TIFF file without image data")
        # The first page alone first: a file of many pages is refused before tifffile reads every page's header.
        check_pixel_count(tiff.pages[0].shape, limit)
        if not tiff.series:
            raise ImageReadError("a TIFF file without image data")
        series = tiff.series[0]
        check_pixel_count(series.shape, limit)
        budget = (limit or pixel_limit()) * BYTES_PER_PIXEL
        if series.size * series.dtype.itemsize > budget:
            raise ImageTooLarge(f"TIFF data of {series.shape} {series.dtype}: more than the limit of {budget:,} "
                                "decoded bytes")
        for page in series.pages:  # only where tifffile would inflate without a bound (no imagecodecs)
            if page is not None and (why := check_fallback_segments(tiff, getattr(page, "keyframe", page), page)):
                raise ImageTooLarge(why)
        if tiff.is_ome:
            return read_ome_tiff(tiff, series)
        array = np.asarray(series.asarray())
    # Channel-first TIFF stacks (C, H, W) are common in microscopy.
    if array.ndim == 3 and array.shape[0] in CHANNEL_COUNTS and array.shape[-1] not in CHANNEL_COUNTS:
        array = np.moveaxis(array, 0, -1)
    return StoredImage(array)


def _decode_with_pil(file: io.BytesIO | Path, limit: int | None, formats: Sequence[str] | None) -> np.ndarray:
    with _open_header(file, formats) as image:
        check_pixel_count((image.height, image.width, len(image.getbands())), limit)
        if _is_sixteen_bit_png(image):
            return _decode_png_at_stored_depth(file)
        image.load()
        return pil_to_array(image)


def _open_header(file: io.BytesIO | Path, formats: Sequence[str] | None) -> Image.Image:
    """Image.open (the header alone), with check_pixel_count as the one limit that decides. PIL warns from its own
    MAX_IMAGE_PIXELS and refuses at twice it; that setting is the process's, so it is left alone: a header PIL
    refuses is opened by its format's plugin directly, as Image.open itself would, and checked by protloc's limit
    (PROTLOC_MAX_PIXELS raised above PIL's included)."""
    with _PIL_OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(file, formats=formats)
        except Image.DecompressionBombError:
            pass
    stream = file if isinstance(file, io.BytesIO) else io.BytesIO(Path(file).read_bytes())
    stream.seek(0)
    prefix = stream.read(16)
    Image.init()
    for name in formats or Image.ID:
        factory, accept = Image.OPEN[name.upper()]
        if accept is None or accept(prefix) is True:
            stream.seek(0)
            return factory(stream, "")
    raise UnsupportedImage("not an image format PIL reads")


def _is_sixteen_bit_png(image: Image.Image) -> bool:
    """A PNG of 16 bits per sample: PIL reads 16-bit colour (and gray + alpha) as 8-bit, so libpng decodes these."""
    return image.format == "PNG" and any(";16" in str(tile.args) for tile in image.tile)


def _decode_png_at_stored_depth(file: io.BytesIO | Path) -> np.ndarray:
    """A PNG's pixels as stored, 16 bits per sample kept (imagecodecs: libpng). Its header has been checked."""
    import imagecodecs

    data = file.getvalue() if isinstance(file, io.BytesIO) else Path(file).read_bytes()
    return np.asarray(imagecodecs.png_decode(data))


def to_chw_tensor(array: np.ndarray):
    """uint8 (H, W, C) -> a (C, H, W) torch tensor, the layout the presets and models take."""
    import torch  # here, so that reading images (and `protloc --help`) does not import torch

    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def to_channels_last(array: np.ndarray) -> np.ndarray:
    """A decoded (H, W) or (H, W, 1..4) array -> (H, W, C) with C in 1, 3, 4, its type kept; a second channel
    (gray + alpha) is dropped. Raises ImageReadError for other shapes."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise ImageReadError(f"unexpected image shape {array.shape} (expected height x width with 1, 3 or 4 channels)")
    if array.shape[-1] == 2:
        array = array[:, :, :1]
    return array


def to_image_array(array: np.ndarray, bit_depth: int | None = None) -> np.ndarray:
    """A decoded (H, W) or (H, W, 1..4) array of any type -> uint8 (H, W, C) with C in 1, 3, 4."""
    return to_uint8(to_channels_last(array), bit_depth)


def image_stem(path: str | Path) -> str:
    """A file's name without its extension, an OME-TIFF's .ome too: 'cell.ome.tif' -> 'cell'."""
    stem = Path(path).stem
    return stem[:-4] if stem.lower().endswith(".ome") and len(stem) > 4 else stem


def describe_channels(count: int) -> str:
    return {1: "1 channel (grayscale)", 3: "3 channels (RGB)", 4: "4 channels"}.get(count, f"{count} channels")


def convert_channels(array: np.ndarray, channels: int, *, gray_as: str | None = None) -> np.ndarray:
    """Fit an image to a run's channels, HPA order red, green, blue, yellow. Raises ImageReadError where that
    would take a guess.

    - as many channels as the run: as it is;
    - a 1-channel run: the green (protein) channel of a 3- or 4-channel image;
    - a 3-channel run: the first three of a 4-channel image (alpha, or the yellow stain, dropped);
    - fewer channels than the run reads: refused, except a grayscale image with `gray_as` (a stain name): its
      plane becomes that channel and the others are zero (dark).
    """
    have = array.shape[-1]
    if have == channels:
        return array
    if channels == 1:
        return array[:, :, 1:2]
    if have > channels:
        return array[:, :, :channels]
    stains = run_stains(channels)
    if have == 1 and gray_as is not None:
        if gray_as not in stains:
            raise ImageReadError(f"gray as {gray_as}: expected one of the run's stains, {', '.join(stains)}")
        converted = np.zeros(array.shape[:2] + (channels,), dtype=array.dtype)
        converted[:, :, stains.index(gray_as)] = array[:, :, 0]
        return converted
    hint = "; or, for a protein-only image, --gray-as green (gray_as='green')" if have == 1 else ""
    raise ImageReadError(
        f"{describe_channels(have)}, but the run reads {channels} ({', '.join(stains)}): give one grayscale file "
        f"per stain, <Id>_{'.png, <Id>_'.join(stains)}.png{hint}")


def stain_plane(array: np.ndarray) -> np.ndarray:
    """The (H, W) intensity of one stain file. A grayscale file is its own plane; a colour one (a stain saved as
    RGB, or drawn in its colour as HPA's web images are) is read as its brightest colour channel per pixel."""
    return array[:, :, 0] if array.shape[-1] == 1 else array[:, :, :3].max(axis=-1)


def compose_stains(stain_images: Sequence[np.ndarray]) -> np.ndarray:
    """Decoded stain files, one per stain in the run's channel order -> (H, W, stains): each file's plane
    (stain_plane), stacked. The one composition of stain sets: files (load_image), Python inputs and uploads.
    Raises ImageReadError when their sizes differ."""
    planes = [stain_plane(image) for image in stain_images]
    shapes = {plane.shape for plane in planes}
    if len(shapes) != 1:
        raise ImageReadError(f"stain images differ in size: {' and '.join(f'{w}x{h}' for h, w in sorted(shapes))}")
    return np.stack(planes, axis=-1)


def load_image(source: str | Path | Sequence[str | Path], channels: int = 3, *, bit_depth: int | None = None,
               gray_as: str | None = None, stain_map: dict | None = None) -> np.ndarray:
    """A file, or a stain set (one grayscale file per stain of the run, in its channel order; see stains.py),
    -> uint8 (H, W, channels). `bit_depth` scales wide pixels (to_uint8), `gray_as` places a grayscale file
    (convert_channels), `stain_map` names the stains of a microscope file's channels (fit_stored).

    An unreadable stain raises ImageReadError with that stain's `path`."""
    if isinstance(source, (str, Path)):
        return fit_stored(read_image(source), channels, bit_depth=bit_depth, gray_as=gray_as, stain_map=stain_map)
    if len(source) != channels:
        raise ImageReadError(f"a stain set of {len(source)} files for a {channels}-channel run (expected "
                             f"{', '.join(run_stains(channels))}, in that order)")
    planes = []
    for path in source:
        try:
            planes.append(decode_image(path, bit_depth=bit_depth))
        except ImageReadError as error:
            raise ImageReadError(str(error), path=path) from None
    return compose_stains(planes)


def describe_microscope_reading(paths, channels: int, stain_map: dict | None = None) -> str | None:
    """One line on how the first microscope file among `paths` (one with named channels, or more dimensions than
    an image) is read: its channels' stains, what was reduced, its pixel size. None when there is none."""
    from protloc.data.microscopy import BIOIO_FORMATS

    for path in paths:
        if Path(path).suffix.lower() not in (".tif", ".tiff", *BIOIO_FORMATS):
            continue
        try:
            stored = read_image(path)
        except ImageReadError:
            continue  # the prediction names it
        if not stored.channel_names and not stored.reductions:
            continue
        parts = []
        if stored.channel_names:
            stains, problems = channel_stains(stored.channel_names, stain_map)
            if not problems:
                parts.append(f"channels {describe_channel_stains(stored.channel_names, stains, stain_map)}")
        parts += list(stored.reductions)
        if stored.pixel_size_um:
            parts.append(f"{stored.pixel_size_um:.4g} µm per pixel")
        return f"{path}: " + "; ".join(parts) if parts else None
    return None


def stated_pixel_size(source) -> tuple[float, int] | None:
    """(µm per pixel, the stored image's width in pixels) of a microscope file that states its pixel size, else
    None (other files, stain sets, arrays, unreadable files)."""
    from protloc.data.microscopy import BIOIO_FORMATS

    if not isinstance(source, (str, Path)) or Path(source).suffix.lower() not in (".tif", ".tiff", *BIOIO_FORMATS):
        return None
    try:
        stored = read_image(source)
    except ImageReadError:
        return None
    return (stored.pixel_size_um, stored.pixels.shape[1]) if stored.pixel_size_um else None
