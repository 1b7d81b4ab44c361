"""C heap settings for ichbench's processes: keep freed tensor memory for reuse instead of handing it back every step.

PyTorch on a CPU allocates and frees activations of a few MB each at every training and scoring step. With
glibc's defaults those blocks come from fresh `mmap`s or are trimmed off the heap's top when freed, so each
step faults the same pages in again, zero-filled by the kernel: on the default AE job that was 1.4 M page
faults and 16 % of the job's time in the kernel (README, "Where the default run's time goes"). Fixing the
mmap threshold at 32 MiB (the largest glibc allows) and raising the trim threshold keeps those blocks in the
heap, where the next step finds them. The price is resident memory: blocks that no longer fit the next request
stay in the heap, so the peak grows somewhat (measured: an AE training job 1.12 -> 1.33 GB, an NSA score job
0.82 -> 0.93 GB, caching CQ500-CT-0 unchanged at 1.05 GB; the train rule asks for 8 GB). Larger blocks (the
in-memory data set, a checkpoint) still get their own mappings and are returned when freed.

On a C library without `mallopt` (macOS, musl) nothing changes; a GPU's memory is not affected either way.
`ICHBENCH_HEAP=default` in the environment leaves the C library's settings alone (`scripts/bench_heap.py`
compares the two).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

# mallopt parameter numbers, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 2**20       # glibc refuses more than HEAP_MAX_SIZE / 2 = 32 MiB on 64-bit machines
TRIM_THRESHOLD = 1 * 2**30        # free heap top kept before it is given back to the system

_applied: dict[str, int] | None = None


def keep_freed_memory() -> dict[str, int]:
    """Apply the settings once per process; returns what was set ({} where `mallopt` is not there or refused)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = {}
    if os.environ.get("ICHBENCH_HEAP", "").strip().lower() == "default":
        return _applied
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        log.debug("no mallopt in this C library: heap settings left as they are")
        return _applied
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    for label, param, value in (("mmap_threshold", M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                ("trim_threshold", M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        if mallopt(param, value) == 1:
            _applied[label] = value
        else:
            log.debug("mallopt refused %s=%d", label, value)
    return _applied
