"""Stain sets: one grayscale file per HPA stain, `<Id>_<stain>.<ext>`, read together as one image.

The stains, in channel order, are red (microtubules), green (the protein), blue (nucleus) and yellow (ER).
A run of C channels reads `run_stains(C)`: green alone, red-green-blue, or all four. A stain set travels as a
tuple of paths in that order, so its length tells which stains it holds.
"""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Sequence

STAINS = ("red", "green", "blue", "yellow")
STAIN_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")  # in order of preference when an Id has several
RUN_STAINS = {1: ("green",), 3: ("red", "green", "blue"), 4: STAINS}
# The channel counts a run may read (--channels, a run's in_chans), and how messages name them.
CHANNEL_COUNTS = tuple(RUN_STAINS)
CHANNEL_COUNTS_TEXT = f"{', '.join(map(str, CHANNEL_COUNTS[:-1]))} or {CHANNEL_COUNTS[-1]}"


def run_stains(channels: int) -> tuple[str, ...]:
    """The stains a run of `channels` channels reads, in its channel order."""
    if channels not in RUN_STAINS:
        raise ValueError(f"{channels} channels: expected {CHANNEL_COUNTS_TEXT}")
    return RUN_STAINS[channels]


def split_stain_name(path: str | Path) -> tuple[str, str] | None:
    """'DIR/abc_green.png' -> ('abc', 'green'); None for a name that is not `<Id>_<stain>.<image suffix>`."""
    name = os.path.basename(path)
    stem, suffix = os.path.splitext(name)
    identifier, underscore, stain = stem.rpartition("_")
    if not underscore or not identifier or stain.lower() not in STAINS or suffix.lower() not in STAIN_SUFFIXES:
        return None
    return identifier, stain.lower()


def describe_mixed_files(paths: Sequence[str | Path]) -> str | None:
    """Why stain files and other images cannot be read together, naming each folder and what it holds; None
    when the files are all stain files or all other images."""
    stain_files = [path for path in paths if split_stain_name(path)]
    if not stain_files or len(stain_files) == len(paths):
        return None
    by_folder: dict[str, list[list[str]]] = defaultdict(lambda: [[], []])
    for path in paths:
        by_folder[os.path.dirname(str(path)) or "."][0 if split_stain_name(path) else 1].append(os.path.basename(path))
    holds = []
    for folder, (stains, others) in by_folder.items():
        parts = [f"{len(stains)} stain files" if stains else "",
                 f"{len(others)} other images ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''})" if others else ""]
        holds.append(f"{folder} holds {' and '.join(filter(None, parts))}")
    return (f"stain files (<Id>_<stain>.png) and other images together: {'; '.join(holds)}; give stain files and "
            "whole images separately")


def stain_file_hint(identifier: str, stains: Sequence[str]) -> str:
    return ", ".join(f"{identifier}_{stain}" for stain in stains) + " (.png, .tif or .jpg)"


