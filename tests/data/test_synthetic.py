"""The synthetic HPA-like dataset: determinism, layout, label statistics and localisation patterns."""
from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from protloc.data.synthetic import (
    MASK_MASS_SHARE,
    PATTERNS,
    pattern,
    pattern_mask,
    render_field_with_masks,
    render_image,
    render_image_with_masks,
    sample_label_sets,
    write_demo_dataset,
)
from protloc.errors import ProtlocError
from protloc.labels import HPA10_NAMES

CLASS_SHARES = [0.108, 0.091, 0.132, 0.103, 0.469, 0.057, 0.299, 0.137, 0.054, 0.068]


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn-a")
    write_demo_dataset(root, n_train=10, n_test=5, size=64, seed=3, show_progress=False, workers=2)
    return root


def test_same_seed_gives_identical_bytes_and_workers_do_not_matter(small_set, tmp_path):
    again = tmp_path / "again"
    write_demo_dataset(again, n_train=10, n_test=5, size=64, seed=3, show_progress=False, workers=1)
    a, b = _all_files(small_set), _all_files(again)
    assert sorted(a) == sorted(b)
    assert len(a) == 10 + 5 + 3  # images, train.csv, submission.csv, demo-data.json
    for name in a:
        assert a[name] == b[name], name


def test_different_seed_gives_different_images(small_set, tmp_path):
    other = tmp_path / "other"
    write_demo_dataset(other, n_train=10, n_test=5, size=64, seed=4, show_progress=False, workers=1)
    a = {k: v for k, v in _all_files(small_set).items() if k.endswith(".png")}
    b = {k: v for k, v in _all_files(other).items() if k.endswith(".png")}
    assert sorted(a.values()) != sorted(b.values())
    assert not set(a.values()) & set(b.values())


def test_layout(small_set):
    train = _read_csv(small_set / "train.csv")
    assert train[0] == ["Image", "Label"]
    rows = train[1:]
    assert len(rows) == 10
    ids = [int(r[0]) for r in rows]
    assert len(set(ids)) == 10
    for _, label in rows:
        classes = [int(x) for x in label.split(" ")]
        assert classes == sorted(set(classes)) and classes
        assert all(0 <= c <= 9 for c in classes)
    assert sorted(p.name for p in (small_set / "train").iterdir()) == sorted(f"{i}.png" for i in ids)

    sub = _read_csv(small_set / "submission.csv")
    assert sub[0] == ["Image", "Label"]
    test_ids = [int(r[0]) for r in sub[1:]]
    assert all(r[1] == "0" for r in sub[1:])
    assert len(test_ids) == 5 and not set(test_ids) & set(ids)
    assert sorted(p.name for p in (small_set / "test").iterdir()) == sorted(f"{i}.png" for i in test_ids)
    # demo-data.json marks the dataset as generated: a model trained on it records its kind "demo".
    assert sorted(p.name for p in small_set.iterdir()) == ["demo-data.json", "submission.csv", "test", "train", "train.csv"]
    assert json.loads((small_set / "demo-data.json").read_text())["generator"] == "protloc demo-data"

    for path in list((small_set / "train").iterdir()) + list((small_set / "test").iterdir()):
        with Image.open(path) as im:
            assert im.mode == "RGB" and im.size == (64, 64)
            arr = np.asarray(im)
        assert arr.dtype == np.uint8 and arr.shape == (64, 64, 3)
        assert arr.max() > 60  # not blank


def test_no_test_images(tmp_path):
    write_demo_dataset(tmp_path, n_train=1, n_test=0, size=32, show_progress=True, workers=1)
    assert _read_csv(tmp_path / "submission.csv") == [["Image", "Label"]]
    assert len(_read_csv(tmp_path / "train.csv")) == 2
    assert list((tmp_path / "test").iterdir()) == []


def test_interrupted_write_leaves_no_partial_files(tmp_path, monkeypatch):
    calls = []
    real_save = Image.Image.save

    def flaky_save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 3:
            with open(fp, "wb") as fh:
                fh.write(b"\x89PNG half")
            raise KeyboardInterrupt
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", flaky_save)
    with pytest.raises(KeyboardInterrupt):
        write_demo_dataset(tmp_path, n_train=4, n_test=2, size=32, show_progress=False, workers=1)
    left = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert len(left) == 2 and all(name.endswith(".png") and not name.startswith(".") for name in left)
    for path in tmp_path.rglob("*.png"):
        with Image.open(path) as im:
            im.load()
    assert not (tmp_path / "train.csv").exists()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n_train=0, n_test=1),
        dict(n_train=2, n_test=-1),
        dict(n_train=2, n_test=1, size=31),
        dict(n_train=2, n_test=1, seed=-1),
        dict(n_train=2, n_test=1, workers=0),
        dict(n_train=2.5, n_test=1),
        dict(n_train=True, n_test=1),
        dict(n_train="3", n_test=1),
    ],
)
def test_bad_arguments(tmp_path, kwargs):
    kwargs.setdefault("size", 32)
    with pytest.raises(ProtlocError):
        write_demo_dataset(tmp_path / "x", show_progress=False, **kwargs)
    assert not (tmp_path / "x" / "train.csv").exists()


