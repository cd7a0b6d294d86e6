"""Writing a synthetic dataset in the Kaggle "Zero to GANs" layout, in parallel and reproducibly."""
from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
from PIL import Image

from protloc.data.synthetic.label_sets import sample_label_sets
from protloc.data.synthetic.render import render_image, render_image_with_cells
from protloc.data.workers import all_cores
from protloc.errors import ProtlocError
from protloc.files import TEMP_SUFFIX, atomic_path

# path, image id, index, labels, size, seed, and the per-cell mask's path (None: every cell shows every label)
RenderJob = tuple[str, int, int, tuple[int, ...], int, int, str | None]
CELLS_DIR = "cells"
CELLS_CSV = "cells.csv"


def write_demo_dataset(
    out_dir,
    *,
    n_train: int,
    n_test: int,
    size: int = 256,
    seed: int = 0,
    show_progress: bool = True,
    workers: int | None = None,
    cells: bool = False,
) -> None:
    """Write a synthetic dataset in the Kaggle "Zero to GANs" layout under ``out_dir``.

    ``train.csv`` (``Image,Label``), ``train/<Image>.png``, ``test/<Image>.png`` and
    ``submission.csv`` (``Image,Label`` with a placeholder label ``0``). Image ids are a
    seeded shuffle of ``0..n_train+n_test-1``; the CSVs list them in increasing order. The
    same seed gives byte-identical files whatever ``workers`` is. Existing files of the same
    names are replaced; other files in ``out_dir`` are left alone.

    With ``cells``, cells differ (each shows each of its image's labels or not; see cells.py) and the truth is
    written too: ``cells/<Image>.png`` for every image (uint16 instance mask: 0 background, cell k = k) and
    ``cells.csv`` (``Image,Cell,Label``, the train images' cells; Label empty for a cell that shows none).
    """
    n_train = _check_int("n_train", n_train, 1)
    n_test = _check_int("n_test", n_test, 0)
    size = _check_int("size", size, 32)
    seed = _check_int("seed", seed, 0)
    if workers is None:
        workers = all_cores()
    workers = _check_int("workers", workers, 1)
    if size > 4096:
        raise ProtlocError(f"size must be at most 4096, got {size}")

    out = Path(out_dir)
    train_dir, test_dir = _make_folders(out)
    cells_dir = _make_cells_folder(out) if cells else None
    label_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    total = n_train + n_test
    label_sets = sample_label_sets(total, label_rng)
    ids = label_rng.permutation(total)

    jobs = []
    for index in range(total):
        folder = train_dir if index < n_train else test_dir
        image_id = int(ids[index])
        mask_path = None if cells_dir is None else str(cells_dir / f"{image_id}.png")
        jobs.append((str(folder / f"{image_id}.png"), image_id, index, label_sets[index], size, seed, mask_path))
    folders = (train_dir, test_dir) if cells_dir is None else (train_dir, test_dir, cells_dir)
    cell_labels = _render_all(jobs, workers, show_progress, folders)
    if cells_dir is not None:
        train_ids = sorted(int(ids[i]) for i in range(n_train))
        _write_text(out / CELLS_CSV, "Image,Cell,Label\n" + "".join(
            f"{i},{k},{' '.join(map(str, shows))}\n" for i in train_ids for k, shows in enumerate(cell_labels[i], 1)))

    train_rows = sorted((int(ids[i]), label_sets[i]) for i in range(n_train))
    test_ids = sorted(int(ids[i]) for i in range(n_train, total))
    _write_text(
        out / "train.csv",
        "Image,Label\n" + "".join(f"{i},{' '.join(map(str, ls))}\n" for i, ls in train_rows),
    )
    _write_text(out / "submission.csv", "Image,Label\n" + "".join(f"{i},0\n" for i in test_ids))
    _write_demo_marker(out, n_train=n_train, n_test=n_test, size=size, seed=seed)


