"""Whether inputs are what the pipeline assumes (CT in HU, masks under "> 0", square slices), for DICOM and NIfTI alike."""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

#: CT in HU holds air (about -1000) and bone (above 300). A series whose 0.1th percentile lies above
#: HU_AIR_MAX and whose 99.9th percentile lies below HU_BONE_MIN has neither: it is not in HU (e.g. an
#: 8-bit image exported in a display window, or intensities normalised to [0, 1]).
HU_AIR_MAX = -200.0
HU_BONE_MIN = 200.0
NON_HU_ACTIONS = ("reject", "accept")


def _judge(lo: float, hi: float) -> str | None:
    if lo > HU_AIR_MAX and hi < HU_BONE_MIN:
        return f"values {lo:.4g} .. {hi:.4g} do not look like CT in HU (no air, no bone)"
    if lo > HU_BONE_MIN:
        # 99.9 % of the values above bone's threshold: no air and no soft tissue anywhere (e.g. a wrong
        # RescaleIntercept that shifts the whole series)
        return f"values {lo:.4g} .. {hi:.4g} do not look like CT in HU (no air, no soft tissue)"
    return None


def hu_problem(hu: np.ndarray, stride: int = 4) -> str | None:
    """(n, rows, cols) values after the rescale -> why they do not look like CT in HU, or None.

    Judged on every `stride`-th pixel per axis in plane (the percentiles of a head CT barely move)."""
    v = np.asarray(hu)[..., ::stride, ::stride]
    v = v[np.isfinite(v)]
    if not v.size:
        return "no finite value: not CT in HU"
    lo, hi = np.percentile(v, [0.1, 99.9])
    return _judge(lo, hi)


_INT_SPAN = 1 << 20    # integer values within +- this are counted in a histogram (exact in float32)


