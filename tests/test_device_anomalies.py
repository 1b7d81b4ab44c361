"""The device generators (ichbench.anomalies.device) against OpenCV and the CPU generators.

Tolerances, stated once:
- Poisson blending: on fixed cases the blended image equals `cv2.seamlessClone`'s within 0.5 grey levels mean
  abs difference over the ROI and 1 grey level at most (measured: identical, 0 and 0).
- Statistics, one seed, 96 toy head slices of 64 x 64 (both paths draw different random numbers, so only
  distributions can agree): region share, label mass and changed-pixel share within 35 % of the CPU path's,
  the mean intensity change of changed pixels within 35 %; at least 95 % of the label mass on pixels that
  changed and at most 2 % outside the pasted boxes (the 5 x 5 median may fill a notch, as the reference's does).
- Placement fed the same random numbers as the CPU port: the same patches at the same boxes, exactly for FPI
  and CutPaste, for at least 99 % of NSA's patches (OpenCV's 8-bit resize of the object mask).
"""
from __future__ import annotations

import importlib.util

import cv2
import numpy as np
import pytest
import torch

from ichbench.anomalies import two_stage as an
from ichbench.anomalies import device as da
from ichbench.synthetic.toy import toy_head_slices

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rand_images(seed: int, size: int = 64):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    dst = np.clip(100 + 40 * np.sin(yy / 7.0)[..., None] + rng.normal(0, 5, (size, size, 3)), 0, 255).astype(np.uint8)
    src = np.clip(120 + 60 * np.cos(xx / 5.0)[..., None] + rng.normal(0, 10, (size, size, 3)), 0, 255).astype(np.uint8)
    return dst, src


@pytest.mark.parametrize("y0,x0,h,w,value,flag", [
    (10, 12, 20, 17, 255, cv2.MIXED_CLONE), (5, 9, 31, 24, 255, cv2.NORMAL_CLONE),
    (20, 20, 15, 21, 128, cv2.MIXED_CLONE), (3, 3, 40, 39, 77, cv2.NORMAL_CLONE),
    (30, 2, 12, 50, 255, cv2.MIXED_CLONE)])
