"""Anatomical masks computed from HU: the head (everything not air) and the brain (tissue inside the skull).

Used by methods that need the object (the self-supervised patch synthesis keeps patches on the head,
AnatPaste pastes inside the brain, DAE zeroes its noise outside the head).

The morphology is scipy.ndimage's with its default 4-connected cross and border value 0, written
with numpy shifts (erosion, dilation) and one labelling (hole filling) because scipy's general
routines cost ten times more on a 128 x 128 slice; tests/test_stream.py checks both give the same
masks.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

AIR_HU = -500.0
BONE_HU = 300.0
BRAIN_HU = (-15.0, 100.0)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    return labels == (1 + int(np.argmax(sizes)))


def _erode(m: np.ndarray, iterations: int = 1) -> np.ndarray:
    """ndimage.binary_erosion(m, iterations=...) of a 2D mask: the 4-connected cross, outside counts as 0."""
    m = m.astype(bool)
    for _ in range(iterations):
        out = m.copy()
        out[1:] &= m[:-1]
        out[:-1] &= m[1:]
        out[:, 1:] &= m[:, :-1]
        out[:, :-1] &= m[:, 1:]
        out[0] = out[-1] = False
        out[:, 0] = out[:, -1] = False
        m = out
    return m


def _dilate(m: np.ndarray, iterations: int = 1) -> np.ndarray:
    """ndimage.binary_dilation(m, iterations=...) of a 2D mask: the 4-connected cross, outside counts as 0."""
    m = m.astype(bool)
    for _ in range(iterations):
        out = m.copy()
        out[1:] |= m[:-1]
        out[:-1] |= m[1:]
        out[:, 1:] |= m[:, :-1]
        out[:, :-1] |= m[:, 1:]
        m = out
    return m


def _fill_holes(m: np.ndarray) -> np.ndarray:
    """ndimage.binary_fill_holes(m) of a 2D mask: background not 4-connected to the image edge is filled."""
    labels, n = ndimage.label(~m)
    outside = np.zeros(n + 1, bool)
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        outside[edge] = True
    outside[0] = False                      # label 0: the mask itself
    return ~outside[labels]


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


def masks_for_volume(hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) HU -> (head, brain) boolean masks of the same shape."""
    heads = np.zeros(hu.shape, dtype=bool)
    brains = np.zeros(hu.shape, dtype=bool)
    for i in range(hu.shape[0]):
        heads[i] = head_mask(hu[i])
        brains[i] = brain_mask(hu[i], heads[i])
    return heads, brains
