"""`protloc embed`: one Parquet row of pooled backbone features per image, and a map beside it."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from protloc.cli import main
from protloc.labels import HPA10_NAMES


@pytest.fixture(scope="module")
def run_dir(untrained_run):
    return untrained_run(image_size=64)


def test_one_row_per_image_with_features_and_labels(run_dir, demo_data, tmp_path):
    import protloc

    out = tmp_path / "features.parquet"
    # fp32: the comparison below is exact to 1e-4, which bf16 (auto on CPUs that have it natively) is not.
    assert main(["embed", str(run_dir), str(demo_data), "--out", str(out), "--method", "pca", "--workers", "0",
                 "--precision", "fp32"]) == 0
    table = pd.read_parquet(out)
    train = pd.read_csv(demo_data / "train.csv", dtype=str)
    predictor = protloc.load(run_dir, precision="fp32")
    model = predictor.model
    features = model.backbone.num_features
    assert len(table) == len(train)
    assert list(table.columns) == ["id", *(f"f{i}" for i in range(features)), "labels"]
    assert all(table[f"f{i}"].dtype == np.float32 for i in (0, features - 1))
    assert table["id"].tolist() == train["Image"].tolist()
    expected = [sorted(HPA10_NAMES[int(t)] for t in text.split()) for text in train["Label"]]
    assert [sorted(labels) for labels in table["labels"]] == expected
    # The row is the model's pooled feature vector (model.embed) of that image.
    image = predictor.prepare(demo_data / "train" / f"{train['Image'][0]}.png")[None]
    with torch.no_grad():  # channels-last only for speed: this CPU's default-layout path is slow
        first = model.embed(image.contiguous(memory_format=torch.channels_last))[0]
    np.testing.assert_allclose(table.iloc[0, 1:features + 1].to_numpy(np.float32), first.numpy(), rtol=1e-3, atol=1e-4)
    assert (tmp_path / "features_map.png").stat().st_size > 1000


def test_unlabelled_folder_has_no_labels_column(run_dir, demo_data, tmp_path):
    out = tmp_path / "test.parquet"
    assert main(["embed", str(run_dir), str(demo_data / "test"), "--out", str(out), "--method", "pca", "--workers", "0"]) == 0
    table = pd.read_parquet(out)
    assert len(table) == len(list((demo_data / "test").glob("*.png")))
    assert "labels" not in table.columns
    assert (tmp_path / "test_map.png").is_file()


def test_umap_is_the_default_map_and_is_seeded(run_dir, demo_data, tmp_path, capsys):
    from protloc.reports.embed import project_2d

    out = tmp_path / "test.parquet"
    # The one test that runs UMAP: its first call compiles with numba (5-15 s).
    assert main(["embed", str(run_dir), str(demo_data / "test"), "--out", str(out), "--workers", "0"]) == 0
    assert "a UMAP map to" in capsys.readouterr().out
    assert (tmp_path / "test_map.png").stat().st_size > 1000
    features = pd.read_parquet(out).iloc[:, 1:].to_numpy()
    first, axis = project_2d(features, "umap", seed=3)
    assert axis == "UMAP" and first.shape == (len(features), 2) and np.isfinite(first).all()
    np.testing.assert_array_equal(project_2d(features, "umap", seed=3)[0], first)
    # Three images: too few for UMAP's spectral start, so a seeded random one.
    assert project_2d(features[:3], "umap", seed=3)[0].shape == (3, 2)


def test_umaps_neighbours_are_the_exact_ones_each_point_first_at_distance_0():
    from protloc.reports.embed import UMAP_EXACT_BELOW, exact_neighbours

    features = np.random.default_rng(1).normal(size=(40, 32)).astype(np.float32)
    features[7] = features[3]  # a duplicate image: its twin is a neighbour at distance 0, itself still first
    indices, distances = exact_neighbours(features, 6)
    full = np.linalg.norm(features[:, None].astype(np.float64) - features[None], axis=-1)
    np.fill_diagonal(full, -1)  # itself first, then the rest by distance
    expected = np.argsort(full, axis=1, kind="stable")[:, :6]
    assert indices.shape == distances.shape == (40, 6) and distances.dtype == np.float32
    assert (indices[:, 0] == np.arange(40)).all() and (distances[:, 0] == 0).all()
    assert {*indices[3, 1:2], *indices[7, 1:2]} == {3, 7} and distances[3, 1] < 1e-3
    assert (np.sort(indices[:, 1:], axis=1) == np.sort(expected[:, 1:], axis=1)).all()
    np.testing.assert_allclose(distances[:, 1:], np.sort(full, axis=1)[:, 1:6], rtol=1e-5, atol=1e-3)
    # From UMAP's own switch to approximate neighbours on, UMAP searches itself.
    assert exact_neighbours(np.zeros((UMAP_EXACT_BELOW, 2), np.float32), 6) == (None, None, None)


def test_map_panels_show_each_class(demo_data):
    from protloc.data.readers import read_dataset
    from protloc.reports.embed import plot_embedding_map

    table = read_dataset(demo_data)
    coords = np.random.default_rng(0).normal(size=(len(table), 2))
    figure = plot_embedding_map(coords, table.targets, list(HPA10_NAMES), "map")
    titles = [ax.get_title().replace("\n", " ") for ax in figure.axes if ax.get_title()]
    counts = table.targets.sum(axis=0).astype(int)
    assert titles == [f"{name} (n={n})" for name, n in zip(HPA10_NAMES, counts)]
    # Each panel highlights exactly the images carrying its class, over all images in grey.
    panels = figure.axes[:len(HPA10_NAMES)]
    assert [len(ax.collections[0].get_offsets()) for ax in panels] == [len(table)] * len(HPA10_NAMES)
    assert [len(ax.collections[1].get_offsets()) for ax in panels] == counts.tolist()
    plt.close(figure)


@pytest.mark.skipif(__import__("importlib").util.find_spec("umap") is not None, reason="umap-learn is installed")
def test_umap_without_umap_learn_exits_2(run_dir, demo_data, tmp_path, capsys):
    assert main(["embed", str(run_dir), str(demo_data), "--out", str(tmp_path / "f.parquet"), "--method", "umap"]) == 2
    assert "umap-learn" in capsys.readouterr().err
    assert not (tmp_path / "f.parquet").exists()


def test_missing_run_folder_exits_2(demo_data, tmp_path, capsys):
    assert main(["embed", str(tmp_path / "nope"), str(demo_data), "--out", str(tmp_path / "f.parquet")]) == 2
    assert "no such run folder" in capsys.readouterr().err