def test_label_statistics():
    sets = sample_label_sets(20000, np.random.default_rng(123))
    assert all(s and list(s) == sorted(set(s)) and all(0 <= c <= 9 for c in s) for s in sets)
    counts = np.zeros(10)
    for s in sets:
        counts[list(s)] += 1
    shares = counts / len(sets)
    assert np.all(np.abs(shares - CLASS_SHARES) < 0.02), shares.round(3)
    assert abs(np.mean([len(s) for s in sets]) - 1.52) < 0.1
    sizes = Counter(len(s) for s in sets)
    assert abs(sizes[1] / len(sets) - 0.553) < 0.02
    assert abs(sizes[2] / len(sets) - 0.379) < 0.02
    common = Counter(sets)
    assert abs(common[(4,)] / len(sets) - 0.143) < 0.015
    assert abs(common[(4, 6)] / len(sets) - 0.090) < 0.015
    assert common.most_common(1)[0][0] == (4,)
    # Deterministic for a given generator state.
    assert sample_label_sets(50, np.random.default_rng(5)) == sample_label_sets(50, np.random.default_rng(5))


def test_render_image_shape_and_determinism():
    a = render_image((2, 4), 80, np.random.default_rng(9))
    b = render_image((2, 4), 80, np.random.default_rng(9))
    assert a.shape == (80, 80, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, render_image((2, 4), 80, np.random.default_rng(10)))
    with pytest.raises(ProtlocError):
        render_image((10,), 64, np.random.default_rng(0))


def _green_fraction(img: np.ndarray, masks: dict, region: np.ndarray) -> float:
    """Share of the green signal above the background level that falls in region."""
    g = img[..., 1].astype(np.float64)
    outside = masks["cells"] < 0
    bg = np.median(g[outside]) if outside.any() else 0.0
    g = np.clip(g - bg, 0, None)
    return float((g * region).sum() / max(g.sum(), 1e-9))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_patterns_lie_in_their_compartments(seed):
    size = 96
    rendered = {lab: render_image_with_masks((lab,), size, np.random.default_rng(seed)) for lab in (2, 4, 6, 7)}
    masks = rendered[4][1]
    # The same generator state gives the same field of cells whatever the labels.
    for lab in (2, 6, 7):
        for name in masks:
            assert np.array_equal(rendered[lab][1][name], masks[name])
    assert masks["nucleus"].any() and masks["cytoplasm"].any()
    assert not (masks["nucleus"] & masks["cytoplasm"]).any()
    assert not (masks["nucleoli"] & ~masks["nucleus"]).any()
    band = ndimage.binary_dilation(masks["rim"], iterations=2)
    nucleoli = ndimage.binary_dilation(masks["nucleoli"], iterations=1)

    def frac(lab, region):
        return _green_fraction(rendered[lab][0], masks, region)

    # Nucleoplasm: mostly in the nuclei; cytosol: mostly outside them.
    assert frac(4, masks["nucleus"]) > 0.6
    assert frac(6, masks["cytoplasm"]) > 0.8
    assert frac(6, masks["nucleus"]) < 0.15
    # Plasma membrane: at the cell rims, much more than cytosol is.
    assert frac(7, band) > 0.5
    assert frac(7, band) > 2 * frac(6, band)
    # Nucleoli: in the nucleoli, which nucleoplasm spares.
    assert frac(2, nucleoli) > 0.15
    assert frac(2, nucleoli) > 5 * frac(4, nucleoli)
    # The blue channel is the nuclei, the red one the cytoplasm.
    img = rendered[4][0].astype(np.float64)
    assert img[..., 2][masks["nucleus"]].mean() > 3 * img[..., 2][masks["cytoplasm"]].mean()
    assert img[..., 0][masks["cytoplasm"]].mean() > 2 * img[..., 0][masks["nucleus"]].mean()


