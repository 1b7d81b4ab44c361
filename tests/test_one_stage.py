"""The one-stage rows (NSA, NSA-Intensity, FPI, FPI-Poisson, CutPaste) against MedIAnomaly's reference:
network size, pseudo-labels on changed pixels only, FPI's one alpha per image, augmentation, schedule, loss."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from skimage.filters import median as sk_median
from skimage.morphology import disk

from ichbench.anomalies import one_stage as osa
from ichbench.synthetic.toy import toy_head_slices
from ichbench.methods import get_method
from ichbench.methods.selfsup import rotate_shift
from ichbench.nets.resnet import ResNetEncoderDecoder

SIZE = 64
ROWS = ("NSA", "NSA-Intensity", "FPI", "FPI-Poisson", "CutPaste")
GENERATORS = {
    "NSA": lambda **kw: osa.NSA(label="binary", workers=1, **kw),
    "NSA-Intensity": lambda **kw: osa.NSA(label="logistic", workers=1, **kw),
    "FPI": lambda **kw: osa.FPI(workers=1, **kw),
    "FPI-Poisson": lambda **kw: osa.FPI(poisson=True, workers=1, **kw),
    "CutPaste": lambda **kw: osa.CutPaste(workers=1, **kw),
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def slices():
    x, head, _ = toy_head_slices(6, SIZE, seed=3)
    return torch.from_numpy(x), torch.from_numpy(head)


def codes(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] slices -> float 8-bit codes (B, C, H, W)."""
    return np.rint((x.numpy().astype(np.float64) + 1.0) * 127.5)


def changed_mask(x0: torch.Tensor, x1: torch.Tensor, region: torch.Tensor) -> np.ndarray:
    """The reference's label mask: mean over channels of |x' - x| > 1 grey level inside the patches,
    then cv2.medianBlur(., 5)."""
    diff = np.abs(codes(x1) - codes(x0)).mean(1) * region.numpy()
    return np.stack([cv2.medianBlur((d > 1).astype(np.uint8), 5) for d in diff])


# -- the network -------------------------------------------------------------------------------
def test_parameter_counts_are_the_references():
    # resnet18_enc_dec from its definition: torchvision ResNet-18 without fc (11,689,512 - 513,000),
    # nin 512*256 + 256*128, three transposed blocks (3x3 convT + BN, 3x3 conv + BN, 1x1 convT + BN),
    # the final 7x7 convT 16 -> 1
    def block(i, o):
        return i * o * 9 + 2 * o + o * o * 9 + 2 * o + i * o + 2 * o
    ref3 = (11_689_512 - 513_000) + 512 * 256 + 256 * 128 + block(128, 64) + block(64, 32) + block(32, 16) + 16 * 49
    assert ref3 == 11_497_712
    assert sum(p.numel() for p in ResNetEncoderDecoder(3).parameters()) == 11_497_712
    assert sum(p.numel() for p in ResNetEncoderDecoder(1).parameters()) == 11_491_440 == ref3 - 2 * 64 * 49


def test_network_shape_and_no_batchnorm_in_the_bottleneck():
    net = ResNetEncoderDecoder(1).eval()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.bottleneck.modules())
    assert len(net.decoder) == 3 and net.head.bias is None
    with torch.no_grad():
        assert net(torch.zeros(2, 1, 128, 128)).shape == (2, 1, 128, 128)


# -- pseudo-labels --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ROWS)
def test_positive_label_only_where_the_image_changed(name, slices):
    x, head = slices
    syn = GENERATORS[name]()(x, np.random.default_rng(0), head_mask=head)
    lab = syn.label[:, 0].numpy()
    diff = np.abs(codes(syn.x) - codes(x)).mean(1)
    near = np.stack([cv2.medianBlur((d > 1).astype(np.uint8), 5) for d in diff])   # no patch mask: a superset
    assert (lab > 0).sum() > 100
    assert not ((lab > 0) & (near == 0)).any()
    assert (lab[diff == 0] == 0).mean() > 0.99          # unchanged pixels are normal (but for the median filter)


