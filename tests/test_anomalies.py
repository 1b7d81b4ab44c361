"""The synthetic-anomaly generators (ichbench.anomalies.two_stage) on small head-like slices."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ichbench.anomalies import two_stage as an
from ichbench.anomalies import one_stage as osa
from ichbench.synthetic.toy import toy_head_slices

SIZE = 64

GENERATORS = {
    "NSA": lambda: osa.NSA(label="binary", workers=1),
    "NSA-Intensity": lambda: osa.NSA(label="logistic", workers=2),
    "FPI": lambda: osa.FPI(workers=1),
    "FPI-Poisson": lambda: osa.FPI(poisson=True, workers=1),
    "CutPaste": lambda: osa.CutPaste(workers=1),
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
    if name in PATCH_BASED:   # the 5 x 5 median filter of the label mask may fill a notch between two boxes
        near = torch.nn.functional.max_pool2d(syn.region[:, None].float(), 5, 1, 2)[:, 0] > 0
        assert (syn.label[:, 0][~near] == 0).all(), "label outside the patches"
    else:
        assert (syn.label[:, 0][~syn.region] == 0).all(), "label outside the patches"
    lab = syn.label[:, 0]
    if name == "CutPaste-2stage":                     # binary patch masks cover every changed pixel
        assert (lab[changed] == 1).all()
    elif name == "AnatPaste":                         # soft labels are positive on every changed pixel
        assert (lab[changed] > 0).all()
    # the one-stage rows' labels (changed pixels only): tests/test_one_stage.py


@pytest.mark.parametrize("name", PATCH_BASED)
def test_no_patch_where_the_object_is_too_small(name, slices):
    x = slices[0]
    head = torch.zeros(x.shape[0], SIZE, SIZE, dtype=torch.bool)
    head[:, 30:33, 30:33] = True                       # no patch of >= 4 x 4 px can be 70 % on it
    syn = GENERATORS[name]()(x, np.random.default_rng(0), head_mask=head)
    assert torch.equal(syn.x, x) and not syn.region.any() and (syn.label == 0).all()


@pytest.mark.parametrize("name", GENERATORS)
def test_seeded(name, slices, outputs):
    again = run(name, slices, seed=0)
    assert torch.equal(again.x, outputs[name].x) and torch.equal(again.label, outputs[name].label)
    other = run(name, slices, seed=1)
    assert not torch.equal(other.x, outputs[name].x)


def test_anatpaste_changes_only_the_brain(outputs, slices):
    x, head, brain = slices
    syn = outputs["AnatPaste"]
    changed = (syn.x != x).any(1)
    assert changed.any()
    assert not (changed & ~brain).any()
    assert not (syn.region & ~brain).any()
    # opacity <= alpha_max, blurred edges: the weight stays below 1 and is soft somewhere
    assert syn.label.max() <= 1.0 and ((syn.label > 0) & (syn.label < 0.5)).any()


def test_anatpaste_without_brain_pastes_anywhere_as_the_reference(slices):
    x, head, brain = slices
    syn = an.AnatPaste()(x, np.random.default_rng(0), head_mask=head, brain_mask=torch.zeros_like(brain))
    assert syn.region.any(dim=(1, 2)).all() and not torch.equal(syn.x, x)


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


def test_uint8_round_trip_is_exact(slices):
    x = slices[0]
    assert torch.equal(an.from_uint8_hwc(an.to_uint8_hwc(x), x), x)
