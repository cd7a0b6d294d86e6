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


def run_stains(channels: int) -> tuple[str, ...]:
    """The stains a run of `channels` channels reads, in its channel order."""
    if channels not in RUN_STAINS:
        raise ValueError(f"{channels} channels: expected 1, 3 or 4")
    return RUN_STAINS[channels]


def split_stain_name(path: str | Path) -> tuple[str, str] | None:
    """'DIR/abc_green.png' -> ('abc', 'green'); None for a name that is not `<Id>_<stain>.<image suffix>`."""
    name = os.path.basename(path)
    stem, suffix = os.path.splitext(name)
    identifier, underscore, stain = stem.rpartition("_")
    if not underscore or not identifier or stain.lower() not in STAINS or suffix.lower() not in STAIN_SUFFIXES:
        return None
    return identifier, stain.lower()


def stain_file_hint(identifier: str, stains: Sequence[str]) -> str:
    return ", ".join(f"{identifier}_{stain}" for stain in stains) + " (.png, .tif or .jpg)"


def group_stain_files(paths: Sequence[str | Path], channels: int) -> tuple[list[str], list[tuple[str, ...]], list[str]]:
    """Stain files -> (ids, stain sets in the run's channel order, problems), ids in order of first appearance.

    A problem is an Id without every stain the run reads, or with two files of one stain. Stains the run does
    not read (yellow for an RGB run) are left out of the set."""
    needed = run_stains(channels)
    files: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in paths:
        identifier, stain = split_stain_name(path)
        files[identifier][stain].append(str(path))
    ids, sources, problems = [], [], []
    for identifier, by_stain in files.items():
        folder = os.path.dirname(next(iter(by_stain.values()))[0]) or "."
        missing = [stain for stain in needed if stain not in by_stain]
        doubled = [stain for stain in needed if len(by_stain.get(stain, ())) > 1]
        if missing:
            problems.append(
                f"{folder}: Id {identifier} has no {' or '.join(missing)} stain file; a {channels}-channel run reads "
                f"{', '.join(needed)}, one file each: {stain_file_hint(identifier, needed)}")
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
