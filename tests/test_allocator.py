"""glibc's malloc settings while forward passes run batch after batch (the frozen phase, prediction over many
images): inside, large blocks come from the heap, which keeps them when freed; afterwards they are mmapped on
their own again, and handed back to the kernel when freed, as by default.

Whether a block comes from the heap depends on the thresholds, and outside the settings also on what the heap
already holds free, which in a test worker is whatever earlier tests left. So the settings themselves are
checked in a new process. Prediction is checked in the test worker with what holds whatever the heap holds: a
block over the largest threshold glibc sets itself is mmapped outside the settings, and never inside them.
"""
from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import pytest

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


def mmapped_while_a_block_lives(libc) -> int:
    """Bytes mmapped for one BLOCK-sized allocation, from the calling thread: 0 when the heap served it."""
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(BLOCK)
    during = libc.mallinfo2().hblkhd
    libc.free(block)
    return during - before


PROBE = """
from protloc.allocator import freed_memory_kept
from tests.test_allocator import glibc_with_mallinfo, mmapped_while_a_block_lives

libc = glibc_with_mallinfo()
first = mmapped_while_a_block_lives(libc)
with freed_memory_kept() as kept:
    inside = mmapped_while_a_block_lives(libc)
print(first, kept, inside, mmapped_while_a_block_lives(libc))
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
    before, kept, inside, after = result.stdout.split()
    assert int(before) >= BLOCK and kept == "True" and int(inside) == 0 and int(after) >= BLOCK


def test_prediction_keeps_freed_memory_over_several_batches_and_not_for_one(libc, untrained_run, demo_data):
    from protloc.data.readers import read_dataset
    from protloc.inference.engines import TorchEngine
    from protloc.inference.predictor import Predictor
    from protloc.runs import load_run

    mmapped = []  # per batch, measured as its forward pass starts

    class ProbedEngine(TorchEngine):
        def __call__(self, images):
            mmapped.append(mmapped_while_a_block_lives(libc))
            return super().__call__(images)

    config, model = load_run(untrained_run())
    predictor = Predictor(config, ProbedEngine(model, precision="fp32"))
    table = read_dataset(demo_data, split="test")
    predictor.predict_table(table, batch_size=len(table) // 2)
    assert mmapped == [0, 0]
    assert mmapped_while_a_block_lives(libc) >= BLOCK  # restored on leaving
    mmapped.clear()
    predictor.predict_table(table, batch_size=len(table))
    assert len(mmapped) == 1 and mmapped[0] >= BLOCK
