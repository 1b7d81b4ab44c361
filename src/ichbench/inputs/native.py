"""The pixels of a plain native (uncompressed, little-endian) DICOM file read straight from its bytes, as pydicom's `pixel_array`.

pydicom's general decoding machinery costs about 0.6 ms of the 1 ms it takes to read a 512 x 512
uncompressed file; for the plain case its result is a reinterpretation of the bytes, computed here
(tests/test_stream.py compares both on files of 8, 16 and 32 bits, signed and unsigned, with
BitsStored below BitsAllocated). Files that are not plain are left to pydicom (`dicomio`).
"""
from __future__ import annotations

import sys

import numpy as np

#: Rows, Columns, BitsAllocated, BitsStored, PixelRepresentation, SamplesPerPixel, PhotometricInterpretation
_NATIVE_TAGS = (0x00280010, 0x00280011, 0x00280100, 0x00280101, 0x00280103, 0x00280002, 0x00280004)
_FRAMES = 0x00280008      # NumberOfFrames

_LITTLE_NATIVE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1") if sys.byteorder == "little" else ()
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


def native_pixels(ds, ts: str) -> np.ndarray | None:
    """`ds.pixel_array` of a plain native file, read straight from its bytes; None where the file is not
    one (then pydicom decodes it).

    Plain: little-endian native syntax, one grey-scale frame of 8, 16 or 32 bits, and exactly the bytes
    that frame needs (plus the one padding byte of an odd length). For these pydicom's array is the
    bytes as integers of BitsAllocated bits (signed where PixelRepresentation is 1), with the bits
    above BitsStored replaced by the sign (an arithmetic shift left, then right), which is what this
    computes, without pydicom's general decoding machinery (0.6 ms of a 512 x 512 file's 1 ms)."""
    if ts not in _LITTLE_NATIVE or 0x7FE00010 not in ds._dict:
        return None
    if any(t not in ds._dict for t in _NATIVE_TAGS):
        return None
    try:
        rows, cols, bits, stored, rep, spp, photometric = (ds[t].value for t in _NATIVE_TAGS)
        frames = ds[_FRAMES].value if _FRAMES in ds._dict else 1
        rows, cols, bits, stored, rep, spp = (int(v) for v in (rows, cols, bits, stored, rep, spp))
        if (bits not in (8, 16, 32) or not 0 < stored <= bits or rep not in (0, 1) or spp != 1
                or rows <= 0 or cols <= 0 or str(photometric).strip() not in _MONOCHROME
                or frames not in (None, "", 1, "1")):
            return None
        data = ds.PixelData
    except Exception:
        return None
    need = rows * cols * (bits // 8)
    if not isinstance(data, (bytes, bytearray)) or len(data) not in (need, need + need % 2):
        return None
    arr = np.frombuffer(data, dtype=f"<{'i' if rep else 'u'}{bits // 8}", count=rows * cols).reshape(rows, cols)
    if stored < bits:
        arr = arr.copy()
        np.left_shift(arr, bits - stored, out=arr)
        np.right_shift(arr, bits - stored, out=arr)
    return arr
