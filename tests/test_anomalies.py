"""The synthetic-anomaly generators (ichbench.anomalies) on small head-like slices."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ichbench import anomalies as an
from ichbench.anomaly_figure import toy_head_slices

SIZE = 64

GENERATORS = {
    "NSA": lambda: an.NSA(label="binary", workers=1),
    "NSA-Intensity": lambda: an.NSA(label="logistic", workers=2),
    "FPI": lambda: an.FPI(),
    "FPI-Poisson": lambda: an.FPI(poisson=True, workers=1),
    "CutPaste": lambda: an.CutPaste(),
    "CutPaste-2stage": lambda: an.CutPasteAug(),
    "AnatPaste": lambda: an.AnatPaste(),
}
PATCH_BASED = ("NSA", "NSA-Intensity", "FPI", "FPI-Poisson", "CutPaste")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def slices():
    x, head, brain = toy_head_slices(6, SIZE, seed=1)
    return torch.from_numpy(x), torch.from_numpy(head), torch.from_numpy(brain)


def run(name, slices, seed=0):
    x, head, brain = slices
    return GENERATORS[name]()(x, np.random.default_rng(seed), head_mask=head, brain_mask=brain)


@pytest.fixture(scope="module")
def outputs(slices):
    return {name: run(name, slices) for name in GENERATORS}


@pytest.mark.parametrize("name", GENERATORS)
def test_shapes_and_label_range(name, outputs, slices):
    x = slices[0]
    syn = outputs[name]
    assert syn.x.shape == x.shape and syn.x.dtype == x.dtype
    assert syn.label.shape == (x.shape[0], 1, SIZE, SIZE)
    assert syn.region.shape == (x.shape[0], SIZE, SIZE) and syn.region.dtype == torch.bool
    assert torch.isfinite(syn.x).all() and syn.x.min() >= -1 and syn.x.max() <= 1
    assert syn.label.min() >= 0 and syn.label.max() <= 1
    changed = (syn.x != x).any(1)
    assert changed.any(), "the generator changed nothing"


@pytest.mark.parametrize("name", GENERATORS)
def test_changes_stay_inside_the_labelled_region(name, outputs, slices):
    x = slices[0]
    syn = outputs[name]
    changed = (syn.x != x).any(1)
    assert not (changed & ~syn.region).any(), "pixels changed outside the patches"
    assert (syn.label[:, 0][~syn.region] == 0).all(), "label outside the patches"
    lab = syn.label[:, 0]
    if name in ("CutPaste", "CutPaste-2stage"):       # binary patch masks cover every changed pixel
        assert (lab[changed] == 1).all()
    elif name in ("FPI", "FPI-Poisson", "AnatPaste"):  # soft labels are positive on every changed pixel
        assert (lab[changed] > 0).all()
    elif name == "NSA-Intensity":                     # sigmoid(k (dI - t)) > 1/2 exactly where dI > t
        d_i = (syn.x - x).abs().amax(1)
        strong = d_i > an.NSA().logistic_t + 1e-6
        assert (lab[strong] > 0.5).all()
        assert (lab[syn.region] >= torch.sigmoid(torch.tensor(-2.0)) - 1e-6).all()
    elif name == "NSA":                               # binary, median-filtered: covers the bulk of the change
        strong = (syn.x - x).abs().amax(1) > an.NSA().threshold
        assert strong.any()
        assert lab[strong].mean() > 0.8
        assert set(lab.unique().tolist()) <= {0.0, 1.0}


def test_fpi_label_is_the_interpolation_weight(slices):
    x, head, _ = slices
    gen = an.FPI(patches=an.PatchSampler(max_patches=1))
    syn = gen(x, np.random.default_rng(3), head_mask=head)
    for b in range(x.shape[0]):
        if not syn.region[b].any():
            continue
        a = syn.label[b, 0][syn.region[b]].unique()
        assert len(a) == 1 and 0.05 <= float(a) <= 0.95
        inside = syn.region[b]                         # solve x' = (1 - a) x + a x_other for x_other:
        other = (syn.x[b][:, inside] - (1 - a) * x[b][:, inside]) / a   # it is another slice of the batch
        assert any(torch.allclose(other, x[j][:, inside], atol=1e-4) for j in range(x.shape[0]) if j != b)


def test_patches_respect_the_head_mask(slices):
    _, head, _ = slices
    head = head.numpy()
    sampler = an.PatchSampler()
    n_ok = 0
    for other, move, scale in ((True, True, (0.5, 0.7, 1.3)), (True, False, None), (False, True, None)):
        for slot in sampler.sample(np.random.default_rng(0), head, other_image=other, move=move, scale=scale):
            for b in np.nonzero(slot.ok)[0]:
                n_ok += 1
                dst = head[b, slot.yd[b]:slot.yd[b] + slot.hd[b], slot.xd[b]:slot.xd[b] + slot.wd[b]]
                src = head[slot.src[b], slot.ys[b]:slot.ys[b] + slot.h[b], slot.xs[b]:slot.xs[b] + slot.w[b]]
                assert dst.mean() > 0.7 and src.mean() > 0.7
                assert dst.size == slot.hd[b] * slot.wd[b]      # inside the image
                assert min(slot.yd[b], slot.xd[b]) >= 1 and slot.yd[b] + slot.hd[b] <= SIZE - 1
                if other:
                    assert slot.src[b] != b
                if not move:
                    assert (slot.yd[b], slot.xd[b]) == (slot.ys[b], slot.xs[b])
    assert n_ok >= 10


def test_patch_sizes_follow_the_gamma_rule():
    head = np.ones((50, 100, 100), bool)
    slots = an.PatchSampler().sample(np.random.default_rng(0), head, other_image=False, move=True)
    h = np.concatenate([s.h[s.ok] for s in slots])
    assert h.min() >= 6 and h.max() <= 80             # half-size 3 % - 40 % of 100 px
    assert 15 < np.median(h) < 30                      # 2 x (0.05 + Gamma(2, 0.03)) x 100: median ~ 20
    n = sum(s.ok for s in slots)
    assert (n >= 1).all() and (n <= 3).all() and 1.7 < n.mean() < 2.3   # 1 + 2 x 0.5 on average


@pytest.mark.parametrize("name", PATCH_BASED)
def test_no_patch_where_the_object_is_too_small(name, slices):
    x = slices[0]
    head = torch.zeros(x.shape[0], SIZE, SIZE, dtype=torch.bool)
    head[:, 30:33, 30:33] = True                       # no patch of >= 6 px can be 70 % on it
    syn = GENERATORS[name]()(x, np.random.default_rng(0), head_mask=head)
    assert torch.equal(syn.x, x) and not syn.region.any() and (syn.label == 0).all()


@pytest.mark.parametrize("name", GENERATORS)
def test_seeded(name, slices, outputs):
    again = run(name, slices, seed=0)
    assert torch.equal(again.x, outputs[name].x) and torch.equal(again.label, outputs[name].label)
    other = run(name, slices, seed=1)
    assert not torch.equal(other.x, outputs[name].x)


def _border_jump(img: np.ndarray, y0, x0, h, w) -> float:
    """Mean absolute difference between each pixel on the box's edge and its outside neighbour."""
    jumps = [img[y0, x0:x0 + w] - img[y0 - 1, x0:x0 + w], img[y0 + h - 1, x0:x0 + w] - img[y0 + h, x0:x0 + w],
             img[y0:y0 + h, x0] - img[y0:y0 + h, x0 - 1], img[y0:y0 + h, x0 + w - 1] - img[y0:y0 + h, x0 + w]]
    return float(np.mean(np.abs(np.concatenate(jumps))))


