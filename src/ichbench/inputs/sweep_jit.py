"""Three per-slice steps of preprocessing as compiled passes (numba), bit for bit their numpy / OpenCV versions.

`window_resize`: the windows-and-resize sweep of `sweep.window_resize`. For an integer factor (512 -> 128)
every input row is taken once: its pixels are gathered by their column inside the output pixel's window
(b = x % kw), windowed ((hu - low) * (2 / width) - 1, clipped to [-1, 1], float32, no fused multiply-add:
numba without fastmath keeps every rounding), and added into the sums, so each output's sum takes its
window's values in row-major order as before; then the sums are divided by the height and then the width.
`to_hu`: the stored integers -> HU of `dicomio._pixels_to_hu` (cast, slope where not 1, intercept, air floor)
in one pass. Values are those of numpy and of torch's area interpolation (tests/test_stream.py), NaN,
infinities and -0.0 included. `masks`: `masks.head_mask` and `masks.brain_mask` of the 128 px HU in one pass
(components labelled on runs of pixels, morphology on ring-padded masks), 0.08 ms against OpenCV's 0.28 a slice.

Compiled on first use and cached on disk (`cache=True`: numba's `__pycache__` beside this file, or, where
the package folder is read-only, its user-wide cache `~/.cache/numba` or `NUMBA_CACHE_DIR`); where no cache
location is usable they are compiled in memory for the process, and where numba cannot be imported or
compile them the numpy code is used. `ICHBENCH_JIT=0` turns them off. Loading them costs a process about
0.37 CPU-s (numba's import 0.24, its registries at the first call 0.13; its BLAS probe, which imports
scipy.linalg for another 0.25 s, is skipped: these kernels need no BLAS), so preprocessing uses them from
`preprocess.JIT_MIN_SLICES`.
"""
from __future__ import annotations

import logging
import os
import sys

import numpy as np

log = logging.getLogger(__name__)

_STATE: dict = {}
_LOADED: set = set()          # kernels that ran (numba's registries are loaded once a process)


def _sweep(hu, low, scale, kh, kw, acc, rows, sample):
    """hu (H, W) float32; low, scale (c,) float32; acc (c + 1, H // kh, W // kw) float32 (written: the
    windows' sums, then the HU's, divided); rows (c + 1, kw, W // kw) float32 scratch; sample (H // kh,
    W // kw) float32 written with hu[::kh, ::kw] on the way (or (0, 0): not)."""
    height, width = hu.shape
    c = low.shape[0]
    n_rows, n_cols = height // kh, width // kw
    one, minus_one = np.float32(1.0), np.float32(-1.0)
    acc[:] = np.float32(0.0)
    flat = rows.reshape((c + 1) * kw, n_cols)         # (channel, column in the window) -> one row
    sampled = sample.shape[0] > 0
    for r in range(height):
        i = r // kh
        src = hu[r]
        if sampled and r % kh == 0:                   # every kh-th row's every kw-th pixel, as read
            dst = sample[i]
            for j in range(n_cols):
                dst[j] = src[j * kw]
        if kw == 4:                                   # the row's pixels by their column in the window
            d0, d1, d2, d3 = flat[c * 4], flat[c * 4 + 1], flat[c * 4 + 2], flat[c * 4 + 3]
            for j in range(n_cols):                   # (512 -> 128 spelled out: a vectorised shuffle)
                d0[j] = src[4 * j]
                d1[j] = src[4 * j + 1]
                d2[j] = src[4 * j + 2]
                d3[j] = src[4 * j + 3]
        else:
            for b in range(kw):
                d = flat[c * kw + b]
                for j in range(n_cols):
                    d[j] = src[j * kw + b]
        for ch in range(c):
            lo, sc = low[ch], scale[ch]
            for b in range(kw):
                s, d = flat[c * kw + b], flat[ch * kw + b]
                for j in range(n_cols):
                    x = (s[j] - lo) * sc - one
                    x = minus_one if x < minus_one else x     # np.clip: NaN stays NaN
                    x = one if x > one else x
                    d[j] = x
        for ch in range(c + 1):
            a = acc[ch, i]
            for b in range(kw):                       # row-major within every window
                s = flat[ch * kw + b]
                for j in range(n_cols):
                    a[j] += s[j]
    fh, fw = np.float32(kh), np.float32(kw)
    for ch in range(c + 1):
        for i in range(n_rows):
            for j in range(n_cols):
                acc[ch, i, j] = acc[ch, i, j] / fh / fw


