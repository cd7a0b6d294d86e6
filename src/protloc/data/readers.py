"""Dataset readers: every supported layout becomes one table of id, image source(s) and labels.

Layouts
- z2g: Kaggle "Zero to GANs" — DIR/train.csv (Image,Label), DIR/train/<Image>.png, DIR/test/*.png,
  optionally DIR/submission.csv.
- hpa2018: Kaggle HPA 2018 — DIR/train.csv (Id,Target), DIR/train/<Id>_{red,green,blue,yellow}.png (or .tif, .jpg).
- generic: a CSV with a `path` column (relative to the CSV's folder) and a `labels` column.
- folder: a folder of image files, unlabelled; a folder of stain files (<Id>_<stain>.<ext>) is one image per Id.
- images: image files given one by one, unlabelled; stain files among them are grouped by Id as in a folder.

A table is read for a number of channels: a stain set holds one file per stain the run reads (stains.py).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from protloc.data import FOLDER, GENERIC, HPA2018, IMAGES, LAYOUTS, Z2G
from protloc.data.images import IMAGE_SUFFIXES, image_stem
from protloc.data.stains import describe_mixed_files, group_stain_files, split_stain_name, stain_set_sources
from protloc.errors import DataError, ProtlocError, listed
from protloc.labels import HPA10, HPA28, LabelSet

LAYOUT_COLUMNS = {Z2G: ("Image", "Label"), HPA2018: ("Id", "Target"), GENERIC: ("path", "labels")}


@dataclass
class DatasetTable:
    """One row per image: `id`, `source` (a path, or a stain set: one path per stain, in the channel order of
    `channels`), `labels` (class indices) and `line` (its line in the CSV, for error messages; 0 when it came
    from no CSV).

    `channels` is the channel count the table was read for; `bit_depth` the intensity scale of its images
    (8, 12 or 16; None: not decided, each image's guessed from its maximum). Training decides it for the
    dataset (intensity.detect_bit_depth); a run reads every image with the bit depth of its config."""

    frame: pd.DataFrame
    label_set: LabelSet
    layout: str
    root: Path
    csv_path: Path | None
    labelled: bool
    channels: int = 3
    bit_depth: int | None = None

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def targets(self) -> np.ndarray:
        """Multi-hot label matrix (N, number of classes), float32."""
        targets = np.zeros((len(self.frame), len(self.label_set)), dtype=np.float32)
        for row, labels in enumerate(self.frame["labels"]):
            targets[row, list(labels)] = 1.0
        return targets

    def subset(self, rows: Sequence[int] | np.ndarray) -> "DatasetTable":
        frame = self.frame.iloc[np.asarray(rows)].reset_index(drop=True)
        return DatasetTable(frame, self.label_set, self.layout, self.root, self.csv_path, self.labelled,
                            self.channels, self.bit_depth)

    def where(self, row: pd.Series) -> str:
        """'train.csv line 7 (Image 123)' — where a row came from, for messages."""
        if self.csv_path is not None and row["line"]:
            return f"{self.csv_path} line {row['line']} ({self.id_column} {row['id']})"
        return str(row["source"] if isinstance(row["source"], str) else row["source"][0])

    @property
    def id_column(self) -> str:
        return {Z2G: "Image", HPA2018: "Id"}.get(self.layout, "id")


def _read_csv(path: Path, expected: tuple[str, str], layout_name: str) -> pd.DataFrame:
    """Read a two-column CSV as strings, checking it is present, non-empty and has the expected header."""
    expectation = f"expected a header {','.join(expected)} ({layout_name}) and one row per image"
    if not path.is_file():
        raise DataError(f"{path}: file not found ({expectation})")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty ({expectation})") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a valid CSV file ({str(error).strip()}; {expectation})") from None
    frame.columns = [str(column).strip() for column in frame.columns]
    missing = [column for column in expected if column not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: wrong columns {','.join(frame.columns)} ({expectation}; missing {','.join(missing)})"
        )
    if frame.empty:
        raise DataError(f"{path}: the file has a header but no rows ({expectation})")
    return frame


def outside_dataset(identifier: str, *, absolute_allowed: bool = False) -> str | None:
    """Why an id (or a relative path) names a file outside the dataset's folder, or None when it stays inside.
    Judged on the text alone: a dataset may link to images elsewhere, but an id may not walk out of it."""
    if "\0" in identifier:  # no file system takes it in a name
        return "holds a NUL byte (expected a file name)"
    if os.path.isabs(identifier):
        return None if absolute_allowed else (
            "an absolute path (allowed only in the path column of a generic CSV; ids of this layout name files "
            "inside the dataset folder)")
    if os.path.normpath(identifier).split(os.sep)[0] == os.pardir:
        return "names a file outside the dataset folder (expected a name inside it)"
    return None


def _parse_rows(
    frame: pd.DataFrame, csv_path: Path, id_column: str, label_column: str, label_set: LabelSet,
    absolute_allowed: bool = False,
) -> tuple[list[str], list[tuple[int, ...]], list[int], list[str]]:
    ids, labels, lines, problems = [], [], [], []
    first_line: dict[str, int] = {}
    for offset, (identifier, label_text) in enumerate(zip(frame[id_column], frame[label_column])):
        line = offset + 2  # line 1 is the header
        where = f"{csv_path} line {line}"
        identifier = identifier.strip()
        if not identifier:
            problems.append(f"{where}: empty {id_column} (expected an image name)")
            continue
        outside = outside_dataset(identifier, absolute_allowed=absolute_allowed)
        if outside:
            problems.append(f"{where} ({id_column} {identifier}): {outside}")
            continue
        same = os.path.normpath(identifier)  # ./0 and 0 name one file
        if same in first_line:
            problems.append(
                f"{where}: duplicate {id_column} {identifier!r}, first on line {first_line[same]} (each image once)"
            )
            continue
        first_line[same] = line
        if not label_text.strip():
            problems.append(f"{where} ({id_column} {identifier}): no labels (expected at least one class)")
            continue
        try:
            parsed = label_set.parse_labels(label_text)
        except ValueError as error:
            problems.append(f"{where} ({id_column} {identifier}): {error}")
            continue
        ids.append(identifier)
        labels.append(tuple(sorted(set(parsed))))
        lines.append(line)
    return ids, labels, lines, problems


def _ids_inside(column: pd.Series, csv_path: Path, id_column: str) -> list[str]:
    """The stripped ids of a submission CSV; a DataError for any that walks out of the dataset folder."""
    ids = [identifier.strip() for identifier in column]
    problems = [f"{csv_path} line {line} ({id_column} {identifier}): {outside}" for line, identifier in enumerate(ids, start=2)
                if (outside := outside_dataset(identifier))]
    if problems:
        raise DataError(*problems)
    return ids


def _table(ids, sources, labels, lines, label_set, layout, root, csv_path, labelled, channels=3) -> DatasetTable:
    frame = pd.DataFrame({"id": ids, "source": sources, "labels": labels, "line": lines})
    return DatasetTable(frame, label_set, layout, Path(root), csv_path, labelled, channels)


def _raise_or_collect(problems: list[str], collect: list[str] | None) -> None:
    """Row problems fail the read, unless the caller (check) collects them to report with the rest."""
    if collect is not None:
        collect.extend(problems)
    elif problems:
        raise DataError(*listed(problems))


def read_z2g(root: Path, split: str = "train", label_set: LabelSet = HPA10, collect: list[str] | None = None,
             channels: int = 3) -> DatasetTable:
    root = Path(root)
    if split == "test":
        return _read_z2g_test(root, label_set, channels)
    csv_path = root / "train.csv"
    frame = _read_csv(csv_path, LAYOUT_COLUMNS[Z2G], "Zero-to-GANs layout")
    ids, labels, lines, problems = _parse_rows(frame, csv_path, "Image", "Label", label_set)
    _raise_or_collect(problems, collect)
    folder = os.path.join(root, "train")
    sources = [os.path.join(folder, f"{identifier}.png") for identifier in ids]
    return _table(ids, sources, labels, lines, label_set, Z2G, root, csv_path, True, channels)


def _read_z2g_test(root: Path, label_set: LabelSet, channels: int) -> DatasetTable:
    submission = root / "submission.csv"
    if submission.is_file():
        frame = _read_csv(submission, LAYOUT_COLUMNS[Z2G], "Zero-to-GANs submission")
        ids = _ids_inside(frame["Image"], submission, "Image")
        folder = os.path.join(root, "test")
        sources = [os.path.join(folder, f"{identifier}.png") for identifier in ids]
        lines = list(range(2, len(ids) + 2))
        return _table(ids, sources, [()] * len(ids), lines, label_set, Z2G, root, submission, False, channels)
    table = read_folder(root / "test", label_set, channels)
    table.layout, table.root = Z2G, root
    return table


def read_hpa2018(
    root: Path, split: str = "train", label_set: LabelSet = HPA28, channels: int = 3, collect: list[str] | None = None
) -> DatasetTable:
    root = Path(root)
    if split == "test":
        csv_path = root / "sample_submission.csv"
        frame = _read_csv(csv_path, ("Id", "Predicted"), "HPA 2018 submission")
        ids = _ids_inside(frame["Id"], csv_path, "Id")
        sources = stain_set_sources(root / "test", ids, channels)
        lines = list(range(2, len(ids) + 2))
        return _table(ids, sources, [()] * len(ids), lines, label_set, HPA2018, root, csv_path, False, channels)
    csv_path = root / "train.csv"
    frame = _read_csv(csv_path, LAYOUT_COLUMNS[HPA2018], "HPA 2018 layout")
    ids, labels, lines, problems = _parse_rows(frame, csv_path, "Id", "Target", label_set)
    _raise_or_collect(problems, collect)
    sources = stain_set_sources(root / "train", ids, channels)
    return _table(ids, sources, labels, lines, label_set, HPA2018, root, csv_path, True, channels)


def read_generic(csv_path: Path, label_set: LabelSet = HPA10, collect: list[str] | None = None,
                 channels: int = 3) -> DatasetTable:
    csv_path = Path(csv_path)
    frame = _read_csv(csv_path, LAYOUT_COLUMNS[GENERIC], "generic layout: path relative to the CSV, labels")
    ids, labels, lines, problems = _parse_rows(frame, csv_path, "path", "labels", label_set, absolute_allowed=True)
    _raise_or_collect(problems, collect)
    sources = [str(csv_path.parent / path) for path in ids]
    names = [Path(path).stem for path in ids]
    if len(set(names)) == len(names):
        ids = names  # the file name is the id users expect in outputs; keep the path when names collide
    return _table(ids, sources, labels, lines, label_set, GENERIC, csv_path.parent, csv_path, True, channels)


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """The image files of `folder`, sorted; with `recursive`, of its subfolders too (a plate's well/field folders)."""
    found = Path(folder).rglob("*") if recursive else Path(folder).iterdir()
    return sorted(path for path in found if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())


def read_folder(folder: Path, label_set: LabelSet = HPA10, channels: int = 3, collect: list[str] | None = None, *,
                recursive: bool = False, gray_as: str | None = None) -> DatasetTable:
    """A folder of images (see read_images); with `recursive` its subfolders' too, each image's id its path
    relative to `folder` without the extension (`A01/field-1/cell`), so that a plate's images come out as one table."""
    folder = Path(folder)
    paths = list_images(folder, recursive)
    if not paths:
        deeper = " (its subfolders hold some: add --recursive)" if not recursive and list_images(folder, True) else ""
        raise DataError(f"{folder}: no images found (expected .png, .jpg, .tif, .czi, .nd2 or .lif files){deeper}")
    return read_images(paths, label_set, layout=FOLDER, root=folder, channels=channels, collect=collect,
                       gray_as=gray_as, relative_ids=recursive)


def read_images(paths: Sequence[Path], label_set: LabelSet = HPA10, layout: str = IMAGES, root: Path | None = None,
                channels: int = 3, collect: list[str] | None = None, *, gray_as: str | None = None,
                relative_ids: bool = False) -> DatasetTable:
    """Image files, one image each; stain files (<Id>_<stain>.<ext>) are grouped into one image per Id and folder
    (with `gray_as`, an Id of one file is read alone: stains.group_stain_files). `relative_ids`: ids are paths
    relative to `root`.

    Incomplete stain sets are problems, as is a mix of stain files and other images (which is which would be a
    guess): they fail the read, or are appended to `collect` and left out."""
    paths = [Path(path) for path in paths]
    mixed = describe_mixed_files(paths)
    if mixed:
        raise DataError(mixed)
    if any(split_stain_name(path) for path in paths):
        ids, sources, problems = group_stain_files(paths, channels, gray_as=gray_as)
        _raise_or_collect(problems, collect)
    else:
        ids, sources = [image_stem(path) for path in paths], [str(path) for path in paths]
    if relative_ids and root is not None:
        ids = [os.path.relpath(os.path.join(os.path.dirname(source if isinstance(source, str) else source[0]),
                                            identifier), root) for identifier, source in zip(ids, sources)]
    if len(set(ids)) != len(ids):
        ids = [str(source if isinstance(source, str) else source[0]) for source in sources]
    labels, lines = [()] * len(ids), [0] * len(ids)
    return _table(ids, sources, labels, lines, label_set, layout, root or Path("."), None, False, channels)


def _csv_header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return [column.strip() for column in next(csv.reader(handle), [])]
    except (OSError, UnicodeDecodeError):
        return []


def detect_layout(path: Path) -> str:
    """Tell the layout from what the path is; `--format` overrides when this guesses wrong."""
    path = Path(path)
    if not path.exists():
        raise ProtlocError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() == ".csv":
            header = _csv_header(path)
            for layout in (Z2G, HPA2018):
                if all(column in header for column in LAYOUT_COLUMNS[layout]):
                    return layout
            return GENERIC
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return IMAGES
        raise ProtlocError(f"{path}: not a dataset (expected a folder, a .csv file or an image file)")
    train_csv = path / "train.csv"
    if train_csv.is_file():
        header = _csv_header(train_csv)
        if all(column in header for column in LAYOUT_COLUMNS[HPA2018]):
            return HPA2018
        return Z2G
    if (path / "sample_submission.csv").is_file():
        return HPA2018
    if (path / "test").is_dir() and not list_images(path):
        return Z2G
    return FOLDER


def default_label_set(layout: str) -> LabelSet:
    return HPA28 if layout == HPA2018 else HPA10


def read_dataset(
    path: str | Path,
    *,
    layout: str | None = None,
    split: str = "train",
    label_set: LabelSet | None = None,
    channels: int = 3,
    collect: list[str] | None = None,
    recursive: bool = False,
    gray_as: str | None = None,
) -> DatasetTable:
    """Read any supported dataset into a DatasetTable. Image files are not opened here (see check).

    Row problems (bad labels, duplicate ids) raise a DataError listing all of them, or, when `collect`
    is a list, are appended to it and the good rows are returned. `recursive` and `gray_as`: see read_folder
    and read_images (a folder of images, or image files)."""
    path = Path(path)
    layout = layout or detect_layout(path)
    if layout not in LAYOUTS:
        raise ProtlocError(f"unknown format {layout!r} (expected one of {', '.join(LAYOUTS)})")
    label_set = label_set or default_label_set(layout)
    if layout == Z2G:
        return read_z2g(path.parent if path.is_file() else path, split, label_set, collect, channels)
    if layout == HPA2018:
        return read_hpa2018(path.parent if path.is_file() else path, split, label_set, channels, collect)
    if layout == GENERIC:
        return read_generic(path, label_set, collect, channels)
    if layout == FOLDER:
        return read_folder(path, label_set, channels, collect, recursive=recursive, gray_as=gray_as)
    return read_images([path], label_set, channels=channels, collect=collect, gray_as=gray_as)


def read_inputs(inputs: Sequence[str | Path], *, layout: str | None = None, split: str = "test",
                label_set: LabelSet | None = None, channels: int = 3, recursive: bool = False,
                gray_as: str | None = None) -> DatasetTable:
    """What `predict` takes: one dataset (folder or CSV), a folder of images (`recursive`: and its subfolders), or
    several image files; `gray_as` (--gray-as) reads a lone stain file as one grayscale image (read_images)."""
    inputs = [Path(item) for item in inputs]
    if len(inputs) == 1 and not (inputs[0].is_file() and inputs[0].suffix.lower() in IMAGE_SUFFIXES):
        return read_dataset(inputs[0], layout=layout, split=split, label_set=label_set, channels=channels,
                            recursive=recursive, gray_as=gray_as)
    missing = [str(item) for item in inputs if not item.is_file()]
    if missing:
        raise DataError(*(f"{item}: no such image file" for item in missing))
    return read_images(inputs, label_set or HPA10, channels=channels, gray_as=gray_as)
