"""The frozen phase's malloc settings: inside, large blocks come from the heap, which keeps them when freed;
afterwards they are mmapped on their own again, and handed back to the kernel when freed, as by default."""
from __future__ import annotations

import ctypes

import pytest
import torch

from protloc.training.allocator import _glibc, freed_memory_kept

BLOCK = 64 << 20  # over glibc's largest adaptive mmap threshold (32 MB): mmapped on its own by default


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def mmapped_bytes_while_a_block_lives(libc) -> int:
    """How much memory glibc mmaps of its own (outside the heap) to hold one BLOCK-sized tensor."""
    before = libc.mallinfo2().hblkhd
    block = torch.empty(BLOCK, dtype=torch.uint8)
    during = libc.mallinfo2().hblkhd
    del block
    return during - before


def test_inside_large_blocks_come_from_the_heap_and_afterwards_are_mmapped_again():
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        pytest.skip("the C library is not glibc 2.33 or later")
    libc.mallinfo2.restype = MallInfo2
    assert mmapped_bytes_while_a_block_lives(libc) >= BLOCK
    with freed_memory_kept() as kept:
        assert kept
        assert mmapped_bytes_while_a_block_lives(libc) == 0
    assert mmapped_bytes_while_a_block_lives(libc) >= BLOCK