def _to_hu(raw, slope, intercept, scaled, out):
    """Stored integers (H, W) -> float32 HU in out: float32(raw) [* slope] + intercept, then raised to -1024
    (as dicomio's numpy conversion: a cast, a multiply only where the slope is not 1, an add, the clip)."""
    floor = np.float32(-1024.0)
    for i in range(raw.shape[0]):
        for j in range(raw.shape[1]):
            v = np.float32(raw[i, j])
            if scaled:
                v = v * slope
            v = v + intercept
            if v < floor:                             # np.clip(v, -1024, inf): NaN stays NaN
                v = floor
            out[i, j] = v


def _find_runs(m, value, row, start, end):
    """The runs of `value` in the inside of a ring-padded (H + 2, W + 2) uint8 mask, row by row: their row,
    first and one-past-last column (inside coordinates 1..H, 1..W) into the arrays; returns their number."""
    n = 0
    for i in range(1, m.shape[0] - 1):
        j, last = 1, m.shape[1] - 1
        while j < last:
            if m[i, j] == value:
                row[n], start[n] = i, j
                while j < last and m[i, j] == value:
                    j += 1
                end[n] = j
                n += 1
            else:
                j += 1
    return n


def _root(parent, k):
    while parent[k] != k:
        k = parent[k]
    return k


def _label_runs(n, row, start, end, parent):
    """4-connected components of the runs: parent[k] <- the first run (raster order) of run k's component."""
    prev, prev_end = 0, 0                  # the previous row's runs: prev .. prev_end - 1
    k = 0
    while k < n:
        r = row[k]
        first = k
        while k < n and row[k] == r:
            parent[k] = k
            if prev_end > prev and row[prev] == r - 1:
                q = prev
                while q < prev_end and end[q] <= start[k]:
                    q += 1
                while q < prev_end and start[q] < end[k]:     # shares a column: a 4-connected neighbour
                    a, b = _root(parent, q), _root(parent, k)
                    if a < b:
                        parent[b] = a
                    elif b < a:
                        parent[a] = b
                    q += 1
            k += 1
        prev, prev_end = first, k
    for k in range(n):                     # parent[k] <= k: resolved in increasing order
        parent[k] = parent[parent[k]]


def _fill_holes(m, row, start, end, parent, outside):
    """ndimage.binary_fill_holes of a ring-padded uint8 mask, in place: background runs whose component
    touches no edge of the image are set to 1."""
    height, width = m.shape[0] - 2, m.shape[1] - 2
    n = _find_runs(m, 0, row, start, end)
    _label_runs(n, row, start, end, parent)
    for k in range(n):
        outside[k] = 0
    for k in range(n):
        if row[k] == 1 or row[k] == height or start[k] == 1 or end[k] == width + 1:
            outside[parent[k]] = 1
    for k in range(n):
        if not outside[parent[k]]:
            r = row[k]
            for j in range(start[k], end[k]):
                m[r, j] = 1


def _cross_step(src, dst, erode):
    """One binary erosion (erode) or dilation by the 4-connected cross of a ring-padded mask into dst (the
    ring 0 in both: outside counts as 0)."""
    for i in range(1, src.shape[0] - 1):
        up, mid, down, out = src[i - 1], src[i], src[i + 1], dst[i]
        for j in range(1, src.shape[1] - 1):
            if erode:
                out[j] = mid[j] & up[j] & down[j] & mid[j - 1] & mid[j + 1]
            else:
                out[j] = mid[j] | up[j] | down[j] | mid[j - 1] | mid[j + 1]


def _morph(m, tmp, erode, iterations):
    """`iterations` cross steps of a ring-padded mask, in place (tmp: ring-padded scratch, its ring 0)."""
    for _ in range(iterations):
        _cross_step(m, tmp, erode)
        for i in range(1, m.shape[0] - 1):
            for j in range(1, m.shape[1] - 1):
                m[i, j] = tmp[i, j]


