"""Two per-slice steps of preprocessing as compiled passes (numba), bit for bit their numpy versions.

`window_resize`: the windows-and-resize sweep of `sweep.window_resize`. For an integer factor (512 -> 128)
every input row is taken once: its pixels are gathered by their column inside the output pixel's window
(b = x % kw), windowed ((hu - low) * (2 / width) - 1, clipped to [-1, 1], float32, no fused multiply-add:
numba without fastmath keeps every rounding), and added into the sums, so each output's sum takes its
window's values in row-major order as before; then the sums are divided by the height and then the width.
`to_hu`: the stored integers -> HU of `dicomio._pixels_to_hu` (cast, slope where not 1, intercept, air floor)
in one pass. Values are those of numpy and of torch's area interpolation (tests/test_stream.py), NaN,
infinities and -0.0 included.

Compiled on first use and cached on disk (`cache=True`: numba's `__pycache__` beside this file, or, where
the package folder is read-only, its user-wide cache `~/.cache/numba` or `NUMBA_CACHE_DIR`); where no cache
location is usable they are compiled in memory for the process, and where numba cannot be imported or
compile them the numpy code is used. `ICHBENCH_JIT=0` turns them off. Loading them costs a process about
0.25 CPU-s (numba's import and its registries; its BLAS probe, which imports scipy.linalg for another
0.25 s, is skipped: these kernels need no BLAS), so preprocessing uses them from `preprocess.JIT_MIN_SLICES`.
"""
from __future__ import annotations

import logging
import os
import sys

import numpy as np

log = logging.getLogger(__name__)

_STATE: dict = {}
_LOADED: set = set()          # kernels that ran (numba's registries are loaded once a process)


def _sweep(hu, low, scale, kh, kw, acc, rows):
    """hu (H, W) float32; low, scale (c,) float32; acc (c + 1, H // kh, W // kw) float32 (written: the
    windows' sums, then the HU's, divided); rows (c + 1, kw, W // kw) float32 scratch."""
    height, width = hu.shape
    c = low.shape[0]
    n_rows, n_cols = height // kh, width // kw
    one, minus_one = np.float32(1.0), np.float32(-1.0)
    acc[:] = np.float32(0.0)
    flat = rows.reshape((c + 1) * kw, n_cols)         # (channel, column in the window) -> one row
    for r in range(height):
        i = r // kh
        src = hu[r]
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


def forced() -> bool | None:
    """ICHBENCH_JIT: True (1, yes, true, on) or False (0, no, false, off) where it forces the kernels on or
    off, None where it is unset or says neither."""
    value = os.environ.get("ICHBENCH_JIT", "").strip().lower()
    return True if value in ("1", "yes", "true", "on") else False if value in ("0", "no", "false", "off") else None


def _off() -> bool:
    return forced() is False


def _compile(fn):
    """`fn` compiled by numba, cached on disk where a cache location is usable; None where numba is missing."""
    try:
        import numba
    except Exception as exc:                          # not installed, or a broken llvmlite
        log.info("numba not available (%s): preprocessing uses numpy", exc)
        return None
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


def window_resize(hu: np.ndarray, low: np.ndarray, scale: np.ndarray, kh: int, kw: int) -> np.ndarray | None:
    """(H, W) float32 HU, H = kh * S and W = kw * T -> (c + 1, S, T) float32: the c windows at S x T, then
    the HU at S x T; None where no kernel is available."""
    height, width = hu.shape
    c = len(low)
    out = np.empty((c + 1, height // kh, width // kw), np.float32)
    scratch = _STATE.get("rows")
    if scratch is None or scratch.shape != (c + 1, kw, width // kw):
        scratch = _STATE["rows"] = np.empty((c + 1, kw, width // kw), np.float32)
    ok = _call(_sweep, np.ascontiguousarray(hu, dtype=np.float32), low, scale, int(kh), int(kw), out, scratch)
    return out if ok else None


def to_hu(raw: np.ndarray, slope: float, intercept: float, out: np.ndarray) -> bool:
    """Stored integers -> HU into `out` ((H, W) float32), as dicomio's conversion without its padding step;
    False (nothing written) where the kernel is not available or the pixels are not native-order integers."""
    if (raw.ndim != 2 or raw.dtype.kind not in "iu" or not raw.dtype.isnative or out.shape != raw.shape
            or out.dtype != np.float32):
        return False
    slope32 = np.float32(slope)
    return _call(_to_hu, raw, slope32, np.float32(intercept), bool(slope32 != 1), out)
