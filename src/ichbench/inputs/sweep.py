"""One HU slice -> its three windows and its HU at S x S in one sweep, bit for bit the two-step path of `windowing`.

Kept apart from `windowing` (which the rows' code digests cover, through the anomaly generators) so that
this speed-up of preprocessing does not change a row's digest and rerun its training.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from .windowing import Window, apply_windows, resize


@functools.lru_cache(maxsize=8)
def _constants(windows: tuple[Window, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The windows' lows and 2 / width as float32 (read-only, shared between calls)."""
    low = np.array([win.low for win in windows], np.float32)
    scale = np.array([np.float32(2.0 / win.width) for win in windows], np.float32)
    low.flags.writeable = scale.flags.writeable = False
    return low, scale


def window_resize(hu: np.ndarray, windows: Sequence[Window], size: int,
                  jit: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One (H, W) HU slice -> its windows at size x size (C, size, size) and the HU at size x size, float32:
    bit for bit `resize(apply_windows(hu)[None], size)[0]` and `resize(hu[None, None], size)[0, 0]`.

    Where H and W are multiples of `size` (512 -> 128), the slice is taken one input row of every
    window at a time: those rows, gathered as (kw, size, size) planes, are windowed while they sit
    in the cache and added into the sums at once, instead of windowing three full-resolution images
    and reading them back with strides. Every pixel's window value is the same float32 arithmetic
    ((hu - low) * (2 / width) - 1, clipped to [-1, 1]), and every output's sum takes its window's
    values in the same row-major order, then divides by the height and then the width, so the
    values are those of the two-step path. Other sizes (and no resize at all) take the two-step path.
    `jit`: the same sweep compiled (`sweep_jit`, numba) where it is available: the same values.
    """
    hu = np.asarray(hu, dtype=np.float32)
    h, w = hu.shape
    if h < size or w < size or h % size or w % size or (h, w) == (size, size):
        return resize(apply_windows(hu, windows)[None], size)[0], resize(hu[None, None], size)[0, 0]
    kh, kw, c = h // size, w // size, len(windows)
    low, scale = _constants(tuple(windows))
    if jit:
        from . import sweep_jit

        acc = sweep_jit.window_resize(hu, low, scale, kh, kw)
        if acc is not None:
            return acc[:c], acc[c]
    return _numpy_sweep(hu, low, scale, size, kh, kw)


def window_resize_sampled(hu: np.ndarray, windows: Sequence[Window], size: int,
                          stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """`window_resize(hu, windows, size, jit=True)` and hu[::stride, ::stride] (the HU check's sample, see
    `inputcheck.HuSample`), taken from the rows as the compiled sweep reads them where its steps are the
    stride (a 512 px slice at 128 px, stride 4): no second read of the slice. The sample is None where the
    steps are not the stride or no compiled sweep runs."""
    hu = np.asarray(hu, dtype=np.float32)
    h, w = hu.shape
    if h != size * stride or w != size * stride or stride < 2:
        return (*window_resize(hu, windows, size, jit=True), None)
    from . import sweep_jit

    low, scale = _constants(tuple(windows))
    sample = np.empty((size, size), np.float32)
    acc = sweep_jit.window_resize(hu, low, scale, stride, stride, sample)
    if acc is None:
        return (*window_resize(hu, windows, size), None)
    return acc[:len(windows)], acc[len(windows)], sample


def _numpy_sweep(hu, low, scale, size, kh, kw):
    """The sweep of `window_resize` in numpy (H = kh * size, W = kw * size)."""
    c = len(low)
    low, scale = low.reshape(c, 1, 1, 1), scale.reshape(c, 1, 1, 1)
    rows = hu.reshape(size, kh, size, kw)
    acc = np.zeros((c + 1, size, size), np.float32)          # the windows, then the HU
    planes = np.empty((c + 1, kw, size, size), np.float32)
    one, minus_one = np.float32(1.0), np.float32(-1.0)
    windowed = planes[:c]
    for a in range(kh):
        np.copyto(planes[c], rows[:, a, :, :].transpose(2, 0, 1))      # input row a of every window
        np.subtract(planes[c], low, out=windowed)
        np.multiply(windowed, scale, out=windowed)
        np.subtract(windowed, one, out=windowed)
        np.clip(windowed, minus_one, one, out=windowed)
        for b in range(kw):
            np.add(acc, planes[:, b], out=acc)
    np.divide(acc, np.float32(kh), out=acc)
    np.divide(acc, np.float32(kw), out=acc)
    return acc[:c], acc[c]
