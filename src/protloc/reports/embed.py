"""Image embeddings: the backbone's pooled features per image, as a Parquet table and a 2-D map.

The map is drawn as small multiples, one panel per class with that class's images highlighted over the
grey cloud of all images. Colouring each point by a single label would hide that most images carry two
or three classes and would need ten or more distinguishable colours; small multiples show every label
of every image and keep each panel readable.
"""
from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import numpy as np

from protloc.errors import ProtlocError
from protloc.files import atomic_path, save_figure
from protloc.plots import subplots

METHODS = ("umap", "pca")
MAP_COLUMNS = 5
MIN_IMAGES_FOR_MAP = 3
UMAP_EXACT_BELOW = 4096  # umap-learn's own switch from exact to approximate neighbours
HIGHLIGHT = "#d62728"  # one colour in every panel: the panel title already says which class it is


def resolve_method(method: str) -> str:
    """The method, checked before the slow part: UMAP needs umap-learn (a dependency, but it may be missing
    from an environment assembled by hand)."""
    if method not in METHODS:
        raise ProtlocError(f"map method {method!r}: expected one of {', '.join(METHODS)}")
    if method == "umap" and importlib.util.find_spec("umap") is None:
        raise ProtlocError("--method umap needs the package umap-learn (pip install umap-learn), or use --method pca")
    return method


def project_2d(features: np.ndarray, method: str, seed: int = 0) -> tuple[np.ndarray, str]:
    """(N, F) features -> (N, 2) map coordinates and the axis label prefix. UMAP with a fixed random_state
    runs single-threaded and gives the same map every time."""
    if method == "umap":
        import warnings

        import umap

        neighbours = max(2, min(15, len(features) - 1))
        # The spectral start needs more points than dimensions + 1; below that, a random start (seeded too).
        start = "spectral" if len(features) > 3 else "random"
        reducer = umap.UMAP(n_components=2, n_neighbors=neighbours, init=start, random_state=seed,
                            precomputed_knn=exact_neighbours(features, neighbours))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="n_jobs value .* overridden")  # the price of random_state
            warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]")  # transform(): not used here
            return reducer.fit_transform(features), "UMAP"
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, random_state=seed)
    coords = pca.fit_transform(features.astype(np.float64))
    explained = pca.explained_variance_ratio_
    return coords, f"PCA ({explained[0]:.0%} / {explained[1]:.0%} of variance)"


def exact_neighbours(features: np.ndarray, neighbours: int) -> tuple:
    """Below UMAP_EXACT_BELOW points UMAP finds the exact nearest neighbours itself, with a search that numba
    compiles anew in every process (about half of a first small map's time); scikit-learn finds the same ones
    without compiling. Each point is its own first neighbour at distance exactly 0, as UMAP counts them.
    Above that, UMAP's approximate search, which grows better than quadratically: (None, None, None)."""
    if len(features) >= UMAP_EXACT_BELOW:
        return None, None, None
    from sklearn.neighbors import NearestNeighbors

    distances, indices = NearestNeighbors(n_neighbors=neighbours - 1, algorithm="brute").fit(features).kneighbors()
    itself = np.arange(len(features))[:, None]
    at_zero = np.zeros((len(features), 1), np.float32)
    return np.hstack([itself, indices]), np.hstack([at_zero, distances.astype(np.float32)])


def plot_embedding_map(coords: np.ndarray, targets: np.ndarray | None, names: list[str], title: str):
    """One panel per class (its images in colour over all images in grey); one panel when unlabelled."""
    panels = len(names) if targets is not None else 1
    columns = min(MAP_COLUMNS, panels)
    rows = int(np.ceil(panels / columns))
    figure, axes = subplots(rows, columns, figsize=(3.0 * columns, 3.0 * rows + 0.4), squeeze=False,
                                sharex=True, sharey=True)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.flat[panels:]:
        ax.axis("off")
    size = max(2.0, min(20.0, 3000 / len(coords)))
    for index, ax in enumerate(axes.flat[:panels]):
        ax.scatter(coords[:, 0], coords[:, 1], s=size, color="#d0d0d0", linewidths=0)
        if targets is None:
            ax.scatter(coords[:, 0], coords[:, 1], s=size, color="#4c72b0", linewidths=0)
            ax.set_title(f"all images (n={len(coords)}, unlabelled)", fontsize=9)
            continue
        members = targets[:, index] > 0.5
        ax.scatter(coords[members, 0], coords[members, 1], s=size * 1.5, color=HIGHLIGHT,
                   linewidths=0)
        ax.set_title(textwrap.fill(f"{names[index]} (n={int(members.sum())})", 28), fontsize=9)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def write_embeddings(path: str | Path, ids: list[str], features: np.ndarray, labels: list[list[str]] | None) -> None:
    """Parquet: id, f0..f{F-1} (float32), and labels (a list of class names) when the data is labelled."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    features = np.asarray(features, dtype=np.float32)
    columns = {"id": pa.array([str(i) for i in ids], type=pa.string())}
    columns.update({f"f{j}": pa.array(features[:, j]) for j in range(features.shape[1])})
    if labels is not None:
        columns["labels"] = pa.array(labels, type=pa.list_(pa.string()))
    with atomic_path(path) as temp:
        pq.write_table(pa.table(columns), str(temp))


def map_path(parquet_path: str | Path) -> Path:
    parquet_path = Path(parquet_path)
    return parquet_path.with_name(parquet_path.stem + "_map.png")


def write_embedding_map(parquet_path: str | Path, features: np.ndarray, targets: np.ndarray | None,
                        names: list[str], method: str, seed: int = 0, data_name: str = "") -> Path | None:
    """The 2-D map beside the Parquet file; None when there are too few images to project."""
    if len(features) < MIN_IMAGES_FOR_MAP:
        return None
    coords, axis_name = project_2d(features, method, seed)
    where = f" of {data_name}" if data_name else ""
    figure = plot_embedding_map(coords, targets, names, f"Image features{where}: {axis_name}")
    path = map_path(parquet_path)
    save_figure(path, figure)
    return path


def embed_table(predictor, table, out_file: str | Path, *, method: str = "umap", batch_size: int = 32,
                workers: int = 0, seed: int = 0, data_name: str = "", show_progress: bool = True,
                ranks=None) -> tuple[np.ndarray, Path | None] | None:
    """Write the features of every image of `table` to `out_file` (Parquet) and the map beside it; returns them
    and the map's path. With `ranks` (protloc.inference.distributed.Ranks) every process computes its share and
    process 0 writes everything; the others return None."""
    method = resolve_method(method)
    features = predictor.embed_table(table, batch_size=batch_size, workers=workers, show_progress=show_progress,
                                     ranks=ranks)
    if features is None:
        return None
    names = list(table.label_set.names)
    labels = [[names[i] for i in row] for row in table.frame["labels"]] if table.labelled else None
    write_embeddings(out_file, list(table.frame["id"]), features, labels)
    targets = table.targets if table.labelled else None
    return features, write_embedding_map(out_file, features, targets, names, method, seed, data_name)