class HuSample:
    """`hu_problem` of a series fed one slice at a time, in memory that does not grow with the series.

    The sampled values (every `stride`-th pixel per axis, as `hu_problem`) are kept as distinct values
    with counts (integer HU, the usual case, in a histogram): a CT slice holds a few thousand distinct
    HU (integers times one RescaleSlope), so the table stays small however many slices come. The 0.1th and 99.9th percentiles are then those of
    `np.percentile` (method "linear") on all the samples: the same neighbouring order statistics and
    the same interpolation arithmetic, hence the same verdict and message as `hu_problem`.
    """

    def __init__(self, stride: int = 4, flush_at: int = 1 << 18):
        self.stride, self.flush_at = stride, flush_at
        self.values = np.zeros(0, np.float32)          # distinct non-integer (or huge) values, sorted
        self.counts = np.zeros(0, np.int64)
        self._pending: list[np.ndarray] = []
        self._pending_n = 0
        self._int_lo = 0                               # integer values: a histogram from _int_lo
        self._int_counts = np.zeros(0, np.int64)

    def add(self, hu: np.ndarray) -> None:
        """One slice (rows, cols) or a stack (..., rows, cols) of values after the rescale."""
        self.add_sampled(np.asarray(hu)[..., ::self.stride, ::self.stride])

    def add_sampled(self, v: np.ndarray) -> None:
        """hu[..., ::stride, ::stride] of a slice or stack, already taken (`sweep.window_resize_sampled`)."""
        finite = np.isfinite(v)
        v = v.ravel() if finite.all() else v[finite]
        if not v.size:
            return
        lo, hi = v.min(), v.max()
        if -_INT_SPAN <= lo and hi <= _INT_SPAN:       # integer HU (slope 1): count them, no sorting
            iv = v.astype(np.int32)
            if (iv == v).all() and not np.signbit(v[iv == 0]).any():   # -0.0 stays a float
                self._count_ints(iv, int(lo), int(hi))
                return
        self._pending.append(v.astype(np.float32, copy=False))
        self._pending_n += v.size
        if self._pending_n >= self.flush_at:
            self._flush()

    def _count_ints(self, iv: np.ndarray, lo: int, hi: int) -> None:
        if not len(self._int_counts):
            self._int_lo = lo
        start, end = min(self._int_lo, lo), max(self._int_lo + len(self._int_counts), hi + 1)
        if (start, end) != (self._int_lo, self._int_lo + len(self._int_counts)):
            grown = np.zeros(end - start, np.int64)
            grown[self._int_lo - start:self._int_lo - start + len(self._int_counts)] = self._int_counts
            self._int_lo, self._int_counts = start, grown
        self._int_counts += np.bincount(iv - self._int_lo, minlength=len(self._int_counts))

    def _flush(self) -> None:
        parts_v, parts_c = [self.values], [self.counts]
        if self._pending:
            new, new_counts = np.unique(np.concatenate(self._pending), return_counts=True)
            parts_v.append(new)
            parts_c.append(new_counts)
            self._pending, self._pending_n = [], 0
        if self._int_counts.any():
            nz = np.flatnonzero(self._int_counts)
            parts_v.append((nz + self._int_lo).astype(np.float32))
            parts_c.append(self._int_counts[nz])
            self._int_counts = np.zeros(0, np.int64)
        if len(parts_v) == 1:
            return
        self.values, inverse = np.unique(np.concatenate(parts_v), return_inverse=True)
        self.counts = np.bincount(inverse, weights=np.concatenate(parts_c),
                                  minlength=len(self.values)).astype(np.int64)

    def percentiles(self, q: Sequence[float] = (0.1, 99.9)) -> np.ndarray:
        """np.percentile(all samples, q) without holding the samples."""
        self._flush()
        n = int(self.counts.sum())
        if not n:
            raise ValueError("no finite value sampled")
        quantiles = np.true_divide(np.asarray(q, np.float64), 100)
        virtual = (n - 1) * quantiles                         # numpy's "linear" method, step by step
        previous = np.floor(virtual)
        following = previous + 1
        above, below = virtual >= n - 1, virtual < 0
        previous[above], following[above] = n - 1, n - 1
        previous[below], following[below] = 0, 0
        gamma = np.asanyarray(virtual - previous)
        cum = np.cumsum(self.counts)
        a = self.values[np.searchsorted(cum, previous.astype(np.intp), side="right")]
        b = self.values[np.searchsorted(cum, following.astype(np.intp), side="right")]
        diff = b - a
        out = np.add(a, diff * gamma)
        np.subtract(b, diff * (1 - gamma), out=out, where=gamma >= 0.5, casting="unsafe", dtype=out.dtype)
        return out

    def problem(self) -> str | None:
        """What `hu_problem` says of all the slices added."""
        self._flush()
        if not self.counts.sum():
            return "no finite value: not CT in HU"
        lo, hi = self.percentiles()
        return _judge(lo, hi)


def mask_truth(values: np.ndarray, where: str) -> tuple[np.ndarray, str | None]:
    """Mask values -> hemorrhage where value > 0 (the documented rule), and a warning (None where
    there is nothing to say) naming values the rule drops (negative, NaN) or keeps although they may
    not be meant as hemorrhage (fractions in (0, 0.5], e.g. a probability map)."""
    a = np.asarray(values)
    if a.dtype == bool:
        return a, None
    with np.errstate(invalid="ignore"):
        truth = a > 0
    said = []
    if np.issubdtype(a.dtype, np.floating):
        n_nan = int(np.isnan(a).sum())
        n_low = int(((a > 0) & (a <= 0.5)).sum())
        if n_low:
            said.append(f"{n_low} voxels with values in (0, 0.5] count as hemorrhage (rule > 0); "
                        "threshold a probability map before using it as a mask")
        if n_nan:
            said.append(f"{n_nan} NaN voxels count as no hemorrhage")
    n_neg = int((a < 0).sum()) if np.issubdtype(a.dtype, np.number) else 0
    if n_neg:
        said.append(f"{n_neg} voxels with negative values count as no hemorrhage (rule > 0)")
    if not said:
        return truth, None
    msg = f"mask {where}: " + "; ".join(said)
    log.warning(msg)
    return truth, msg


def square_padding(rows: int, cols: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) pixels that pad a rows x cols slice to a centred square."""
    side = max(rows, cols)
    top, left = (side - rows) // 2, (side - cols) // 2
    return top, side - rows - top, left, side - cols - left
