"""Shared fixtures: small generated datasets, made once per test session."""
from __future__ import annotations

import gc
import os
import tempfile
import shutil
from pathlib import Path

# Under pytest-xdist (`pytest` runs 2 workers, see addopts in pyproject.toml) the workers share the cores:
# one compute thread per worker, and per process a test starts, as two threads on a busy core stall each
# other (BLAS's spinning threads most: a Ledoit-Wolf fit took 4x the CPU with two OpenBLAS threads per worker).
# Set before numpy, torch, numba or BLAS are imported, which read these once: so before matplotlib here, and
# with the plugins that would import numpy earlier turned off (addopts); threadpoolctl limits any BLAS that a
# plugin loaded all the same.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER:
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[variable] = "1"
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
# Hypothesis's entry-point plugins: the one installed, trio's, imports trio into every
# process that imports hypothesis, for a random generator no test uses.
os.environ.setdefault("HYPOTHESIS_NO_PLUGINS", "1")

import matplotlib  # noqa: E402
import pytest  # noqa: E402

matplotlib.use("Agg")
# Tests must not depend on a warm download cache or on the network.
os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="protloc-torch-home-")
# ... nor write decoded images into the user's own cache folder.
os.environ["PROTLOC_CACHE_DIR"] = tempfile.mkdtemp(prefix="protloc-cache-")
# Both go when this process ends its session (pytest_unconfigure): a run's cache reached gigabytes.
SESSION_FOLDERS = (os.environ["TORCH_HOME"], os.environ["PROTLOC_CACHE_DIR"])

REAL_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


# ---------------------------------------------------------------- the garbage collector
# Importing torch, timm, Lightning, sympy and the rest leaves some 600,000 objects that live until the end,
# and each full collection walks them all: 0.3-1.2 s each, 6-12 s per worker (measured with gc.callbacks).
# Collecting the tests imports most of them, so the collector is off while they load; then one collection,
# and what is left is frozen, out of the collector's sight; full collections wait for 100 younger ones.
def pytest_collectstart(collector):
    gc.disable()  # in each process that collects: the workers, or the one process of `-n 0`


def pytest_collection_finish(session):
    gc.collect()
    gc.freeze()
    young, middle, _full = gc.get_threshold()
    gc.set_threshold(young, middle, 100)
    gc.enable()


def pytest_unconfigure(config):
    """Remove this process's session folders; then exit without the interpreter's last garbage collections, as the
    `protloc` command does (cli.run): a worker's exit is the last thing the run waits for."""
    for folder in SESSION_FOLDERS:
        shutil.rmtree(folder, ignore_errors=True)
    gc.freeze()


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """A 64 px Zero-to-GANs-layout dataset: 96 train, 16 test images."""
    from protloc.data.synthetic import write_demo_dataset

    root = tmp_path_factory.mktemp("demo")
    write_demo_dataset(root, n_train=96, n_test=16, size=64, seed=0, show_progress=False, workers=1)
    return root


@pytest.fixture(scope="session")
def cell_data(tmp_path_factory):
    """256 px demo data with --cells (per-cell truth): 6 train images (masks, cells.csv) and 2 test images."""
    from protloc.data.synthetic import write_demo_dataset

    root = tmp_path_factory.mktemp("cells")
    write_demo_dataset(root, n_train=6, n_test=2, size=256, seed=21, show_progress=False, workers=1, cells=True)
    return root


@pytest.fixture(scope="session")
def real_data():
    path = os.path.abspath(REAL_DATA)
    if not os.path.isdir(path):
        pytest.fail(f"real HPA samples not found at {path} (../shared/data beside the checkout)")
    return path


# ---------------------------------------------------------------- untrained runs and a pretrained backbone
# For the tests of what reads a run back (predict, tune, evaluate, explain, embed, serve, report) and of the model.


@pytest.fixture(scope="session")
def untrained_run(tmp_path_factory):
    """make(run_dir=None, **options) -> a run folder around an untrained network; without `run_dir`, a new
    folder named run. See `make` for the options."""

    def make(run_dir: Path | None = None, *, backbone: str = "test_resnet", label_set=None, in_chans: int = 3,
             image_size: int = 32, thresholds: list[float] | None = None, layout: str = "z2g",
             training: dict | None = None, spread: float | None = None, weights: bool = True,
             outliers_of: list | None = None) -> Path:
        """config.json (normalisation from the backbone's spec; the default threshold for every class unless
        given; label set hpa10 unless given) and, with `weights`, the seeded network's model.safetensors.

        `spread` scales the head's weights: an untrained head gives every image probabilities near 0.5, so
        tests whose labels must differ between images spread them out.

        `outliers_of` (image paths) describes those images' features as training does (outliers.safetensors, the
        99th percentile of their scores as outlier_threshold), for tests of outlier scores.
        """
        import torch

        from protloc.runs import DEFAULT_THRESHOLD
        from protloc.labels import HPA10
        from protloc.models.classifier import build_model
        from protloc.models.run_weights import save_run
        from protloc.runs import RunConfig, save_config

        run_dir = Path(run_dir) if run_dir else tmp_path_factory.mktemp("untrained") / "run"
        label_set = label_set or HPA10
        torch.manual_seed(0)
        model = build_model(backbone, len(label_set), pretrained=False, in_chans=in_chans)
        if spread is not None:
            with torch.no_grad():
                model.head[1].weight.mul_(spread)
        mean, std = model.backbone.spec.normalization(in_chans)
        config = RunConfig(backbone=backbone, label_set=label_set.name, label_names=list(label_set.names),
                           image_size=image_size, in_chans=in_chans, mean=list(mean), std=list(std),
                           thresholds=list(thresholds) if thresholds is not None else [DEFAULT_THRESHOLD] * len(label_set),
                           layout=layout, training=dict(training or {}))
        if weights:
            save_run(run_dir, config, model)
        else:
            save_config(run_dir, config)
        if outliers_of:
            describe_run_features(run_dir, outliers_of)
        return run_dir

    return make