@pytest.mark.parametrize("name", ROWS)
def test_air_on_air_gives_no_label(name):
    x = torch.full((3, 3, SIZE, SIZE), -1.0)
    head = torch.ones(3, SIZE, SIZE, dtype=torch.bool)        # patches are placed, but nothing changes
    syn = GENERATORS[name]()(x, np.random.default_rng(0), head_mask=head)
    assert syn.region.any()
    assert torch.equal(syn.x, x) and (syn.label == 0).all()


@pytest.mark.parametrize("name", ROWS)
def test_label_is_the_references_formula(name, slices):
    """Head mask everywhere, so each patch mask is its whole box and the label mask is the reference's
    medianBlur(mean |x' - x| > 1 on the boxes); the label follows from it as in `patch_ex`, computed
    here with the reference's own calls (cv2.medianBlur, skimage median with disk(5))."""
    x, _ = slices
    head = torch.ones(x.shape[0], SIZE, SIZE, dtype=torch.bool)
    syn = GENERATORS[name]()(x, np.random.default_rng(2), head_mask=head)
    mask = changed_mask(x, syn.x, syn.region).astype(np.float64)
    lab = syn.label[:, 0].numpy().astype(np.float64)
    assert mask.sum() > 100
    if name in ("NSA", "CutPaste"):
        np.testing.assert_array_equal(lab, mask)
    elif name in ("FPI", "FPI-Poisson"):
        for b in range(x.shape[0]):
            a = np.unique(lab[b][mask[b] > 0])
            assert len(a) <= 1 and (len(a) == 0 or 0.05 <= a[0] <= 0.95)
            np.testing.assert_allclose(lab[b], mask[b] * (a[0] if len(a) else 0), atol=1e-6)
    else:
        d_i = np.abs(codes(syn.x) - codes(x)).mean(1) * mask
        for b in range(x.shape[0]):
            want = mask[b] / (1 + np.exp(-0.5 * (sk_median(d_i[b], disk(5)) - 4)))
            np.testing.assert_allclose(lab[b], want, atol=1e-6)


def test_fpi_draws_one_alpha_per_image(slices):
    x, head = slices
    sampler = osa.PatchSampler(max_patches=3, extra_patch_p=1.0)
    for poisson in (False, True):
        syn = osa.FPI(poisson=poisson, patches=sampler, workers=1)(x, np.random.default_rng(2), head_mask=head)
        lab = syn.label[:, 0].numpy()
        n_alpha = [len(np.unique(lab[b][lab[b] > 0])) for b in range(x.shape[0])]
        assert max(n_alpha) == 1 and sum(n_alpha) >= 4, (poisson, n_alpha)   # (a patch may change nothing)


def test_fpi_is_the_floored_8_bit_interpolation():
    """Two flat slices (codes 100 and 201): each changed pixel of the first is floor((1 - a) 100 + a 201)."""
    x = torch.stack([torch.full((1, SIZE, SIZE), 100 / 127.5 - 1), torch.full((1, SIZE, SIZE), 201 / 127.5 - 1)])
    head = torch.ones(2, SIZE, SIZE, dtype=torch.bool)
    syn = osa.FPI(workers=1)(x, np.random.default_rng(4), head_mask=head)
    for b, (dst, src) in enumerate(((100, 201), (201, 100))):
        a = float(syn.label[b, 0].max())
        region = syn.region[b].numpy()
        got = codes(syn.x)[b, 0]
        assert (got[region] == math.floor((1 - a) * dst + a * src)).all() and (got[~region] == dst).all()


def test_cutpaste_copies_pixels_of_the_same_slice(slices):
    x, head = slices
    syn = osa.CutPaste(workers=1)(x, np.random.default_rng(0), head_mask=head)
    for b in range(x.shape[0]):
        assert set(syn.x[b, 0][syn.region[b]].unique().tolist()) <= set(x[b, 0].unique().tolist())