def group_stain_files(paths: Sequence[str | Path], channels: int,
                      gray_as: str | None = None) -> tuple[list[str], list[tuple[str, ...] | str], list[str]]:
    """Stain files -> (ids, stain sets in the run's channel order, problems), ids in order of first appearance.
    An Id is a name in a folder: files of one name in two folders are two images.

    A problem is an Id without every stain the run reads, or with two files of one stain. Stains the run does
    not read (yellow for an RGB run) are left out of the set. With `gray_as` (the user's --gray-as), an Id of
    one file is that file alone, a grayscale image the run reads as the `gray_as` stain: the option wins over
    the name."""
    needed = run_stains(channels)
    files: dict[tuple[str, str], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in paths:
        identifier, stain = split_stain_name(path)
        files[os.path.dirname(str(path)) or ".", identifier][stain].append(str(path))
    ids, sources, problems = [], [], []
    for (folder, identifier), by_stain in files.items():
        missing = [stain for stain in needed if stain not in by_stain]
        doubled = [stain for stain in needed if len(by_stain.get(stain, ())) > 1]
        lone = [file for stain_files in by_stain.values() for file in stain_files]
        if missing and gray_as is not None and len(lone) == 1:
            ids.append(identifier)
            sources.append(lone[0])
            continue
        if missing:
            alone = (f"; or, to read {os.path.basename(lone[0])} alone as one grayscale image, --gray-as STAIN"
                     if len(lone) == 1 else "")
            problems.append(
                f"{folder}: Id {identifier} has no {' or '.join(missing)} stain file; a {channels}-channel run reads "
                f"{', '.join(needed)}, one file each: {stain_file_hint(identifier, needed)}{alone}")
        for stain in doubled:
            names = ", ".join(os.path.basename(path) for path in by_stain[stain])
            problems.append(f"{folder}: Id {identifier} has {len(by_stain[stain])} {stain} stain files ({names}); keep one")
        if not missing and not doubled:
            ids.append(identifier)
            sources.append(tuple(by_stain[stain][0] for stain in needed))
    return ids, sources, problems


def index_stain_files(folder: str | Path) -> dict[str, str]:
    """'<Id>_<stain>' -> its file name, for every stain file of `folder` (one listing, not one look-up per Id);
    of several files of one stain, the first in STAIN_SUFFIXES order."""
    rank = {suffix: position for position, suffix in enumerate(STAIN_SUFFIXES)}
    found: dict[str, str] = {}
    try:
        names = os.listdir(folder)
    except OSError:
        return found
    for name in names:
        stem, suffix = os.path.splitext(name)
        if suffix.lower() in rank and split_stain_name(name):
            if stem not in found or rank[suffix.lower()] < rank[os.path.splitext(found[stem])[1].lower()]:
                found[stem] = name
    return found


def stain_set_sources(folder: str | Path, ids: Sequence[str], channels: int) -> list[tuple[str, ...]]:
    """The stain set of each Id in `folder`, each stain's file as found there (PNG, TIFF or JPEG), or the PNG name
    where none is, so that a missing file is reported under the name the layout expects."""
    stains = run_stains(channels)
    present = index_stain_files(folder)
    prefix = os.path.join(folder, "")  # plain string joins: pathlib is slow over 30,000 rows
    return [tuple(prefix + present.get(f"{identifier}_{stain}", f"{identifier}_{stain}.png") for stain in stains)
            for identifier in ids]


def describe_missing_stain(path: str, stain_count: int) -> str:
    """'PATH: file not found (the blue stain of Id abc)' for a missing file of a stain set of `stain_count` files."""
    parts = split_stain_name(path)
    if parts is None:
        return f"{path}: file not found"
    identifier, stain = parts
    return (f"{path}: file not found (Id {identifier} has no {stain} stain file; a {stain_count}-channel run reads "
            f"{', '.join(run_stains(stain_count))})")


# ---------------------------------------------------------------- channel names (OME-TIFF, CZI, ND2, LIF)

# Words in a channel's name that say which HPA stain it plays, used where --stain-map does not name the channel.
# Few and unambiguous: a dye or marker that only ever means that stain, and the stains' own names.
DEFAULT_CHANNEL_WORDS = {
    "blue": ("dapi", "hoechst"),
    "red": ("tubulin", "microtubules"),
    "green": ("gfp",),
    "yellow": ("calreticulin",),
}
LEAVE_OUT = "none"  # --stain-map NAME=none: a channel the run does not read (brightfield, a second marker...)


def channel_key(name: str) -> str:
    """How channel names compare: case and surrounding space ignored."""
    return " ".join(str(name).split()).casefold()


def parse_stain_map(text: str) -> dict[str, str | None]:
    """'DAPI=blue,Tubulin=red,GFP=green' -> {channel_key(name): stain, or None for NAME=none}. Raises ValueError
    for a pair without '=', an unknown stain, a channel named twice or a stain given to two channels."""
    mapping: dict[str, str | None] = {}
    names: dict[str, str] = {}
    for pair in (part.strip() for part in text.split(",")):
        name, equals, stain = (part.strip() for part in pair.partition("="))
        if not equals or not name or not stain:
            raise ValueError(f"{pair!r}: expected NAME=STAIN (STAIN one of {', '.join(STAINS)}, or {LEAVE_OUT})")
        stain = stain.lower()
        if stain not in (*STAINS, LEAVE_OUT):
            raise ValueError(f"{pair!r}: unknown stain {stain!r} (expected {', '.join(STAINS)}, or {LEAVE_OUT})")
        if channel_key(name) in mapping:
            raise ValueError(f"channel {name!r} named twice")
        if stain != LEAVE_OUT and stain in names:
            raise ValueError(f"the {stain} stain given to two channels, {names[stain]} and {name}")
        names[stain] = name
        mapping[channel_key(name)] = None if stain == LEAVE_OUT else stain
    return mapping


def default_stain(name: str) -> str | None:
    """The stain a channel's name says by itself (DEFAULT_CHANNEL_WORDS), or None: 'Hoechst 33342' -> blue,
    'alpha-Tubulin' -> red, 'EGFP' -> green."""
    words = "".join(c if c.isalnum() else " " for c in channel_key(name)).split()
    for stain, keys in DEFAULT_CHANNEL_WORDS.items():
        if channel_key(name) == stain or any(word.startswith(key) or word.endswith(key)
                                             for word in words for key in keys):
            return stain
    return None


def channel_stains(names: Sequence[str], stain_map: dict[str, str | None] | None = None) -> tuple[list[str | None], list[str]]:
    """The stain of each named channel (None: left out), and the problems: a channel neither in `stain_map` nor
    known by its name, and two channels of one stain."""
    stain_map = stain_map or {}
    stains, problems = [], []
    for name in names:
        key = channel_key(name)
        stain = stain_map[key] if key in stain_map else default_stain(name)
        if key not in stain_map and stain is None:
            problems.append(f"channel {name!r} is not a stain protloc knows by name: add --stain-map "
                            f"'{name}=STAIN' (STAIN one of {', '.join(STAINS)}, or {LEAVE_OUT} to leave it out)")
        stains.append(stain)
    for stain in STAINS:
        holders = [name for name, given in zip(names, stains) if given == stain]
        if len(holders) > 1:
            problems.append(f"channels {' and '.join(map(repr, holders))} are both the {stain} stain; name one "
                            f"with --stain-map (NAME={LEAVE_OUT} leaves a channel out)")
    return stains, problems


def describe_channel_stains(names: Sequence[str], stains: Sequence[str | None], stain_map: dict | None) -> str:
    """'DAPI -> blue, GFP -> green (by name), Brightfield left out'."""
    parts = [f"{name} -> {stain}" if stain else f"{name} left out" for name, stain in zip(names, stains)]
    by_name = [name for name in names if channel_key(name) not in (stain_map or {})]
    return ", ".join(parts) + (f" ({', '.join(by_name)} by name; --stain-map to change)" if by_name else "")
