"""Anatomical masks computed from HU: the head (everything not air) and the brain (tissue inside the skull).

Used by methods that need the object (the self-supervised patch synthesis keeps patches on the head,
AnatPaste pastes inside the brain, DAE zeroes its noise outside the head).

The morphology is scipy.ndimage's (binary erosion, dilation, hole filling and labelling with its
default 4-connected cross and border value 0), computed with OpenCV's routines on the uint8 view of
the mask, 3-8x cheaper on a 128 x 128 slice and without importing scipy (0.3 CPU-seconds at
start-up); tests/test_stream.py checks every routine against scipy's on random masks. OpenCV is imported
at the first mask computed with it (0.13 CPU-s and 20 MiB a process that the compiled masks do without).
"""
from __future__ import annotations

import numpy as np

AIR_HU = -500.0
BONE_HU = 300.0
BRAIN_HU = (-15.0, 100.0)

_OPENCV: dict = {}


def _cv():
    """OpenCV, imported at first use (with its own threads off where `single_threaded_opencv` asked so)."""
    if "cv2" not in _OPENCV:
        import cv2

        if _OPENCV.get("one_thread"):
            cv2.setNumThreads(1)
        _OPENCV["cross"] = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
        _OPENCV["cv2"] = cv2
    return _OPENCV["cv2"]


def single_threaded_opencv() -> None:
    """OpenCV's own threads off in this process, now or when it is first imported here: at 128 x 128 its
    routines are too small to split, and its idle pool threads spin (sched_yield) on the other cores."""
    _OPENCV["one_thread"] = True
    if "cv2" in _OPENCV:
        _OPENCV["cv2"].setNumThreads(1)


def _u8(m: np.ndarray) -> np.ndarray:
    """A 2D boolean mask as a contiguous uint8 array of 0 and 1 (a view where it already is one)."""
    return np.ascontiguousarray(m, dtype=bool).view(np.uint8)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a 2D mask (the mask itself where it has at most one), as
    ndimage.label + sum_labels + argmax: of equal sizes, the component met first in raster order."""
    mask = np.asarray(mask, dtype=bool)
    cv2 = _cv()
    n, labels = cv2.connectedComponents(_u8(mask), connectivity=4, ltype=cv2.CV_32S)
    if n <= 2:                               # background and at most one component
        return mask
    area = np.bincount(labels.ravel(), minlength=n)[1:]     # (cheaper than OpenCV's WithStats)
    best = np.flatnonzero(area == area.max()) + 1
    if len(best) > 1:                        # OpenCV numbers components in its own scan order
        flat = labels.ravel()
        best = best[[int(np.argmin([np.argmax(flat == b) for b in best]))]]
    return labels == best[0]


def _erode(m: np.ndarray, iterations: int = 1) -> np.ndarray:
    """ndimage.binary_erosion(m, iterations=...) of a 2D mask: the 4-connected cross, outside counts as 0."""
    cv2 = _cv()
    out = cv2.erode(_u8(m), _OPENCV["cross"], iterations=int(iterations), borderType=cv2.BORDER_CONSTANT,
                    borderValue=0)
    return out.view(bool)


def _dilate(m: np.ndarray, iterations: int = 1) -> np.ndarray:
    """ndimage.binary_dilation(m, iterations=...) of a 2D mask: the 4-connected cross, outside counts as 0."""
    cv2 = _cv()
    out = cv2.dilate(_u8(m), _OPENCV["cross"], iterations=int(iterations), borderType=cv2.BORDER_CONSTANT,
                     borderValue=0)
    return out.view(bool)


def _fill_holes(m: np.ndarray) -> np.ndarray:
    """ndimage.binary_fill_holes(m) of a 2D mask: background not 4-connected to the image edge is filled
    (a flood fill of the background from a ring of background around the image)."""
    m = np.asarray(m, dtype=bool)
    background = np.ones((m.shape[0] + 2, m.shape[1] + 2), np.uint8)
    np.logical_not(m, out=background[1:-1, 1:-1].view(bool))
    _cv().floodFill(background, None, (0, 0), 2, flags=4)
    return background[1:-1, 1:-1] != 2


def head_mask(hu: np.ndarray) -> np.ndarray:
    """(H, W) HU -> the head: the largest non-air component with its holes (sinuses, ventricles) filled."""
    m = _largest_component(hu > AIR_HU)
    return _fill_holes(m)


def brain_mask(hu: np.ndarray, head: np.ndarray | None = None) -> np.ndarray:
    """(H, W) HU -> brain-window tissue enclosed by the skull.

    Inside = holes of the (slightly closed) bone ring. Where the skull is open (skull base, vertex
    partial volume) no hole exists; then the soft tissue of the head eroded by 6 % of its size
    stands in, which excludes scalp and muscle in practice.
    """
    head = head_mask(hu) if head is None else head
    soft = (hu >= BRAIN_HU[0]) & (hu <= BRAIN_HU[1]) & head
    bone = hu >= BONE_HU
    if bone.any():
        closed = _erode(_dilate(bone, 2), 2)                 # binary_closing(bone, iterations=2)
        inside = _fill_holes(closed) & ~closed
        brain = inside & soft
        if brain.sum() > 0.05 * max(head.sum(), 1):
            return _dilate(_erode(brain))                      # binary_opening(brain, iterations=1)
    radius = max(1, int(round(0.06 * np.sqrt(max(head.sum(), 1)))))
    inner = _erode(head, radius)
    return _dilate(_erode(soft & inner))


def head_and_brain(hu: np.ndarray, jit: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) HU -> (head_mask(hu), brain_mask(hu)); `jit`: both in one compiled pass (`sweep_jit.masks`, numba)
    where it is available, the same masks."""
    if jit:
        from . import sweep_jit

        both = sweep_jit.masks(hu, AIR_HU, BONE_HU, BRAIN_HU)
        if both is not None:
            return both
    head = head_mask(hu)
    return head, brain_mask(hu, head)


def masks_for_volume(hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) HU -> (head, brain) boolean masks of the same shape."""
    heads = np.zeros(hu.shape, dtype=bool)
    brains = np.zeros(hu.shape, dtype=bool)
    for i in range(hu.shape[0]):
        heads[i] = head_mask(hu[i])
        brains[i] = brain_mask(hu[i], heads[i])
    return heads, brains