def _masks(hu, air, bone_hu, soft_lo, soft_hi, head, brain):
    """hu (H, W) -> head and brain ((H, W) uint8 0/1, written) as masks.head_mask and masks.brain_mask: the
    largest 4-connected component of hu > air (of equal sizes the first in raster order) with its holes
    filled; brain from the closed bone ring's holes, or the eroded head where the skull is open. Components
    are found on runs of pixels (a head is a few runs a row), the morphology on masks padded by a ring of 0."""
    height, width = hu.shape
    most = height * (width // 2 + 1)
    row, start, end = np.empty(most, np.int32), np.empty(most, np.int32), np.empty(most, np.int32)
    parent, size = np.empty(most, np.int32), np.zeros(most, np.int64)
    fg = np.zeros((height + 2, width + 2), np.uint8)
    soft = np.zeros((height + 2, width + 2), np.uint8)
    bone = np.zeros((height + 2, width + 2), np.uint8)
    tmp = np.zeros((height + 2, width + 2), np.uint8)
    any_bone = False
    for i in range(height):
        for j in range(width):
            x = hu[i, j]
            fg[i + 1, j + 1] = x > air
            soft[i + 1, j + 1] = (x >= soft_lo) & (x <= soft_hi)
            bone[i + 1, j + 1] = x >= bone_hu
            any_bone |= x >= bone_hu
    n = _find_runs(fg, 1, row, start, end)
    _label_runs(n, row, start, end, parent)
    best = -1
    for k in range(n):
        size[parent[k]] += end[k] - start[k]
    for k in range(n):
        if parent[k] == k and (best < 0 or size[k] > size[best]):     # a tie stays with the first
            best = k
    for i in range(1, height + 1):
        for j in range(1, width + 1):
            fg[i, j] = 0
    for k in range(n):
        if parent[k] == best:
            r = row[k]
            for j in range(start[k], end[k]):
                fg[r, j] = 1
    _fill_holes(fg, row, start, end, parent, size)
    head_sum = 0
    for i in range(1, height + 1):
        for j in range(1, width + 1):
            head_sum += fg[i, j]
            soft[i, j] &= fg[i, j]
            head[i - 1, j - 1] = fg[i, j]
    if any_bone:
        _morph(bone, tmp, False, 2)                    # binary_closing(bone, iterations=2)
        _morph(bone, tmp, True, 2)
        inside = fg                                    # (the head is written out: its buffer is free)
        for i in range(1, height + 1):
            for j in range(1, width + 1):
                inside[i, j] = bone[i, j]
        _fill_holes(inside, row, start, end, parent, size)
        brain_sum = 0
        for i in range(1, height + 1):
            for j in range(1, width + 1):
                v = inside[i, j] & (1 - bone[i, j]) & soft[i, j]
                inside[i, j] = v
                brain_sum += v
        if brain_sum > 0.05 * max(head_sum, 1):
            _morph(inside, tmp, True, 1)               # binary_opening(brain, iterations=1)
            _morph(inside, tmp, False, 1)
            for i in range(height):
                for j in range(width):
                    brain[i, j] = inside[i + 1, j + 1]
            return
    radius = max(1, int(np.rint(0.06 * np.sqrt(np.float64(max(head_sum, 1))))))
    inner = bone
    for i in range(height):
        for j in range(width):
            inner[i + 1, j + 1] = head[i, j]
    _morph(inner, tmp, True, radius)
    for i in range(1, height + 1):
        for j in range(1, width + 1):
            inner[i, j] &= soft[i, j]
    _morph(inner, tmp, True, 1)
    _morph(inner, tmp, False, 1)
    for i in range(height):
        for j in range(width):
            brain[i, j] = inner[i + 1, j + 1]


#: kernels' helpers, compiled before them into this module's names (numba resolves a kernel's globals when
#: it compiles it, so a helper must be a compiled function by then)
_HELPERS = {"_masks": ("_find_runs", "_root", "_label_runs", "_fill_holes", "_cross_step", "_morph")}


def forced() -> bool | None:
    """ICHBENCH_JIT: True (1, yes, true, on) or False (0, no, false, off) where it forces the kernels on or
    off, None where it is unset or says neither."""
    value = os.environ.get("ICHBENCH_JIT", "").strip().lower()
    return True if value in ("1", "yes", "true", "on") else False if value in ("0", "no", "false", "off") else None


#: the kernels preprocessing runs (whose cache files `preprocess.kernels_cached` looks for)
PREPROCESS_KERNELS = ("_to_hu", "_sweep", "_masks")


def _off() -> bool:
    return forced() is False


def _compile(fn):
    """`fn` compiled by numba, cached on disk where a cache location is usable; None where numba is missing."""
    try:
        import numba
    except Exception as exc:                          # not installed, or a broken llvmlite
        log.info("numba not available (%s): preprocessing uses numpy", exc)
        return None
    for name in _HELPERS.get(fn.__name__, ()):
        if not hasattr(globals()[name], "py_func"):   # not compiled yet
            globals()[name] = _njit(numba, globals()[name])
    return _njit(numba, fn)


def _njit(numba, fn):
    """numba's compiled `fn`, cached on disk where a cache location is usable, else for this process only."""
    try:
        return numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError as exc:                       # "cannot cache function ...: no locator available"
        log.info("no numba cache location (%s): compiled for this process only", exc)
        return numba.njit(nogil=True)(fn)


def _kernel(fn):
    """The compiled `fn` (compiled, or loaded from the cache, at its first call), or None."""
    name = fn.__name__
    if name not in _STATE:
        _STATE[name] = None if _off() else _compile(fn)
    return _STATE[name]


def kernel():
    """The compiled sweep, or None (numba missing or failing, or ICHBENCH_JIT=0)."""
    return _kernel(_sweep)


def _call(fn, *args) -> bool:
    """Run a compiled kernel; False (and numpy from then on for it) where it is not there or fails."""
    compiled = _kernel(fn)
    if compiled is None:
        return False
    blas = not _LOADED and "scipy.linalg" not in sys.modules and "scipy.linalg.cython_blas" not in sys.modules
    if blas:          # numba's array-math registry probes for BLAS by importing scipy.linalg (0.25 CPU-s)
        sys.modules["scipy.linalg.cython_blas"] = None    # at its first call; these kernels need none
    try:
        compiled(*args)
    except Exception as exc:                          # a numba that cannot compile this: numpy from now on
        log.warning("compiled %s failed (%s); using numpy", fn.__name__, exc)
        _STATE[fn.__name__] = None
        return False
    finally:
        if blas and sys.modules.get("scipy.linalg.cython_blas", 0) is None:
            del sys.modules["scipy.linalg.cython_blas"]
    _LOADED.add(fn.__name__)
    return True


def window_resize(hu: np.ndarray, low: np.ndarray, scale: np.ndarray, kh: int, kw: int,
                  sample: np.ndarray | None = None) -> np.ndarray | None:
    """(H, W) float32 HU, H = kh * S and W = kw * T -> (c + 1, S, T) float32: the c windows at S x T, then
    the HU at S x T; None where no kernel is available. `sample` ((S, T) float32): also written with
    hu[::kh, ::kw], taken from the rows as the sweep reads them."""
    height, width = hu.shape
    c = len(low)
    out = np.empty((c + 1, height // kh, width // kw), np.float32)
    scratch = _STATE.get("rows")
    if scratch is None or scratch.shape != (c + 1, kw, width // kw):
        scratch = _STATE["rows"] = np.empty((c + 1, kw, width // kw), np.float32)
    if sample is None:
        sample = _NO_SAMPLE
    elif sample.shape != out.shape[1:] or sample.dtype != np.float32 or not sample.flags.c_contiguous:
        raise ValueError(f"sample: a C-contiguous float32 array of shape {out.shape[1:]}, not {sample.shape}")
    ok = _call(_sweep, np.ascontiguousarray(hu, dtype=np.float32), low, scale, int(kh), int(kw), out, scratch,
               sample)
    return out if ok else None


_NO_SAMPLE = np.empty((0, 0), np.float32)


def masks(hu: np.ndarray, air: float, bone: float, soft: tuple[float, float]) -> tuple[np.ndarray, np.ndarray] | None:
    """(H, W) HU -> (head, brain) boolean masks as `masks.head_mask` and `masks.brain_mask` (the thresholds
    theirs), in one compiled pass; None where the kernel is not available."""
    hu = np.ascontiguousarray(hu)
    if hu.ndim != 2 or hu.dtype not in (np.float32, np.float64) or not hu.size:
        return None
    head = np.empty(hu.shape, np.uint8)
    brain = np.empty(hu.shape, np.uint8)
    if not _call(_masks, hu, float(air), float(bone), float(soft[0]), float(soft[1]), head, brain):
        return None
    return head.view(bool), brain.view(bool)


def to_hu(raw: np.ndarray, slope: float, intercept: float, out: np.ndarray) -> bool:
    """Stored integers -> HU into `out` ((H, W) float32), as dicomio's conversion without its padding step;
    False (nothing written) where the kernel is not available or the pixels are not native-order integers."""
    if (raw.ndim != 2 or raw.dtype.kind not in "iu" or not raw.dtype.isnative or out.shape != raw.shape
            or out.dtype != np.float32):
        return False
    slope32 = np.float32(slope)
    return _call(_to_hu, raw, slope32, np.float32(intercept), bool(slope32 != 1), out)
