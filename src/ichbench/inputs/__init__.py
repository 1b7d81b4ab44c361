"""Reading scans: DICOM and NIfTI pixels as HU, the header index, series choice, geometry, HU checks, windowing, masks, rejection reasons and the small arrays of an NPZ.

The readers at the bottom of the house: they know file formats and CT physics, not datasets, labels, folds or methods.

May import: errors.
"""
