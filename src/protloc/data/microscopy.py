"""Microscope files as one image each: OME-TIFF through tifffile; Zeiss CZI, Nikon ND2 and Leica LIF through
bioio and its reader plugins (the optional extra, `pip install 'protloc[microscopy]'`).

What is read from a file of more dimensions than an image:
- a time series (T): its first time point;
- a Z stack (Z): the maximum-intensity projection of its planes, so that what lies in any plane is seen;
- several positions (OME images, CZI scenes, ND2 or LIF series): the first;
- channels (C): all of them with their names, which say which stain each is (stains.channel_stains);
- the pixel size (µm per pixel), where the file states it.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protloc.data.limits import ImageReadError, UnsupportedImage, check_pixel_count
from protloc.data.stains import channel_stains, describe_channel_stains, run_stains

# suffix -> (format name, the bioio reader plugin that reads it)
BIOIO_FORMATS = {".czi": ("CZI", "bioio_czi"), ".nd2": ("ND2", "bioio_nd2"), ".lif": ("LIF", "bioio_lif")}
MICROSCOPY_EXTRA = "pip install 'protloc[microscopy]'"
LENGTH_UNITS_IN_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4}


@dataclass
class StoredImage:
    """A decoded file: its pixels as stored, (H, W, C) of the file's own type; its channels' names where the file
    names every one; its pixel size in µm where stated; and what was reduced to get one image (Z, T, positions)."""

    pixels: np.ndarray
    channel_names: tuple[str, ...] | None = None
    pixel_size_um: float | None = None
    reductions: tuple[str, ...] = ()


def reduce_axes(array: np.ndarray, axes: str) -> tuple[np.ndarray, list[str]]:
    """An array with named axes (tifffile's and bioio's letters: T, C, Z, Y, X, S...) -> (H, W, channels) and
    what was done: Z to its maximum, every other axis but Y, X, C and S (samples) to its first plane."""
    reductions = []
    for axis in [axis for axis in axes if axis not in "YXCS"]:
        index, size = axes.index(axis), array.shape[axes.index(axis)]
        if axis == "Z":
            array = array.max(axis=index)
        else:
            array = np.take(array, 0, axis=index)
        if size > 1:
            what = {"Z": "Z planes: their maximum", "T": "time points: the first"}.get(axis, f"{axis} planes: the first")
            reductions.append(f"{size} {what}")
        axes = axes.replace(axis, "")
    order = [axes.index(axis) for axis in "YX"] + [axes.index(axis) for axis in "CS" if axis in axes]
    array = np.transpose(array, order)
    return array.reshape(array.shape[0], array.shape[1], -1), reductions


def _as_list(value) -> list:
    return value if isinstance(value, list) else [] if value is None else [value]


def _micrometres(size, unit) -> float | None:
    try:
        value = float(size) * LENGTH_UNITS_IN_UM[str(unit or "µm")]
    except (KeyError, TypeError, ValueError):
        return None
    return value if value > 0 else None


def read_ome_tiff(tiff, series) -> StoredImage:
    """An OME-TIFF's first image (position) as one image, its channel names and pixel size from the OME-XML.
    `tiff` is an open tifffile.TiffFile whose first series' size has been checked."""
    import tifffile

    pixels, reductions = reduce_axes(np.asarray(series.asarray()), series.axes)
    images = _as_list(tifffile.xml2dict(tiff.ome_metadata).get("OME", {}).get("Image"))
    if len(images) > 1:
        reductions.append(f"{len(images)} positions: the first")
    meta = images[0].get("Pixels", {}) if images else {}
    names = [channel.get("Name") for channel in _as_list(meta.get("Channel"))]
    named = len(names) == pixels.shape[-1] and all(name not in (None, "") for name in names)
    return StoredImage(pixels, tuple(map(str, names)) if named else None,
                       _micrometres(meta.get("PhysicalSizeX"), meta.get("PhysicalSizeXUnit")), tuple(reductions))


def read_with_bioio(path: str | Path, limit: int | None) -> StoredImage:
    """A CZI, ND2 or LIF file's first position and time point, Z projected, through bioio's reader plugin for it.
    Raises UnsupportedImage naming the extra when bioio or the plugin is not installed."""
    kind, plugin = BIOIO_FORMATS[Path(path).suffix.lower()]
    try:
        import bioio

        reader = importlib.import_module(plugin).Reader
    except ImportError:
        raise UnsupportedImage(f"reading {kind} files needs protloc's microscopy extra: {MICROSCOPY_EXTRA}") from None
    image = bioio.BioImage(path, reader=reader)
    reductions = [f"{len(image.scenes)} positions: the first"] if len(image.scenes) > 1 else []
    order = "CZYX" + ("S" if "S" in image.dims.order else "")
    check_pixel_count([getattr(image.dims, axis) for axis in order], limit)
    if image.dims.T > 1:
        reductions.append(f"{image.dims.T} time points: the first")
    pixels, projected = reduce_axes(np.asarray(image.get_image_dask_data(order, T=0).compute()), order)
    names = [str(name) for name in image.channel_names or []]
    named = len(names) == pixels.shape[-1] and all(names)
    return StoredImage(pixels, tuple(names) if named else None, _micrometres(image.physical_pixel_sizes.X, "µm"),
                       tuple(projected + reductions))


def fit_named_channels(array: np.ndarray, names: tuple[str, ...], channels: int, *, stain_map: dict | None = None,
                       gray_as: str | None = None) -> np.ndarray:
    """(H, W, named channels) -> (H, W, channels) in the run's stain order, each stain from the channel whose name
    says it (stains.channel_stains). A stain no channel holds is refused, or left dark with `gray_as` (which
    asks for dark channels). Raises ImageReadError."""
    stains, problems = channel_stains(names, stain_map)
    if problems:
        raise ImageReadError("; ".join(problems))
    wanted = run_stains(channels)
    missing = [stain for stain in wanted if stain not in stains]
    if missing and gray_as is None:
        raise ImageReadError(
            f"no {' or '.join(missing)} stain among its channels ({describe_channel_stains(names, stains, stain_map)}); "
            f"a {channels}-channel run reads {', '.join(wanted)}: name the channel with --stain-map NAME={missing[0]}, "
            "or --gray-as STAIN to leave the stains it lacks dark")
    planes = [array[:, :, stains.index(stain)] if stain in stains else np.zeros(array.shape[:2], array.dtype)
              for stain in wanted]
    return np.stack(planes, axis=-1)