def test_patch_half_sizes_follow_the_gamma_rule():
    """CutPaste, one patch, object everywhere: box side = 2 x int(clip((0.05 + Gamma(2, 0.03)) 100, 3, 40))
    unless the source box met the border."""
    x = torch.zeros(200, 1, 100, 100)
    head = torch.ones(200, 100, 100, dtype=torch.bool)
    gen = osa.CutPaste(patches=osa.PatchSampler(max_patches=1), workers=1)
    region = gen(x, np.random.default_rng(0), head_mask=head).region.numpy()
    h = region.any(2).sum(1)
    assert h.min() >= 1 and h.max() <= 80
    assert 18 <= np.median(h) <= 24                    # 2 x (5 + 100 x median Gamma(2, 0.03) = 5.0) ~ 20


def _border_jump(img: np.ndarray, y0, x0, h, w) -> float:
    """Mean absolute difference between each pixel on the box's edge and its outside neighbour."""
    jumps = [img[y0, x0:x0 + w] - img[y0 - 1, x0:x0 + w], img[y0 + h - 1, x0:x0 + w] - img[y0 + h, x0:x0 + w],
             img[y0:y0 + h, x0] - img[y0:y0 + h, x0 - 1], img[y0:y0 + h, x0 + w - 1] - img[y0:y0 + h, x0 + w]]
    return float(np.mean(np.abs(np.concatenate(jumps))))


def test_fpi_poisson_softens_the_seam_of_linear_fpi():
    """The same boxes and alpha (same seed) blended linearly and in the gradient domain."""
    rng = np.random.default_rng(0)
    dark = torch.full((1, 3, SIZE, SIZE), -0.7) + 0.002 * torch.arange(SIZE)
    bright = torch.from_numpy(np.clip(0.6 + rng.normal(0, 0.03, (1, 3, SIZE, SIZE)), -1, 1).astype(np.float32))
    x = torch.round((torch.cat([dark, bright]) + 1) * 127.5) / 127.5 - 1
    kw = dict(patches=osa.PatchSampler(max_patches=1), alpha_min=0.9, alpha_max=0.9, workers=1)
    lin = osa.FPI(**kw)(x, np.random.default_rng(5), head_mask=None)
    poi = osa.FPI(poisson=True, **kw)(x, np.random.default_rng(5), head_mask=None)
    assert torch.equal(lin.region, poi.region)
    for b in range(2):
        ys, xs = torch.nonzero(lin.region[b], as_tuple=True)
        y0, x0 = int(ys.min()), int(xs.min())
        h, w = int(ys.max()) - y0 + 1, int(xs.max()) - x0 + 1
        if min(y0, x0) == 0 or y0 + h == SIZE or x0 + w == SIZE:
            continue
        j_lin = _border_jump(lin.x[b, 0].numpy(), y0, x0, h, w)
        j_poi = _border_jump(poi.x[b, 0].numpy(), y0, x0, h, w)
        assert j_lin > 1.0 and j_poi < 0.1 * j_lin, (j_lin, j_poi)


# -- training: augmentation, schedule, loss -------------------------------------------------------
def test_rotate_shift_moves_slice_and_mask_together():
    x = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16) / 512 - 0.5
    mask = x[:, 0] > 0
    rng = np.random.default_rng(0)
    moved, mmask = rotate_shift(x, mask, np.random.default_rng(0), degrees=0.0, shift=2)
    draws = np.random.default_rng(0)
    draws.uniform(0.0, 0.0, 2)                           # the angles come first
    dy, dx = draws.integers(-2, 3, (2, 2)).T
    for b in range(2):                                   # an integer shift, air (-1) coming in
        want = torch.full((16, 16), -1.0)
        ys, xs = slice(max(dy[b], 0), 16 + min(dy[b], 0)), slice(max(dx[b], 0), 16 + min(dx[b], 0))
        yo, xo = slice(max(-dy[b], 0), 16 + min(-dy[b], 0)), slice(max(-dx[b], 0), 16 + min(-dx[b], 0))
        want[ys, xs] = x[b, 0][yo, xo]
        assert torch.equal(moved[b, 0], want)
        assert torch.equal(mmask[b], want > 0)
    rotated, _ = rotate_shift(x, None, rng, degrees=3.0, shift=2)   # nearest: values stay input values
    assert set(rotated.unique().tolist()) <= set(x.unique().tolist()) | {-1.0}


