"""The published pixel correction for CT files whose stored values cannot be HU as their header says (RSNA 2019).

Some RSNA 2019 Intracranial Hemorrhage files have BitsStored 12, PixelRepresentation 0 (unsigned) and a
RescaleIntercept above -100 (0 or +1). Unsigned values with such an intercept cannot hold air (about
-1000 HU), so the header is wrong for them: the stored values are HU wrapped into 12 bits. The correction
published with the challenge data (J. Howard's Kaggle kernel "cleaning the data for rapid prototyping",
reimplemented in appian42/kaggle-rsna-intracranial-hemorrhage `src/utils/misc.py`) is

    x = stored + 1000; x[x >= 4096] -= 4096; intercept = -1000   (HU = x * slope + intercept)

i.e. stored values below 3096 are HU and those from 3096 up are HU + 4096. It is applied wherever the
three conditions hold (no other CT file can meet them and carry plausible HU); files that do not meet
them are untouched.
"""
from __future__ import annotations

import numpy as np

#: The note a corrected slice leaves (counted per series by dicomio.load_series).
NOTE = "published RSNA 2019 pixel correction (BitsStored 12, PixelRepresentation 0, RescaleIntercept > -100)"


def needs_fix(bits_stored: int, pixel_representation: int, intercept: float) -> bool:
    """Whether a file meets the three conditions of the published correction."""
    return int(bits_stored) == 12 and int(pixel_representation) == 0 and float(intercept) > -100


def apply_fix(stored: np.ndarray, bits_stored: int, pixel_representation: int,
              intercept: float) -> tuple[np.ndarray, float, bool]:
    """-> (stored values, intercept, whether corrected). Where `needs_fix`, the values are shifted and
    wrapped as published and the intercept becomes -1000; otherwise everything is returned unchanged."""
    if not needs_fix(bits_stored, pixel_representation, intercept):
        return stored, intercept, False
    x = stored.astype(np.int32) + 1000
    x[x >= 4096] -= 4096
    return x, -1000.0, True