def test_poisson_blending_leaves_no_hard_seam():
    """A bright textured patch pasted into a dark smooth image. A hard paste (CutPaste, linear FPI)
    jumps by the intensity offset (~150 grey levels) at the box edge. Poisson blending keeps the
    destination on the box's boundary ring and follows the source's gradients inside, so the step
    across the edge is of the order of one texture gradient (here <= ~8 levels), not of the offset:
    we require it below 10 % of the hard seam and below twice the source's own mean gradient."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    dst = np.repeat((40 + 0.3 * xx)[..., None], 3, 2).astype(np.uint8)
    src = np.repeat(np.clip(190 + rng.normal(0, 4, (64, 64)) + 0.2 * yy, 0, 255)[..., None], 3, 2).astype(np.uint8)
    y0, x0, h, w = 20, 14, 24, 30
    hard = dst.astype(float).copy()
    hard[y0:y0 + h, x0:x0 + w] = src[y0:y0 + h, x0:x0 + w]
    job = [(0, y0, x0, h, w, y0, x0, h, w, None)]
    soft = {}
    for mode, flag in an.CLONE_FLAGS.items():
        soft[mode] = an.poisson_paste(dst, src[None], job, flag).astype(float)
    hard_jump = _border_jump(hard[..., 0], y0, x0, h, w)
    src_grad = float(np.mean(np.abs(np.diff(src[y0:y0 + h, x0:x0 + w, 0].astype(float), axis=1))))
    assert hard_jump > 100
    for mode, img in soft.items():
        jump = _border_jump(img[..., 0], y0, x0, h, w)
        assert jump < 0.1 * hard_jump and jump < 2 * src_grad, (mode, jump, hard_jump, src_grad)
        inside = img[y0 + 1:y0 + h - 1, x0 + 1:x0 + w - 1, 0]
        assert np.abs(inside - dst[y0 + 1:y0 + h - 1, x0 + 1:x0 + w - 1, 0]).mean() > 2  # the patch is there
        outside = np.ones((64, 64), bool)
        outside[y0:y0 + h, x0:x0 + w] = False
        assert np.array_equal(img[outside], dst[outside].astype(float))


def test_fpi_poisson_softens_the_seam_of_linear_fpi():
    """The same boxes and weights (same seed) blended linearly and in the gradient domain."""
    rng = np.random.default_rng(0)
    dark = torch.full((1, 3, SIZE, SIZE), -0.7) + 0.002 * torch.arange(SIZE)
    bright = torch.from_numpy(np.clip(0.6 + rng.normal(0, 0.03, (1, 3, SIZE, SIZE)), -1, 1).astype(np.float32))
    x = torch.round((torch.cat([dark, bright]) + 1) * 127.5) / 127.5 - 1
    patches = an.PatchSampler(max_patches=1)
    kw = dict(patches=patches, alpha_min=0.9, alpha_max=0.9)
    lin = an.FPI(**kw)(x, np.random.default_rng(5), head_mask=None)
    poi = an.FPI(poisson=True, workers=1, **kw)(x, np.random.default_rng(5), head_mask=None)
    assert torch.equal(lin.region, poi.region) and torch.equal(lin.label, poi.label)
    for b in range(2):
        ys, xs = torch.nonzero(lin.region[b], as_tuple=True)
        y0, x0 = int(ys.min()), int(xs.min())
        h, w = int(ys.max()) - y0 + 1, int(xs.max()) - x0 + 1
        j_lin = _border_jump(lin.x[b, 0].numpy(), y0, x0, h, w)
        j_poi = _border_jump(poi.x[b, 0].numpy(), y0, x0, h, w)
        assert j_lin > 1.0 and j_poi < 0.1 * j_lin, (j_lin, j_poi)
    # the dark slice received the bright slice's texture (gradients), not its offset
    assert (poi.x[0] - x[0]).abs()[:, poi.region[0]].mean() > 0.5 * an.GREY_LEVEL


def test_anatpaste_changes_only_the_brain(outputs, slices):
    x, head, brain = slices
    syn = outputs["AnatPaste"]
    changed = (syn.x != x).any(1)
    assert changed.any()
    assert not (changed & ~brain).any()
    assert not (syn.region & ~brain).any()
    # opacity <= alpha_max, blurred edges: the weight stays below 1 and is soft somewhere
    assert syn.label.max() <= 1.0 and ((syn.label > 0) & (syn.label < 0.5)).any()


def test_anatpaste_without_brain_changes_nothing(slices):
    x, head, brain = slices
    syn = an.AnatPaste()(x, np.random.default_rng(0), head_mask=head, brain_mask=torch.zeros_like(brain))
    assert torch.equal(syn.x, x) and not syn.region.any()


def test_cutpaste_2stage_box_sizes(slices):
    x = slices[0].repeat(8, 1, 1, 1)
    syn = an.CutPasteAug(jitter=0.0)(x, np.random.default_rng(0))
    area = syn.region.flatten(1).float().mean(1)
    assert area.min() >= 0.015 and area.max() <= 0.16       # 2 - 15 % up to rounding
    # without jitter the pasted pixels are copies of pixels of the same slice
    for b in range(x.shape[0]):
        vals = set(syn.x[b, 0][syn.region[b]].unique().tolist())
        assert vals <= set(x[b, 0].unique().tolist())


def test_intensity_scale_conversion():
    assert an.GREY_LEVEL * 127.5 == pytest.approx(1.0)
    gen = an.NSA(label="logistic")
    assert gen.logistic_k == pytest.approx(63.75) and gen.logistic_t == pytest.approx(4 / 127.5)


def test_uint8_round_trip_is_exact(slices):
    x = slices[0]
    assert torch.equal(an.from_uint8_hwc(an.to_uint8_hwc(x), x), x)
