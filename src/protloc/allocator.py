"""Memory settings for speed: glibc's malloc settings for work that runs forward passes batch after batch (the
frozen-backbone phase of training, and prediction or features over many images), and huge pages for the
tensors of `protloc train`.

By default glibc hands large freed blocks back to the kernel (blocks over its mmap threshold, and a heap top
over its trim threshold), so every batch faults its activations' pages in again. On the 2-core virtual machine
the speed figures come from, that halved efficientnet_lite0's forward pass at batch 32 (22-28 images/s against
43-57 with freed memory kept, benchmarks/RESULTS.md, "Speed at real scale"). A forward pass's memory is small, so that work
keeps what it frees; fine-tuning, whose activations set the run's memory peak, gets memory back to the kernel
again as glibc would by then.

The settings are the process's, and glibc offers no way to read them back: a library that changed them could
not restore a caller's own. So they change only in a process the `protloc` command runs, whose entry point
calls `allow_malloc_settings()`; called from Python (`protloc.load(...).predict`, training from a notebook),
protloc leaves the allocator as it found it. Threads inside at once share the settings; the last to leave
hands memory back.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import threading
from typing import MutableMapping

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
KEPT_BELOW = 256 << 20  # blocks up to 256 MB come from the heap and are reused
TRIM_ABOVE = 1 << 30  # the heap's top goes back to the kernel only beyond 1 GB free
# What glibc's own adaptive thresholds reach after the first large blocks are freed: its maximum mmap
# threshold (32 MB on 64-bit) and twice that for trimming.
SETTLED_MMAP_THRESHOLD = 32 << 20
SETTLED_TRIM_THRESHOLD = 64 << 20


def _glibc():
    """The C library when it is glibc (mallopt and malloc_trim), else None: other platforms keep their defaults."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_settings_allowed = False
_settings_lock = threading.Lock()
_threads_inside = 0


def allow_malloc_settings() -> None:
    """Let `freed_memory_kept` change glibc's settings in this process: for the command-line entry point, whose
    process protloc owns."""
    global _settings_allowed
    _settings_allowed = True


@contextlib.contextmanager
def freed_memory_kept():
    """Inside, glibc keeps freed blocks for reuse; when the last thread inside leaves, it returns what is free and
    trims as it does by default once a process has freed large blocks. Does nothing unless the process allowed it
    (allow_malloc_settings), or where the C library is not glibc."""
    global _threads_inside
    libc = _glibc() if _settings_allowed else None
    if libc is None:
        yield False
        return
    with _settings_lock:
        _threads_inside += 1
        if _threads_inside == 1:
            libc.mallopt(M_MMAP_THRESHOLD, KEPT_BELOW)
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_ABOVE)
    try:
        yield True
    finally:
        with _settings_lock:
            _threads_inside -= 1
            if _threads_inside == 0:
                libc.mallopt(M_TRIM_THRESHOLD, SETTLED_TRIM_THRESHOLD)
                libc.mallopt(M_MMAP_THRESHOLD, SETTLED_MMAP_THRESHOLD)
                libc.malloc_trim(0)


def freed_memory_kept_for_batches(items: int, batch_size: int):
    """`freed_memory_kept()` for forward passes over `items` in batches of `batch_size`, when there is more than
    one batch; a single batch has nothing to reuse and keeps glibc's defaults."""
    return freed_memory_kept() if items > batch_size else contextlib.nullcontext()


HUGE_PAGES_SWITCH = "THP_MEM_ALLOC_ENABLE"


def use_huge_pages_for_tensors(environ: MutableMapping[str, str] = os.environ) -> None:
    """Ask PyTorch to back large CPU tensors (2 MiB and more) with transparent huge pages, through its own switch
    THP_MEM_ALLOC_ENABLE, unless the environment already sets it.

    Fine-tuning's activations are allocated and freed at every step, and glibc hands blocks of their size back
    to the kernel, so each step faults them in again, 4 KiB at a time. With huge pages that is 2 MiB at a time:
    `protloc train` on 512 images at 224 px, batch 32, 2 cores, alternating runs, fine-tuned at 14.4 and 14.1
    images/s against 13.0 and 12.1, and peaked at 3.31 GiB against 3.13 (benchmarks/RESULTS.md, "Speed at real scale").
    PyTorch reads the switch once, at its first allocation, so it must be set before torch is imported; from
    Python, set it in the environment before `import torch`. The kernel must allow huge pages on request
    (/sys/kernel/mm/transparent_hugepage/enabled: always or madvise); elsewhere it changes nothing."""
    environ.setdefault(HUGE_PAGES_SWITCH, "1")