def test_labels_add_up():
    size = 96
    one, m = render_image_with_masks((4,), size, np.random.default_rng(7))
    both, _ = render_image_with_masks((4, 6), size, np.random.default_rng(7))
    cyto = m["cytoplasm"] & ~ndimage.binary_dilation(m["nucleus"], iterations=3)
    # Adding cytosol brightens the green of the cytoplasm.
    assert both[..., 1][cyto].mean() > 2 * one[..., 1][cyto].mean() + 5


def test_the_pixels_have_not_changed():
    # Every dataset's bytes rest on the order of the generator's draws: a change here changes every
    # demo dataset, benchmark and tuned test threshold, so it must be deliberate. (The hash is of the
    # raw pixels, not of PNG files, so a zlib upgrade cannot move it.)
    digest = hashlib.sha256()
    for labels in [(c,) for c in range(10)] + [tuple(range(10))]:
        digest.update(render_image(labels, 48, np.random.default_rng(11)).tobytes())
    assert digest.hexdigest() == "412ebe196845c2c7681047061ebecd21faac96ed258f78343386b388efd9f9c7"


def test_every_hpa10_class_has_exactly_one_pattern():
    assert sorted(PATTERNS) == sorted(HPA10_NAMES)
    assert len(set(PATTERNS.values())) == len(HPA10_NAMES)
    with pytest.raises(ValueError, match="not an hpa10 class"):
        pattern("Microtubules")


def _compartments(masks: dict) -> dict[str, np.ndarray]:
    """Where each class's pattern belongs, a little generous at the edges that blur crosses."""
    nucleus, nucleoli = masks["nucleus"], masks["nucleoli"]
    perinuclear = ndimage.binary_dilation(nucleus, iterations=8) & ~nucleus

    def grown(mask, by):
        return ndimage.binary_dilation(mask, iterations=by)

    return {
        "Mitochondria": grown(masks["cytoplasm"], 1),
        "Nuclear bodies": grown(nucleus, 1),
        "Nucleoli": grown(nucleoli, 1),
        "Golgi apparatus": perinuclear,
        "Nucleoplasm": nucleus & ~nucleoli,
        "Nucleoli fibrillar center": grown(nucleoli, 1),
        "Cytosol": masks["cytoplasm"],
        "Plasma membrane": grown(masks["rim"], 2),
        "Centrosome": perinuclear,
        "Nuclear speckles": nucleus,
    }


# The least share of a class's mask in its compartment (the rim band is narrow next to the blur).
_MIN_IN_COMPARTMENT = {"Golgi apparatus": 0.8, "Centrosome": 0.75, "Plasma membrane": 0.6}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_pattern_lies_in_its_compartment_and_its_mask_is_where_the_green_is(seed):
    size = 96
    # The same generator state gives the same field of cells whatever the labels.
    field_masks = render_image_with_masks((0,), size, np.random.default_rng(seed))[1]
    compartments = _compartments(field_masks)
    cells = field_masks["cells"] >= 0
    for c, name in enumerate(HPA10_NAMES):
        img, class_masks = render_field_with_masks((c,), size, np.random.default_rng(seed))
        assert list(class_masks) == [name]
        mask = class_masks[name]
        assert mask.dtype == bool and mask.shape == (size, size) and mask.any(), name
        inside = (mask & compartments[name]).sum() / mask.sum()
        assert inside >= _MIN_IN_COMPARTMENT.get(name, 0.9), (name, inside)
        green = img[..., 1].astype(np.float64)
        # 2.2: the imaging puts a grainy haze and an uneven background over every cell, as in real HPA images.
        assert green[mask].mean() > 2.2 * green[cells & ~mask].mean(), name


def test_field_masks_leave_the_image_as_it_was():
    labels = (0, 3, 6, 9)
    img, class_masks = render_field_with_masks(labels, 64, np.random.default_rng(4))
    assert np.array_equal(img, render_image(labels, 64, np.random.default_rng(4)))
    assert list(class_masks) == [HPA10_NAMES[c] for c in labels]
    # Cytosol is diffuse, the Golgi compact.
    assert class_masks["Cytosol"].sum() > 3 * class_masks["Golgi apparatus"].sum()


def test_pattern_mask_holds_its_share_of_the_mass():
    pat = np.array([[4.0, 3.0], [2.0, 1.0]], dtype=np.float32)
    assert pattern_mask(pat, 0.5).tolist() == [[True, True], [False, False]]
    assert pattern_mask(pat, 0.75).tolist() == [[True, True], [True, False]]
    assert pattern_mask(pat).sum() == 3  # 80% of 10 needs 4 + 3 + 2
    assert MASK_MASS_SHARE == 0.8
    assert not pattern_mask(np.zeros((3, 3), dtype=np.float32)).any()