def _write_demo_marker(out: Path, **settings) -> None:
    """DEMO_MARKER: says that the dataset is generated, so that a model trained on it records so (its kind "demo")."""
    import json

    from protloc.data import DEMO_MARKER

    record = {"generator": "protloc demo-data", **settings}
    _write_text(out / DEMO_MARKER, json.dumps(record, indent=2) + "\n")


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ProtlocError(f"{name} must be a whole number, got {value!r}")
    if value < minimum:
        raise ProtlocError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def _make_folders(out: Path) -> tuple[Path, Path]:
    if out.exists() and not out.is_dir():
        raise ProtlocError(f"{out} exists and is not a folder")
    train_dir, test_dir = out / "train", out / "test"
    try:
        train_dir.mkdir(parents=True, exist_ok=True)
        test_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProtlocError(f"cannot create {out}: {exc.strerror or exc}") from None
    return train_dir, test_dir


def _make_cells_folder(out: Path) -> Path:
    folder = out / CELLS_DIR
    try:
        folder.mkdir(exist_ok=True)
    except OSError as exc:
        raise ProtlocError(f"cannot create {folder}: {exc.strerror or exc}") from None
    return folder


def _render_all(jobs: list[RenderJob], workers: int, show_progress: bool,
                folders: tuple[Path, ...]) -> dict[int, list[tuple[int, ...]]]:
    """Render and write every job's image, in worker processes when there are several; the labels of each image's
    cells by image id (empty lists without per-cell truth)."""
    total = len(jobs)
    cell_labels: dict[int, list[tuple[int, ...]]] = {}
    pool = None
    progress = None
    try:
        if workers > 1 and total > 1:
            # Workers only need numpy, scipy and PIL: fork where the platform has it (quick to
            # start, and no re-import of the caller's __main__). The pool is made before the
            # progress bar, whose monitor thread a fork should not copy.
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
            pool = ctx.Pool(min(workers, total))
        if show_progress:
            from protloc.progress import progress_bar

            progress = progress_bar(total=total, desc="synthetic images", unit="img")
        if pool is None:
            results = map(_render_job, jobs)
        else:
            # Small chunks keep the workers evenly loaded and the progress bar moving.
            chunk = max(1, min(16, total // (workers * 8)))
            results = pool.imap_unordered(_render_job, jobs, chunksize=chunk)
        for image_id, labels_of_cells in results:
            cell_labels[image_id] = labels_of_cells
            if progress is not None:
                progress.update(1)
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        if pool is not None:
            pool.terminate()
        if progress is not None:
            progress.close()
        _remove_leftovers(folders)
    return cell_labels


def _remove_leftovers(folders: tuple[Path, ...]) -> None:
    """Temporary files of writes in workers that terminate() stopped before they could clean up."""
    for folder in folders:
        for tmp in folder.glob(".*" + TEMP_SUFFIX):
            try:
                tmp.unlink()
            except OSError:
                pass


def _image_seed(seed: int, index: int) -> np.random.SeedSequence:
    # The index-th child of SeedSequence(seed).spawn(2)[1], built directly.
    return np.random.SeedSequence(seed, spawn_key=(1, index))


def _render_job(job: RenderJob) -> tuple[int, list[tuple[int, ...]]]:
    path, image_id, index, labels, size, seed, mask_path = job
    rng = np.random.default_rng(_image_seed(seed, index))
    if mask_path is None:
        _write_png(Path(path), render_image(labels, size, rng))
        return image_id, []
    # A stream of its own for the per-cell draws: the image's other draws stay those of its index.
    cell_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2, index)))
    image, truth = render_image_with_cells(labels, size, rng, cell_rng)
    _write_png(Path(path), image)
    _write_png(Path(mask_path), truth.mask)
    return image_id, truth.cell_labels


def _write_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as temp:
        # Fixed settings and no metadata: the bytes depend on the pixels only. A 2-D array is a uint16 mask.
        image = Image.fromarray(array, mode="RGB") if array.ndim == 3 else Image.fromarray(array.astype(np.uint16))
        image.save(temp, format="PNG", compress_level=6, optimize=False)


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as temp:
        # "\n" line ends on every platform, so that the same seed gives the same bytes.
        temp.write_text(text, encoding="utf-8", newline="\n")
