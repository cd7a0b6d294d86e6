"""glibc's malloc settings while forward passes run batch after batch (the frozen phase, prediction over many
images): inside, large blocks come from the heap, which keeps them when freed; afterwards they are mmapped on
their own again, and handed back to the kernel when freed, as by default.

Outside the settings, whether a block comes from the heap also depends on what the heap already holds free,
which in a test worker is whatever earlier tests left: a 64 MB block is mmapped only where no free 64 MB is at
hand. So the settings themselves are checked in a new process. In the test worker, prediction is checked with
what holds whatever the heap holds: inside the settings a 64 MB block always comes from the heap; outside them
a block larger than all the heap's free memory is always mmapped.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from protloc import allocator
from protloc.allocator import _glibc

BLOCK = 64 << 20  # over glibc's largest adaptive mmap threshold (32 MB): mmapped on its own by default
REPO = Path(__file__).resolve().parents[1]


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def glibc_with_mallinfo():
    """glibc with mallinfo2 (2.33 or later) and malloc/free typed for pointers, or None."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


def mmapped_for_a_block(libc, size: int = BLOCK) -> int:
    """Bytes mmapped for one allocation of `size`, from the calling thread: 0 when the heap served it."""
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(size)
    during = libc.mallinfo2().hblkhd
    libc.free(block)
    return during - before


def heap_serves_a_block(libc) -> bool:
    return mmapped_for_a_block(libc) == 0


def a_block_beyond_the_free_memory_is_mmapped(libc) -> bool:
    """More than all the heap's free memory, so no free block can serve it: mmapped unless the thresholds say
    the heap must grow instead (glibc's own thresholds never do, for a block over 32 MB)."""
    size = libc.mallinfo2().fordblks + BLOCK
    return mmapped_for_a_block(libc, size) >= size


PROBE = """
from protloc.allocator import allow_malloc_settings, freed_memory_kept
from tests.test_allocator import glibc_with_mallinfo, mmapped_for_a_block

libc = glibc_with_mallinfo()
first = mmapped_for_a_block(libc)
with freed_memory_kept() as refused:
    pass
allow_malloc_settings()  # as the command line does
with freed_memory_kept() as kept:
    inside = mmapped_for_a_block(libc)
print(first, refused, kept, inside, mmapped_for_a_block(libc))
"""


@pytest.fixture(scope="module")
def libc():
    found = glibc_with_mallinfo()
    if found is None:
        pytest.skip("the C library is not glibc 2.33 or later")
    return found


def test_inside_large_blocks_come_from_the_heap_and_afterwards_are_mmapped_again(libc):
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    before, refused, kept, inside, after = result.stdout.split()
    assert refused == "False"  # not allowed: a library call leaves the process's settings alone
    assert int(before) >= BLOCK and kept == "True" and int(inside) == 0 and int(after) >= BLOCK


@pytest.fixture
def settings_allowed(monkeypatch):
    """The process's malloc settings are protloc's to change, as in a `protloc` command."""
    monkeypatch.setattr(allocator, "_settings_allowed", True)


def test_prediction_keeps_freed_memory_over_several_batches_and_not_for_one(libc, settings_allowed, untrained_run,
                                                                            demo_data):
    from protloc.data.readers import read_dataset
    from protloc.inference.engines import TorchEngine
    from protloc.inference.predictor import Predictor
    from protloc.models.run_weights import load_run

    heap_served = []  # per batch, as its forward pass starts: did a 64 MB block come from the heap?
    beyond_mmapped = []  # ... and was a block beyond the heap's free memory mmapped?

    class ProbedEngine(TorchEngine):
        def __call__(self, images):
            heap_served.append(heap_serves_a_block(libc))
            beyond_mmapped.append(a_block_beyond_the_free_memory_is_mmapped(libc))
            return super().__call__(images)

    config, model = load_run(untrained_run())
    predictor = Predictor(config, ProbedEngine(model, precision="fp32"))
    table = read_dataset(demo_data, split="test")
    predictor.predict_table(table, batch_size=len(table) // 2)
    assert heap_served == [True, True]
    assert a_block_beyond_the_free_memory_is_mmapped(libc)  # glibc's thresholds again on leaving
    beyond_mmapped.clear()
    predictor.predict_table(table, batch_size=len(table))
    assert beyond_mmapped == [True]


def test_backbone_features_keep_freed_memory_over_several_batches(libc, settings_allowed, untrained_run, demo_data):
    from protloc.data.dataset import ImageDataset
    from protloc.data.readers import read_dataset
    from protloc.data.transforms import eval_transforms
    from protloc.models.run_weights import load_run
    from protloc.training.features import compute_features

    config, model = load_run(untrained_run())
    heap_served = []  # per batch, as the backbone's forward pass starts
    model.backbone.register_forward_pre_hook(lambda _module, _inputs: heap_served.append(heap_serves_a_block(libc)))
    table = read_dataset(demo_data, split="test")
    transform = eval_transforms(image_size=config.image_size, mean=config.mean, std=config.std)
    dataset = ImageDataset(table, channels=3, transform=transform, image_size=config.image_size)
    features = compute_features(model, dataset, batch_size=len(table) // 2, workers=0, device="cpu",
                                autocast_dtype=None, show_progress=False)
    assert heap_served == [True, True] and len(features) == len(table)
    assert a_block_beyond_the_free_memory_is_mmapped(libc)  # glibc's thresholds again on leaving


HUGE_PAGES_PROBE = """
from protloc.allocator import use_huge_pages_for_tensors

use_huge_pages_for_tensors()
import torch

before = torch.ones(1)
tensor = torch.ones(64 << 18)  # 64 MiB of float32
for line in open("/proc/self/smaps_rollup"):
    if line.startswith("AnonHugePages:"):
        print(int(line.split()[1]))
"""


def transparent_huge_pages_mode() -> str:
    """The kernel's mode, the bracketed word of /sys/kernel/mm/transparent_hugepage/enabled, or "" if unknown."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return ""
    return text.partition("[")[2].partition("]")[0]


def test_training_backs_large_tensors_with_huge_pages_unless_the_environment_says_no(monkeypatch):
    if transparent_huge_pages_mode() != "madvise":
        pytest.skip("huge pages on request only show apart from the kernel's own choice in its madvise mode")
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)

    def huge_kib(**environment) -> int:
        env = {key: value for key, value in os.environ.items() if key != "THP_MEM_ALLOC_ENABLE"}
        result = subprocess.run([sys.executable, "-c", HUGE_PAGES_PROBE], capture_output=True, text=True, check=True,
                                cwd=REPO, env={**env, **environment}, timeout=120)
        return int(result.stdout.split()[-1])

    assert huge_kib() >= 32 << 10  # most of the 64 MiB tensor on 2 MiB pages
    assert huge_kib(THP_MEM_ALLOC_ENABLE="0") == 0  # a user's explicit choice stands


def test_protloc_train_turns_huge_pages_on_before_anything_else(monkeypatch, capsys):
    from protloc.cli import main

    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    assert main(["train"]) == 2  # no data: refused before any work, with the switch already set
    assert "needs DATA" in capsys.readouterr().err
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"  # what the rest of the process, and DDP's ranks, inherit
