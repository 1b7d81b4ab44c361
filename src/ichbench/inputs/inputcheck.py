"""Whether inputs are what the pipeline assumes (CT in HU, masks under "> 0", square slices), for DICOM and NIfTI alike."""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

#: CT in HU holds air (about -1000) and bone (above 300). A series whose 0.1th percentile lies above
#: HU_AIR_MAX and whose 99.9th percentile lies below HU_BONE_MIN has neither: it is not in HU (e.g. an
#: 8-bit image exported in a display window, or intensities normalised to [0, 1]).
HU_AIR_MAX = -200.0
HU_BONE_MIN = 200.0
NON_HU_ACTIONS = ("reject", "accept")


def hu_problem(hu: np.ndarray, stride: int = 4) -> str | None:
    """(n, rows, cols) values after the rescale -> why they do not look like CT in HU, or None.

    Judged on every `stride`-th pixel per axis in plane (the percentiles of a head CT barely move)."""
    v = np.asarray(hu)[..., ::stride, ::stride]
    v = v[np.isfinite(v)]
    if not v.size:
        return "no finite value: not CT in HU"
    lo, hi = np.percentile(v, [0.1, 99.9])
    if lo > HU_AIR_MAX and hi < HU_BONE_MIN:
        return f"values {lo:.4g} .. {hi:.4g} do not look like CT in HU (no air, no bone)"
    return None


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