def describe_run_features(run_dir: Path, images: list) -> None:
    """outliers.safetensors and outlier_threshold for a run, from the features of `images` (they also stand in
    for the validation images that set each part's scale and the threshold)."""
    import protloc
    from protloc.inference.outliers import describe_features, outlier_threshold, save_description
    from protloc.runs import OUTLIER_FILE, load_config, save_config

    predictor = protloc.load(run_dir, engine="torch", precision="fp32")
    features = outlier_features(predictor, images)
    description = describe_features(features, predictor.model.backbone.feature_widths())
    description.calibrate(features)
    save_description(run_dir / OUTLIER_FILE, description)
    config = load_config(run_dir)
    config.outlier_threshold = outlier_threshold(description.scores(features))
    save_config(run_dir, config)


def outlier_features(predictor, images: list):
    """(N, W) numpy: what the outlier score reads of each image (pooled features, then each stage averaged)."""
    import torch

    batch = torch.stack([predictor.prepare(image) for image in images])
    with torch.inference_mode():
        return predictor.model.eval().logits_and_features(batch)[1].numpy()


@pytest.fixture(scope="session")
def pretrained_efficientnet():
    """efficientnet_lite0 with its ImageNet weights, 5 classes, dropout 0.2: built once (seconds each time).
    Tests that change it take a copy.deepcopy."""
    import torch

    from protloc.models.classifier import build_model

    torch.manual_seed(0)
    return build_model("efficientnet_lite0", 5, pretrained=True, dropout=0.2)


@pytest.fixture
def assemble_hpa2018(real_data):
    """Build an HPA-2018-layout folder of complete Ids from real single-stain files.

    The shared sample holds one stain per Id, so real red, green, blue and yellow files are copied
    under new Ids. Labels are "i 25" for Id number i. Returns a function(root, n_ids=2) -> ids."""

    def assemble(root: Path, n_ids: int = 2) -> list[str]:
        root = Path(root)
        files = sorted((Path(real_data) / "hpa2018-sample" / "train").iterdir())
        by_stain = {s: [f for f in files if f.stem.endswith("_" + s)] for s in ("red", "green", "blue", "yellow")}
        (root / "train").mkdir(parents=True)
        ids = [f"test-id-{i}" for i in range(n_ids)]
        for i, identifier in enumerate(ids):
            for stain, stain_files in by_stain.items():
                shutil.copy(stain_files[i], root / "train" / f"{identifier}_{stain}.png")
        (root / "train.csv").write_text("Id,Target\n" + "".join(f"{identifier},{i} 25\n" for i, identifier in enumerate(ids)))
        return ids

    return assemble


# ---------------------------------------------------------------- the tiny training recipe
# Every test that trains starts from this one recipe and changes only what it tests: timm's tiny test_resnet
# (96 features) with random weights, 32 px input, one frozen and one fine-tuning epoch, batches of 16, no loader
# processes, on the CPU (where a resumed run ends bit-identical to an uninterrupted one). Where the backbone is not
# the point, test_resnet: a tiny run trains in a third of mobilenetv3_small_050's CPU time and a quarter of
# efficientnet_lite0's, describing its features for the outlier score included.
TINY_TRAINING = {"backbone": "test_resnet", "pretrained": False, "image_size": 32, "epochs_frozen": 1, "epochs": 1,
                 "batch_size": 16, "workers": 0, "device": "cpu"}


class TinyRecipe:
    """The tiny recipe as a TrainConfig or as `protloc train` options, with `changes` on top."""

    def config(self, data, out, **changes):
        from protloc.training.config import TrainConfig

        return TrainConfig(data=str(data), out=str(out), **{**TINY_TRAINING, "show_progress": False, **changes})

    def args(self, **changes) -> list[str]:
        from protloc.training.config import option

        args = []
        for name, value in {**TINY_TRAINING, **changes}.items():
            if name == "pretrained":
                args += [] if value else ["--no-pretrained"]
            elif value is True:
                args.append(option(name))
            elif value is not False and value is not None:
                args += [option(name), str(value)]
        return args


@pytest.fixture(scope="session")
def tiny_recipe() -> TinyRecipe:
    return TinyRecipe()


@pytest.fixture(scope="session")
def trained_kfold(demo_data, tiny_recipe, tmp_path_factory) -> Path:
    """A 2-fold folder trained by the tiny recipe (fine-tuning only) through the CLI, as `train --folds 2`
    leaves it: fold-0, fold-1, folds.csv, out_of_fold.csv and ensemble.json. Tests that change it take a copy.
    In fp32 (what "auto" gives on the CPU, named so that it stays so), so that a fold's validation scores during
    training and after it are one computation (under bf16 they may differ by a label)."""
    import torch

    from protloc.cli import main

    out = tmp_path_factory.mktemp("kfold") / "cv"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two compute threads on two shared cores stall each other
    try:
        assert main(["train", str(demo_data), "--out", str(out), *tiny_recipe.args(epochs_frozen=0, precision="fp32"),
                     "--folds", "2"]) == 0
    finally:
        torch.set_num_threads(threads)
    return out
