"""protloc as a library is a guest in its caller's process: importing it, loading a run and predicting leave the
caller's plotting backend, memory allocator, PIL settings, model and run folder as they were, and print nothing.
The process settings that make the command line fast are the command line's (cli.main)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

# One fresh process, as a notebook would be, for two checks: importing every protloc module, then predicting from
# Python with the engine probing glibc's malloc settings as each batch starts (a second process would import
# torch and the rest again).
GUEST_PROCESS = """
import importlib, pkgutil, sys
from pathlib import Path
import matplotlib
matplotlib.use("svg")
import protloc
names = [info.name for info in pkgutil.walk_packages(protloc.__path__, "protloc.") if info.name != "protloc.__main__"]
for name in names:
    importlib.import_module(name)
print(len(names), matplotlib.get_backend())

from tests.test_allocator import a_block_beyond_the_free_memory_is_mmapped, glibc_with_mallinfo
from protloc.inference.engines import TorchEngine

libc = glibc_with_mallinfo()
if libc is None:
    print("no mallinfo2")
    sys.exit(0)
mmapped = []

class ProbedEngine(TorchEngine):
    def __call__(self, images):
        mmapped.append(a_block_beyond_the_free_memory_is_mmapped(libc))
        return super().__call__(images)

predictor = protloc.load(sys.argv[1], engine="torch", precision="fp32")
predictor.engine = ProbedEngine(predictor.model, precision="fp32")
predictor.predict(sorted(Path(sys.argv[2]).glob("*.png"))[:40], batch_size=10)
print(mmapped)
"""


@pytest.fixture(scope="module")
def guest_process(untrained_run, demo_data) -> list[str]:
    """The lines GUEST_PROCESS printed."""
    result = subprocess.run([sys.executable, "-c", GUEST_PROCESS, str(untrained_run()), str(demo_data / "train")],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_importing_every_protloc_module_leaves_the_callers_matplotlib_backend(guest_process):
    modules, backend = guest_process[0].split()
    assert int(modules) > 50 and backend == "svg"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time."""
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*"))}


def test_loading_a_run_and_predicting_40_images_writes_nothing_into_the_run_and_prints_nothing(
        untrained_run, demo_data, tmp_path, capfd, monkeypatch):
    import logging

    import protloc

    # As in a process the command line never ran in: its handler shows the library's notes on stderr.
    monkeypatch.setattr(logging.getLogger("protloc"), "handlers", [])

    run_dir = untrained_run(tmp_path / "run")
    before = snapshot(run_dir)
    images = sorted((demo_data / "train").glob("*.png"))[:40]
    capfd.readouterr()
    predictor = protloc.load(run_dir)  # the default engine: ONNX Runtime on the CPU, exported into the cache
    prediction = predictor.predict(images, batch_size=16)
    assert predictor.engine_name == "onnx" and prediction.probabilities.shape == (40, 10)
    assert snapshot(run_dir) == before
    assert capfd.readouterr() == ("", "")


def test_a_callers_model_keeps_its_memory_format_device_and_mode(untrained_run, demo_data):
    import torch

    from protloc.inference.predictor import Predictor
    from protloc.models.run_weights import load_run

    config, model = load_run(untrained_run())
    model.train()
    stem = next(parameter for parameter in model.parameters() if parameter.dim() == 4)
    Predictor(config, model, precision="fp32").predict_proba(sorted((demo_data / "test").glob("*.png"))[:2])
    assert stem.is_contiguous() and not stem.is_contiguous(memory_format=torch.channels_last)
    assert model.training


def test_prediction_from_python_leaves_glibcs_malloc_settings_alone(guest_process):
    """In a process of its own, as a notebook would be: with glibc's own thresholds, a block beyond the heap's free
    memory is always mmapped; the command line's settings would have the heap serve it."""
    if guest_process[-1] == "no mallinfo2":
        pytest.skip("the C library is not glibc 2.33 or later")
    assert guest_process[-1] == str([True] * 4)


def test_reading_an_image_leaves_pils_own_limit(tmp_path, monkeypatch):
    from PIL import Image

    from protloc.data.images import decode_image

    seen = []
    original_open = Image.open

    def watched_open(*args, **kwargs):
        seen.append(Image.MAX_IMAGE_PIXELS)
        return original_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", watched_open)
    Image.fromarray(np.zeros((10, 20, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    decode_image(tmp_path / "x.png")
    assert seen == [Image.MAX_IMAGE_PIXELS] and Image.MAX_IMAGE_PIXELS is not None