def test_image_green_follows_each_label():
    size = 96
    rendered = {c: render_image_with_masks((c,), size, np.random.default_rng(5)) for c in (0, 1, 3, 6, 9)}
    masks = rendered[0][1]
    perinuclear = ndimage.binary_dilation(masks["nucleus"], iterations=6) & ~masks["nucleus"]

    def frac(c, region):
        return _green_fraction(rendered[c][0], masks, region)

    # Mitochondria: in the cytoplasm, not the nucleus.
    assert frac(0, ndimage.binary_dilation(masks["cytoplasm"], iterations=1)) > 0.75
    assert frac(0, masks["nucleus"]) < 0.2
    # Golgi apparatus: next to the nucleus, more than the cytosol there (a share under half of the signal: the
    # imaging adds a grainy haze and an uneven background over every cell, as real HPA images have).
    assert frac(3, perinuclear) > 0.3 and frac(3, perinuclear) > 1.5 * frac(3, masks["nucleus"])
    assert frac(3, perinuclear) > frac(6, perinuclear)
    # Nuclear speckles and bodies: in the nucleus, far more than cytosol.
    assert frac(9, masks["nucleus"]) > 0.45
    assert frac(1, masks["nucleus"]) > 4 * frac(6, masks["nucleus"])
    assert frac(9, masks["nucleus"]) > 4 * frac(6, masks["nucleus"])


# ---------------------------------------------------------------- per-cell truth (--cells)


@pytest.fixture(scope="module")
def cells_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn-cells")
    write_demo_dataset(root, n_train=24, n_test=2, size=128, seed=5, show_progress=False, workers=2, cells=True)
    return root


def _cell_rows(root: Path) -> dict[int, list[set[int]]]:
    rows = _read_csv(root / "cells.csv")
    assert rows[0] == ["Image", "Cell", "Label"]
    by_image: dict[int, list[set[int]]] = {}
    for image, cell, label in rows[1:]:
        cells = by_image.setdefault(int(image), [])
        assert int(cell) == len(cells) + 1  # cells numbered 1..K in order
        cells.append({int(c) for c in label.split()})
    return by_image


def test_cells_are_deterministic_per_seed(cells_set, tmp_path):
    write_demo_dataset(tmp_path, n_train=24, n_test=2, size=128, seed=5, show_progress=False, workers=1, cells=True)
    assert _all_files(cells_set) == _all_files(tmp_path)
    assert len(list((cells_set / "cells").iterdir())) == 26  # a mask for the test images too


def test_cell_masks_match_cells_csv_and_image_labels_are_the_union(cells_set):
    by_image = _cell_rows(cells_set)
    train = {int(i): {int(c) for c in label.split()} for i, label in _read_csv(cells_set / "train.csv")[1:]}
    assert sorted(by_image) == sorted(train)
    for image, cells in by_image.items():
        mask = np.asarray(Image.open(cells_set / "cells" / f"{image}.png"))
        assert mask.dtype == np.uint16 and mask.shape == (128, 128)
        assert sorted(np.unique(mask[mask > 0])) == list(range(1, len(cells) + 1))
        assert set().union(*cells) == train[image]


def test_cells_differ_at_the_documented_rates(cells_set):
    by_image = _cell_rows(cells_set)
    train = {int(i): {int(c) for c in label.split()} for i, label in _read_csv(cells_set / "train.csv")[1:]}
    pairs = [(label in cell) for image, cells in by_image.items() for cell in cells for label in train[image]]
    absent = 1 - np.mean(pairs)
    assert 0.3 <= absent <= 0.6  # each pair shown with probability 0.55, a few more given to a cell
    negative = np.mean([not cell for cells in by_image.values() for cell in cells])
    assert negative > 0.15


def test_a_cell_that_shows_no_label_has_no_pattern_green(cells_set):
    by_image = _cell_rows(cells_set)
    shown, dark = [], []
    for image, cells in by_image.items():
        mask = np.asarray(Image.open(cells_set / "cells" / f"{image}.png"))
        green = np.asarray(Image.open(cells_set / "train" / f"{image}.png"))[..., 1].astype(float)
        for number, labels in enumerate(cells, 1):
            (shown if labels else dark).append(green[mask == number].mean())
    assert np.median(dark) < 0.5 * np.median(shown)


def test_cells_leave_a_dataset_without_them_as_it_was(small_set, tmp_path):
    write_demo_dataset(tmp_path, n_train=10, n_test=5, size=64, seed=3, show_progress=False, workers=1, cells=True)
    assert _read_csv(tmp_path / "train.csv") == _read_csv(small_set / "train.csv")
    assert not (small_set / "cells.csv").exists()
