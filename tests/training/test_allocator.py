"""The frozen phase's malloc settings: inside, large blocks come from the heap, which keeps them when freed;
afterwards they are mmapped on their own again, and handed back to the kernel when freed, as by default.

Checked in a new process: whether a block comes from the heap also depends on what the heap already holds free,
and a test worker's heap holds whatever earlier tests left."""
from __future__ import annotations

import subprocess
import sys

import pytest

from protloc.training.allocator import _glibc

BLOCK = 64 << 20  # over glibc's largest adaptive mmap threshold (32 MB): mmapped on its own by default
PROBE = f"""
import ctypes
from protloc.training.allocator import _glibc, freed_memory_kept

BLOCK = {BLOCK}


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


libc = _glibc()
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]


def mmapped_while_a_block_lives():
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(BLOCK)
    during = libc.mallinfo2().hblkhd
    libc.free(block)
    return during - before


first = mmapped_while_a_block_lives()
with freed_memory_kept() as kept:
    inside = mmapped_while_a_block_lives()
print(first, kept, inside, mmapped_while_a_block_lives())
"""


def test_inside_large_blocks_come_from_the_heap_and_afterwards_are_mmapped_again():
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        pytest.skip("the C library is not glibc 2.33 or later")
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    before, kept, inside, after = result.stdout.split()
    assert int(before) >= BLOCK and kept == "True" and int(inside) == 0 and int(after) >= BLOCK