def test_cosine_schedule_steps_once_per_epoch():
    m = get_method("NSA")({"epochs": 4, "precision": "fp32"}, in_channels=1, image_size=32, device=torch.device("cpu"))
    m.configure_schedulers(steps_per_epoch=3, epochs=4)
    lrs = []
    for _ in range(12):
        lrs.append(m.optimizers[0].param_groups[0]["lr"])
        m.optimizers[0].step()
        m.schedulers[0].step()
    want = [1e-6 + (1e-3 - 1e-6) * (1 + math.cos(math.pi * (s // 3) / 4)) / 2 for s in range(12)]
    assert lrs == pytest.approx(want, rel=1e-9)


class FixedLogits(torch.nn.Module):
    def __init__(self, z):
        super().__init__()
        self.z = z

    def forward(self, x):
        return self.z.expand(x.shape[0], -1, -1, -1)


@pytest.mark.parametrize("name", ROWS)
def test_loss_is_pixelwise_bce_computed_by_hand(name):
    m = get_method(name)({"precision": "fp32"}, in_channels=1, image_size=2, device=torch.device("cpu"))
    m.model = FixedLogits(torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]]))
    label = torch.tensor([[[[0.0, 1.0], [0.25, 0.6]]]])
    loss, _ = m.loss({"x": torch.zeros(1, 1, 2, 2), "label": label})
    sig = lambda z: 1 / (1 + math.exp(-z))   # noqa: E731
    want = -sum(y * math.log(sig(z)) + (1 - y) * math.log(1 - sig(z))
                for z, y in ((0.0, 0.0), (2.0, 1.0), (-1.0, 0.25), (3.0, 0.6))) / 4
    assert float(loss) == pytest.approx(want, rel=1e-6)
    assert want == pytest.approx(0.657981, abs=1e-6)   # (ln 2 + 0.126928 + 0.563262 + 1.248587) / 4


@pytest.mark.parametrize("name", ROWS)
def test_training_step_trains_on_the_generators_label(name, slices, monkeypatch):
    """The step augments, synthesises, and fits the network to exactly the generator's label."""
    x, head = slices
    m = get_method(name)({"precision": "fp32", "synth_workers": 1}, in_channels=3, image_size=SIZE,
                         device=torch.device("cpu"))
    seen = {}
    monkeypatch.setattr(m, "loss", lambda batch: (seen.update(batch) or torch.zeros((), requires_grad=True), {}))
    m.training_step({"x": x[:2], "head_mask": head[:2]}, 0)
    state = m.rng.bit_generator.state
    assert seen["label"].shape == (2, 1, SIZE, SIZE) and state is not None


def test_resnet18_built_without_torchvision_equals_torchvision_s():
    """nets.resnet builds torchvision's resnet18(weights=None) itself (no torchvision import in a job): from
    the same seed the same parameter names and values, the same features, and the RNG left in the same state."""
    import torch
    from torchvision.models import resnet18

    from ichbench.nets.resnet import _ResNet18

    for seed in (0, 3):
        torch.manual_seed(seed)
        ref = resnet18(weights=None)
        after_ref = torch.rand(4)
        torch.manual_seed(seed)
        ours = _ResNet18()
        after_ours = torch.rand(4)
        a, b = ref.state_dict(), ours.state_dict()
        assert list(a) == list(b)
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert torch.equal(after_ref, after_ours)
        x = torch.randn(2, 3, 64, 64)
        ref.eval(), ours.eval()
        feats = torch.nn.Sequential(*list(ref.children())[:-2])(x)
        mine = ours.layer4(ours.layer3(ours.layer2(ours.layer1(ours.maxpool(ours.relu(ours.bn1(ours.conv1(x))))))))
        assert torch.equal(feats, mine)