def test_poisson_clone_agrees_with_opencv(y0, x0, h, w, value, flag):
    dst, src = _rand_images(h * w)
    patch = src[y0:y0 + h, x0:x0 + w]
    weight = np.full((h, w), value, np.uint8)
    weight[0], weight[-1], weight[:, 0], weight[:, -1] = 0, 0, 0, 0
    ref = cv2.seamlessClone(patch, dst, weight, (x0 + w - w // 2, y0 + h // 2), flag)
    # the ROI as seamlessClone places it: the mask's bounding box centred at the point
    ry, rx, hr, wr = y0 + h // 2 - (h - 2) // 2, x0 + w - w // 2 - (w - 2) // 2, h - 2, w - 2
    t = lambda a: torch.from_numpy(a.astype(np.float32)).permute(2, 0, 1)[None]  # noqa: E731
    out = da.poisson_clone(t(dst[ry:ry + hr, rx:rx + wr]), t(patch[1:h - 1, 1:w - 1]), torch.tensor([value / 255]),
                           torch.tensor([hr]), torch.tensor([wr]), mixed=flag == cv2.MIXED_CLONE)
    mine = out.floor().clamp(0, 255)[0].permute(1, 2, 0).numpy()
    diff = np.abs(mine - ref[ry:ry + hr, rx:rx + wr].astype(np.float32))
    assert (ref != dst).any()                          # the case blends something
    assert diff.mean() < 0.5 and diff.max() <= 1.0
    outside = np.ones(dst.shape[:2], bool)
    outside[ry:ry + hr, rx:rx + wr] = False
    assert (ref[outside] == dst[outside]).all()


def test_poisson_clone_batches_patches_of_different_sizes():
    """Two ROIs of different sizes padded into one batch give each its own single solution."""
    dst, src = _rand_images(1)
    t = lambda a: torch.from_numpy(a.astype(np.float32)).permute(2, 0, 1)  # noqa: E731
    sizes = [(20, 14), (9, 30)]
    singles = [da.poisson_clone(t(dst[:h, :w])[None], t(src[:h, :w])[None], torch.tensor([1.0]),
                                torch.tensor([h]), torch.tensor([w]))[0] for h, w in sizes]
    d = torch.zeros(2, 3, 20, 30)
    s = torch.zeros(2, 3, 20, 30)
    for i, (h, w) in enumerate(sizes):
        d[i, :, :h, :w], s[i, :, :h, :w] = t(dst[:h, :w]), t(src[:h, :w])
    both = da.poisson_clone(d, s, torch.tensor([1.0, 1.0]), torch.tensor([20, 9]), torch.tensor([14, 30]))
    for i, (h, w) in enumerate(sizes):
        assert torch.allclose(both[i, :, :h, :w], singles[i], atol=1e-3)


@pytest.fixture(scope="module")
def toy():
    imgs, heads, brains = toy_head_slices(96, 64, seed=0)
    return torch.from_numpy(imgs), torch.from_numpy(heads), torch.from_numpy(brains)


def _cpu_one_stage(name):
    """The CPU reference of the one-stage rows (MedIAnomaly's patch_ex rules, `ichbench.anomalies.one_stage`)."""
    if importlib.util.find_spec("ichbench.anomalies.one_stage") is None:
        pytest.skip("ichbench.anomalies.one_stage (the CPU patch_ex generators) is not in this checkout")
    from ichbench.anomalies import one_stage as osa
    return {"NSA": osa.NSA("binary"), "NSA-Intensity": osa.NSA("logistic"), "FPI": osa.FPI(),
            "FPI-Poisson": osa.FPI(poisson=True), "CutPaste": osa.CutPaste()}[name]


def _stats(syn, x):
    changed = (syn.x != x).any(1)
    lab = syn.label[:, 0].float()
    return {"region": syn.region.float().mean().item(), "label": lab.mean().item(),
            "changed": changed.float().mean().item(),
            "dI": ((syn.x - x).abs().mean(1) * 127.5)[changed].mean().item()}


ONE_STAGE = ["NSA", "NSA-Intensity", "FPI", "FPI-Poisson", "CutPaste"]


@pytest.mark.parametrize("name", ONE_STAGE + ["CutPaste-2stage", "AnatPaste"])
def test_label_only_where_the_image_changed(name, toy):
    x, head, brain = toy
    syn = da.DEVICE_GENERATORS[name](x, torch.Generator().manual_seed(1), head_mask=head, brain_mask=brain)
    assert syn.x.shape == x.shape and syn.label.shape == (x.shape[0], 1) + x.shape[2:]
    lab = syn.label[:, 0]
    assert float(lab.min()) >= 0 and float(lab.max()) <= 1 and float(lab.sum()) > 0
    # outside the boxes only where the 5 x 5 median fills a notch between boxes (the reference's rule too)
    assert float(lab[~syn.region].sum()) <= 0.02 * float(lab.sum())
    assert (syn.x[~syn.region[:, None].expand_as(x)] == x[~syn.region[:, None].expand_as(x)]).all()
    if name in ONE_STAGE:
        changed = (syn.x != x).any(1)
        assert float(lab[changed].sum()) >= 0.95 * float(lab.sum())


@pytest.mark.parametrize("name", ONE_STAGE)
def test_unchanged_pixels_get_no_label(name):
    """A batch of identical flat images: every patch lands on identical content (air on air), so no
    pixel changes by more than the tolerance and no pixel is labelled, whatever the boxes. (Poisson
    blending truncates its float solution as OpenCV does, so 101.9999 becomes 101: one grey level, as
    `cv2.seamlessClone` gives on the same flat case.)"""
    x = torch.full((6, 3, 48, 48), 102.0) / 127.5 - 1.0     # on the 8-bit grid, as cached slices are
    head = torch.ones(6, 48, 48, dtype=torch.bool)
    syn = da.DEVICE_GENERATORS[name](x, torch.Generator().manual_seed(0), head_mask=head)
    assert syn.region.any()
    assert float((syn.x - x).abs().max()) * 127.5 <= 1.0 + 1e-4
    assert float(syn.label.abs().sum()) == 0


@pytest.mark.parametrize("name", list(da.DEVICE_GENERATORS))
def test_seeded(name, toy):
    x, head, brain = toy
    x, head, brain = x[:8], head[:8], brain[:8]
    gen = da.DEVICE_GENERATORS[name]
    a = gen(x, torch.Generator().manual_seed(3), head_mask=head, brain_mask=brain)
    b = gen(x, torch.Generator().manual_seed(3), head_mask=head, brain_mask=brain)
    c = gen(x, torch.Generator().manual_seed(4), head_mask=head, brain_mask=brain)
    assert torch.equal(a.x, b.x) and torch.equal(a.label, b.label)
    assert not torch.equal(a.x, c.x)


def test_fpi_label_is_alpha_on_changed_pixels(toy):
    x, head, _ = toy
    syn = da.device_fpi()(x[:16], torch.Generator().manual_seed(0), head_mask=head[:16])
    for b in range(16):
        vals = torch.unique(syn.label[b, 0])
        assert len(vals) <= 2                      # 0 and this image's a
        if len(vals) == 2:
            assert 0.05 <= float(vals[1]) <= 0.95


@pytest.mark.parametrize("name", ONE_STAGE)
def test_one_stage_statistics_agree_with_the_cpu_path(name, toy):
    x, head, _ = toy
    cpu = _stats(_cpu_one_stage(name)(x, np.random.default_rng(0), head_mask=head), x)
    dev = _stats(da.DEVICE_GENERATORS[name](x, torch.Generator().manual_seed(0), head_mask=head), x)
    for key in cpu:
        assert abs(dev[key] - cpu[key]) <= 0.35 * abs(cpu[key]), (key, cpu, dev)


def _placements(dev, cpu, x, head, d):
    """(device, CPU) placement of every active patch, both fed the device's draws d: box or None (skipped)."""
    obj = head.bool()
    obj_hat = torch.fft.rfft2(obj.double()) if dev.shift else None
    placed = [dev._place(d, k, obj, da.integral(obj), obj_hat) for k in range(dev.max_patches)]
    dn = {k: (v.double() if k == "scale" else v).numpy() for k, v in d.items()}   # numpy draws float64
    imgs, ob = np.round((x.numpy() + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1), obj.numpy()
    out = []
    for b in range(len(x)):
        s = b if cpu.same else int(dn["src"][b])
        draw = {k: v[b] for k, v in dn.items()}
        for k, (ok, _, (y0, x0, h, w)) in enumerate(placed):
            if draw["active"][k]:
                r = cpu._one_patch(imgs[b], imgs[s], ob[b], ob[s], draw, k, float(draw["alpha"]))
                mine = (int(y0[b]), int(y0[b] + h[b]), int(x0[b]), int(x0[b] + w[b])) if ok[b] else None
                out.append((mine, None if r is None else tuple(r[1])))
    return out


def test_destination_check_is_the_references_overlap():
    """The destination test counts the source object's pixels landing on the destination's object (the
    reference's), not the destination object's share of the box (the old simplification). One 20 x 20 box
    whose left 15 columns are object (coverage 0.75), moved to a box that is 75 % object in both images:
    in image 0 the object is the box's right 15 columns (10 of the 15 source-object columns land on it:
    0.67, rejected), in image 1 its left 15 (all land: accepted); the CPU port decides the same."""
    from ichbench.anomalies import one_stage as osa
    head = torch.zeros(2, 64, 64, dtype=torch.bool)
    head[:, 10:30, 4:19] = True                         # the source box rows 10..29, cols 4..23
    head[0, 34:54, 35:50] = True                        # the destination box rows 34..53, cols 30..49
    head[1, 34:54, 30:45] = True
    x = torch.zeros(2, 1, 64, 64)
    dev = da.device_cutpaste(max_patches=1, max_tries=1)
    half = 10.5 / 64 - dev.base                          # half-size floor((base + gamma) 64) = 10
    d = {"src": torch.arange(2), "alpha": torch.ones(2), "active": torch.ones(2, 1, dtype=torch.bool),
         "gamma": torch.full((2, 1, 2), half), "src_y": torch.full((2, 1, 1), 20), "src_x": torch.full((2, 1, 1), 14),
         "scale": torch.ones(2, 1),                      # centre 11 + floor(u 42) = 44 (rows), 40 (columns)
         "dst_u": torch.tensor([33.5 / 42, 29.5 / 42]).expand(2, 1, 1, 2).clone()}
    cpu = osa.CutPaste(patches=osa.PatchSampler(max_patches=1, max_tries=1))
    (dev0, cpu0), (dev1, cpu1) = _placements(dev, cpu, x, head, d)
    assert dev0 is None and cpu0 is None
    assert dev1 == cpu1 == (34, 54, 30, 50)


@pytest.mark.parametrize("name", ["NSA", "FPI", "CutPaste"])
def test_placement_matches_the_cpu_port_on_the_same_draws(name, toy):
    """Fed the same random numbers, the device placement keeps and places every patch where the CPU port
    does: exactly for FPI and CutPaste; NSA but for OpenCV's 8-bit resize of the object mask, which flips a
    few mask pixels against bilinear >= 0.5 (measured: 1 of 579 patches on these slices; the old
    destination check differed in 14)."""
    x, head, _ = toy
    dev, cpu = da.DEVICE_GENERATORS[name], _cpu_one_stage(name)
    pairs = _placements(dev, cpu, x, head, dev.draw(torch.Generator().manual_seed(0), len(x), x.shape[2:], x.device))
    differ = sum(a != b for a, b in pairs)
    assert sum(a is not None for a, _ in pairs) > 0.5 * len(pairs)
    assert differ <= (0.01 * len(pairs) if name == "NSA" else 0), (differ, len(pairs))


def _device_like(cpu):
    """The device twin of a CPU two-stage generator, with its settings where they exist on both."""
    if isinstance(cpu, an.CutPasteAug):
        return da.DeviceCutPasteAug()
    if hasattr(cpu, "blur_max"):            # blur drawn per image, inset shape, patch jitter (the reference's)
        return da.DeviceAnatPaste(blur_min=cpu.blur_min, blur_max=cpu.blur_max, margin=cpu.margin, jitter=cpu.jitter)
    # an older CPU path: one blur sigma, no inset, no jitter
    return da.DeviceAnatPaste(blur_min=cpu.blur_sigma, blur_max=cpu.blur_sigma, margin=0.0, jitter=0.0)


@pytest.mark.parametrize("cpu", [an.CutPasteAug(), an.AnatPaste()], ids=["CutPaste-2stage", "AnatPaste"])
def test_two_stage_statistics_agree_with_the_cpu_path(cpu, toy):
    dev = _device_like(cpu)
    x, head, brain = toy
    c = _stats(cpu(x, np.random.default_rng(0), head_mask=head, brain_mask=brain), x)
    d = _stats(dev(x, torch.Generator().manual_seed(0), head_mask=head, brain_mask=brain), x)
    for key in ("region", "label", "changed"):
        assert abs(d[key] - c[key]) <= 0.35 * abs(c[key]), (key, c, d)


def test_anatpaste_needs_the_brain_mask(toy):
    with pytest.raises(ValueError, match="brain mask"):
        da.DeviceAnatPaste()(toy[0][:2], torch.Generator())


def test_on_device_takes_the_cpu_generators_call_signature(toy):
    x, head, brain = toy[0][:4], toy[1][:4], toy[2][:4]
    wrapped = da.OnDevice(da.DEVICE_GENERATORS["FPI"], x.device, 5)
    a = wrapped(x, np.random.default_rng(0), head_mask=head, brain_mask=brain)
    b = da.DEVICE_GENERATORS["FPI"](x, torch.Generator().manual_seed(5), head_mask=head, brain_mask=brain)
    assert torch.equal(a.x, b.x) and torch.equal(a.label, b.label)


def test_poisson_clone_ignores_autocast():
    """A training step may call the generator inside bf16 autocast: the solve stays in float32."""
    dst, src = _rand_images(2)
    t = lambda a: torch.from_numpy(a[:20, :24].astype(np.float32)).permute(2, 0, 1)[None]  # noqa: E731
    args = (t(dst), t(src), torch.tensor([1.0]), torch.tensor([20]), torch.tensor([24]))
    plain = da.poisson_clone(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = da.poisson_clone(*args)
    assert inside.dtype == torch.float32 and torch.equal(inside, plain)
