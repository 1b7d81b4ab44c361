"""The reconstruction rows of Table 1: contract, behaviour on a toy 'head CT', and the formulas.

Kept small (32 x 32 images, narrow networks, a few hundred steps at most) so that the whole file runs
in about a minute on 2 busy CPU cores.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ichbench.methods import REGISTRY, get_method

CPU = torch.device("cpu")
SIZE = 32
RECON = sorted(n for n, c in REGISTRY.items() if c.group == "reconstruction")
#: cheap settings; each method takes the keys it knows
SMALL = {"width": 8, "hidden": 64, "unet_width": 4, "allow_random_vgg": True, "vgg_layer": "relu2_1"}
EXPECTED = {"AE", "AE-L1", "AE-Grad", "AE-SSIM", "AE-PL", "AE-U", "VAE", "DAE", "CeAE", "ConstrainedAE",
            "GANomaly"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_params(name: str, **extra) -> dict:
    known = REGISTRY[name].full_defaults()
    return {k: v for k, v in {**SMALL, **extra}.items() if k in known}


def build(name: str, size: int = SIZE, seed: int = 0, **extra):
    torch.manual_seed(seed)
    return REGISTRY[name](small_params(name, **extra), in_channels=3, image_size=size, device=CPU)


# -- a toy head CT: skull ring, brain with smooth texture, ventricle; optional hyperdense lesion --------
WINDOWS = ((40, 80), (75, 215), (600, 2800))


def window(hu: torch.Tensor) -> torch.Tensor:
    """(N, S, S) HU -> (N, 3, S, S) in [-1, 1] (brain, subdural, bone windows)."""
    chans = [((hu - (lv - wd / 2)) / wd).clamp(0, 1) * 2 - 1 for lv, wd in WINDOWS]
    return torch.stack(chans, dim=1)


def make_heads(n: int, size: int = SIZE, seed: int = 0):
    """-> (clean x, x with a bright lesion, head mask); the same slices with and without the lesion."""
    g = torch.Generator().manual_seed(seed)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, 1, 1, generator=g)  # noqa: E731
    lin = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    cy, cx, ay, ax = u(-0.06, 0.06), u(-0.06, 0.06), u(0.72, 0.86), u(0.60, 0.74)
    r = torch.sqrt(((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2)
    hu = torch.full((n, size, size), -1000.0)
    hu[r < 1.0] = 1000.0
    texture = sum(u(-6, 6) * torch.exp(-((yy - u(-0.4, 0.4)) ** 2 + (xx - u(-0.4, 0.4)) ** 2) / 0.08)
                  for _ in range(3))
    brain = r < 0.86
    hu = torch.where(brain, 30.0 + texture, hu)
    vent = torch.sqrt(((yy - cy) / (0.18 * ay)) ** 2 + ((xx - cx) / (0.10 * ax)) ** 2) < 1
    hu = torch.where(vent, torch.full_like(hu, 8.0), hu)
    ang, rad = u(0, 2 * math.pi), u(0.30, 0.45)
    ly, lx = cy + rad * ay * torch.sin(ang), cx + rad * ax * torch.cos(ang)
    lesion = ((yy - ly) ** 2 + (xx - lx) ** 2) < 0.2 ** 2
    hu_lesion = torch.where(lesion & brain, torch.full_like(hu, 75.0), hu)
    return window(hu), window(hu_lesion), r < 1.0


def batch_of(x: torch.Tensor, mask: torch.Tensor) -> dict:
    return {"x": x, "head_mask": mask, "brain_mask": mask}


def eval_loss(method, batch, seed=123) -> float:
    torch.manual_seed(seed)
    with torch.no_grad():
        return float(method.loss(batch)[0])


# -- the contract, for every reconstruction row --------------------------------------------------------
def test_registry_has_every_reconstruction_row():
    assert EXPECTED <= set(RECON)
    assert getattr(REGISTRY["ConstrainedAE"], "display", None) == "Constrained AE"
    for name in EXPECTED:
        cls = REGISTRY[name]
        base_keys = {"lr", "batch_size", "epochs", "weight_decay", "precision"}
        assert not (base_keys & set(vars(cls).get("defaults", {}))), f"{name} redefines a recipe key"


@pytest.mark.parametrize("name", RECON)
def test_contract(name):
    x, _, mask = make_heads(8, seed=1)
    batch = batch_of(x, mask)
    method = build(name)
    out = method.model(x)
    assert out.shape[0] == 8 and out.shape[-2:] == (SIZE, SIZE) and out.shape[1] % 3 == 0

    before = eval_loss(method, batch)
    torch.manual_seed(7)
    for step in range(12):
        logs = method.training_step(batch, step)
        assert math.isfinite(logs["loss"])
    after = eval_loss(method, batch)
    assert after < before, f"{name}: loss {before:.4g} -> {after:.4g}"

    s, m = method.score(batch)
    assert s.shape == (8,) and m.shape == (8, SIZE, SIZE)
    assert torch.isfinite(s).all() and torch.isfinite(m).all()

    clone = build(name, seed=99)
    clone.load_state_dict(method.state_dict())
    s2, m2 = clone.score(batch)
    torch.testing.assert_close(s2, s, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(m2, m, rtol=1e-5, atol=1e-7)


def test_losses_stay_float32_under_bf16_autocast():
    x, _, mask = make_heads(4, seed=2)
    batch = batch_of(x, mask)
    for name in RECON:
        method = build(name)
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = method.loss(batch)
        assert loss.dtype == torch.float32 and torch.isfinite(loss), name


# -- behaviour: a hyperdense lesion raises the score -------------------------------------------------
#: per-row settings / known failures of the short behaviour training
BEHAVIOUR = {
    "AE-PL": {"vgg_layer": "relu2_1", "vgg_input_size": 16},
    # the paper's noise grain (16 / 128) at 32 px; a UNet wide enough to learn in 100 steps, 3 levels
    "DAE": {"noise_res": 4, "unet_width": 8, "unet_levels": 3},
}
XFAIL = {
    "GANomaly": "scores in latent space; weak on this toy data as on CQ500 (paper AUC 59.7)",
}


@pytest.fixture(scope="module")
def heads():
    train, _, train_mask = make_heads(96, seed=10)
    clean, lesion, mask = make_heads(16, seed=20)
    return train, train_mask, clean, lesion, mask


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(reason=XFAIL[n], strict=False))
                                  if n in XFAIL else n for n in RECON])
def test_lesion_scores_higher(name, heads):
    train, train_mask, clean, lesion, mask = heads
    method = build(name, lr=2e-3, **BEHAVIOUR.get(name, {}))
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    for step in range(100):
        idx = torch.randint(0, train.shape[0], (16,), generator=g)
        method.training_step(batch_of(train[idx], train_mask[idx]), step)
    s_clean = method.score(batch_of(clean, mask))[0]
    s_lesion = method.score(batch_of(lesion, mask))[0]
    frac = float((s_lesion > s_clean).float().mean())
    assert frac >= 0.75, f"{name}: lesion scored higher on {frac:.0%} of slices"


# -- formulas ---------------------------------------------------------------------------------------
class Fixed(nn.Module):
    """A 'network' that returns a fixed output (to test a method's loss / map wiring)."""

    def __init__(self, out: torch.Tensor):
        super().__init__()
        self.register_buffer("out", out)

    def forward(self, x):
        return self.out


def test_aeu_loss_and_map_by_hand():
    from ichbench.methods.ae_u import aeu_loss, aeu_terms

    x = torch.tensor([0.0, 1.0, -1.0, 0.5]).view(1, 1, 2, 2)
    rec = torch.tensor([0.5, 1.0, 0.0, 0.5]).view(1, 1, 2, 2)
    logvar = torch.tensor([0.0, math.log(2.0), math.log(0.5), -1.0]).view(1, 1, 2, 2)
    out = torch.cat([rec, logvar], dim=1)
    nerr, lv = aeu_terms(x, out)
    want_map = torch.tensor([0.25 / 1, 0 / 2, 1 / 0.5, 0.0]).view(1, 1, 2, 2)
    torch.testing.assert_close(nerr, want_map)
    torch.testing.assert_close(lv, logvar)
    w = 10.0
    want_loss = (w * (0.25 + 0 + 2 + 0) + (0 + math.log(2) + math.log(0.5) - 1)) / 4
    assert float(aeu_loss(x, out, w)) == pytest.approx(want_loss, rel=1e-6)

    method = REGISTRY["AE-U"]({"width": 4, "hidden": 8}, in_channels=1, image_size=16, device=CPU)
    assert method.params["weight"] == 10.0
    xb = torch.zeros(1, 1, 16, 16)
    xb[0, 0, :2, :2] = x[0, 0]
    full = torch.zeros(1, 2, 16, 16)
    full[0, 0, :2, :2], full[0, 1, :2, :2] = rec[0, 0], logvar[0, 0]
    method.model = Fixed(full)
    loss, _ = method.loss({"x": xb})
    assert float(loss) == pytest.approx((w * 2.25 + (-1)) / 256, rel=1e-6)
    s, m = method.score({"x": xb})
    assert float(s) == pytest.approx(2.25 / 256, rel=1e-6)
    torch.testing.assert_close(m[0, :2, :2], want_map[0, 0])


def test_ae_grad_map_matches_finite_differences():
    method = build("AE-Grad", size=16, width=4, hidden=16)
    model = method.model.double().eval()
    x = make_heads(2, size=16, seed=3)[0].double()
    grad = method.score_map({"x": x})
    assert grad.dtype == torch.float64

    def energy(t):
        with torch.no_grad():
            return float(((t - model(t)) ** 2).sum())

    h = 1e-6
    for b, c, i, j in [(0, 0, 8, 8), (1, 1, 3, 12), (0, 2, 0, 0), (1, 0, 10, 5)]:
        xp, xm = x.clone(), x.clone()
        xp[b, c, i, j] += h
        xm[b, c, i, j] -= h
        fd = (energy(xp) - energy(xm)) / (2 * h)
        assert float(grad[b, c, i, j]) == pytest.approx(abs(fd), rel=1e-4, abs=1e-7)


def test_ssim_map_identity_and_skimage():
    from skimage.metrics import structural_similarity

    from ichbench.methods.ae_ssim import ssim_map

    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 24, 24, generator=g)
    assert torch.allclose(1 - ssim_map(a, a), torch.zeros(()), atol=1e-5)
    b = (a + 0.2 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    ours = ssim_map(a, b)
    assert ours.shape == (2, 3, 14, 14)                  # 'valid': 24 - 11 + 1, the border left out
    for i, c in [(0, 0), (1, 2)]:
        ref_mean, ref = structural_similarity(a[i, c].numpy().astype(np.float64), b[i, c].numpy().astype(np.float64),
                                              data_range=1.0, gaussian_weights=True, sigma=1.5,
                                              use_sample_covariance=False, full=True)
        np.testing.assert_allclose(ours[i, c].numpy(), ref[5:-5, 5:-5], atol=2e-4)
    with pytest.raises(ValueError, match="smaller than the 11-pixel window"):
        ssim_map(a[..., :10, :10], b[..., :10, :10])

    method = build("AE-SSIM")
    x = make_heads(2, seed=4)[0]
    method.model = Fixed(x.clone())
    s, m = method.score({"x": x})
    assert torch.allclose(m, torch.zeros_like(m), atol=1e-5) and torch.allclose(s, torch.zeros(2), atol=1e-5)


def test_vae_kl_by_hand():
    from ichbench.methods.vae import kl_divergence

    mu = torch.tensor([[1.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)]])
    # per dim: 0.5 * (mu^2 + var - 1 - log var) -> 0.5 and 0.5 * (1 - log 2); averaged over the 2 dims
    want = (0.5 + 0.5 * (1 - math.log(2.0))) / 2
    assert float(kl_divergence(mu, logvar)) == pytest.approx(want, rel=1e-6)
    assert float(kl_divergence(torch.zeros(1, 4), torch.zeros(1, 4))) == 0.0
    assert (kl_divergence(torch.randn(16, 8), torch.randn(16, 8)) >= 0).all()

    method = build("VAE")
    assert method.params["kl_weight"] == 0.005 and method.params["sample_at_test"] is False
    x, _, mask = make_heads(4, seed=5)
    s1, s2 = method.score(batch_of(x, mask))[0], method.score(batch_of(x, mask))[0]
    torch.testing.assert_close(s1, s2, rtol=0, atol=0)


def test_ganomaly_eval_score_is_deterministic():
    method = build("GANomaly")
    x, _, mask = make_heads(8, seed=6)
    for step in range(3):
        logs = method.training_step(batch_of(x, mask), step)
    assert {"adv", "rec", "lat", "loss_d"} <= set(logs)
    s1, m1 = method.score(batch_of(x, mask))
    s2, _ = method.score(batch_of(x, mask))
    torch.testing.assert_close(s1, s2, rtol=0, atol=0)
    s_one, _ = method.score(batch_of(x[2:3], mask[2:3]))     # eval-mode BatchNorm: no batch effect
    torch.testing.assert_close(s_one, s1[2:3], rtol=1e-5, atol=1e-7)
    assert not method.model.training and m1.shape == (8, SIZE, SIZE)


def test_ganomaly_reinitialises_a_collapsed_discriminator():
    method = build("GANomaly", d_reinit_below=1e9)          # force the re-initialisation
    x, _, mask = make_heads(4, seed=7)
    before = [p.detach().clone() for p in method.model.discriminator.parameters()]
    logs = method.training_step(batch_of(x, mask), 0)
    assert logs["d_reinit"] == 1.0
    after = list(method.model.discriminator.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


def test_ae_pl_weights(monkeypatch, tmp_path, shared_data):
    import shutil

    from torchvision.models import vgg as tv_vgg
    import ichbench.methods.ae_pl as ae_pl

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    params = {"width": 4, "hidden": 8, "vgg_layer": "relu1_2"}
    with pytest.raises(RuntimeError) as err:
        REGISTRY["AE-PL"](params, in_channels=3, image_size=16, device=CPU)
    msg = str(err.value)
    assert "vgg19-dcbb9e9d.pth" in msg and str(tmp_path / "hub" / "checkpoints") in msg
    assert "allow_random_vgg" in msg

    method = REGISTRY["AE-PL"]({**params, "allow_random_vgg": True}, in_channels=3, image_size=16, device=CPU)
    assert method.notes == ["VGG-19 with random weights (and no ImageNet feature normalisation), not the paper's AE-PL"]
    assert not any(k.startswith("vgg") for k in method.state_dict()["model"])

    # a weights file (torchvision's key names) is found in the hub cache and used, and then no note
    feats = ae_pl.build_vgg_features("relu1_2", None, True, seed=5)[0]
    state = {f"features.{k}": v for k, v in tv_vgg.make_layers(tv_vgg.cfgs["E"]).state_dict().items()}
    state.update({f"features.{k}": v for k, v in feats.state_dict().items()})
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth")
    # the ImageNet weights need the feature statistics, looked for beside them
    with pytest.raises(FileNotFoundError, match=ae_pl.FEATURE_STATS_FILE):
        REGISTRY["AE-PL"](params, in_channels=3, image_size=16, device=CPU)
    shutil.copy(shared_data / "medianomaly" / ae_pl.FEATURE_STATS_FILE, tmp_path / "hub" / "checkpoints")
    method = REGISTRY["AE-PL"](params, in_channels=3, image_size=16, device=CPU)
    assert method.notes == []
    torch.testing.assert_close(method.vgg[0].weight, feats[0].weight)


def test_ae_pl_default_layer_map_size():
    method = build("AE-PL", vgg_layer="relu4_2")
    x, _, mask = make_heads(2, seed=8)
    d = method._distance(x)
    assert d.shape == (2, 512, SIZE // 8, SIZE // 8)
    s, m = method.score(batch_of(x, mask))
    assert m.shape == (2, SIZE, SIZE) and torch.isfinite(s).all()


def test_dae_noise_is_coarse_and_masked():
    from ichbench.methods.dae import coarse_noise

    torch.manual_seed(0)
    x = torch.zeros(4, 3, 64, 64)
    mask = torch.zeros(4, 64, 64, dtype=torch.bool)
    mask[:, 10:50, 12:40] = True
    n = coarse_noise(x, 0.2, 16, mask)
    assert n.shape == x.shape
    assert (n[~mask[:, None].expand_as(n)] == 0).all()
    inside = n[mask[:, None].expand_as(n)]
    assert 0.05 < float(inside.std()) < 0.3
    full = coarse_noise(x, 0.2, 16, torch.ones_like(mask))
    # smooth: neighbours differ far less than for white noise (where the mean difference is 1.4 x |n|)
    assert float((full[..., 1:] - full[..., :-1]).abs().mean()) < 0.6 * float(full.abs().mean())
    assert not torch.equal(full[:, 0], full[:, 1])                      # independent channels
    shared = coarse_noise(x, 0.2, 16, None, shared_channels=True)
    assert torch.equal(shared[:, 0], shared[:, 2])


def test_ceae_erases_one_square():
    from ichbench.methods.ceae import erase_random_square

    torch.manual_seed(0)
    x = torch.zeros(6, 3, 128, 128)
    out = erase_random_square(x, 0.024)
    erased = out[:, 0] == -1
    assert (erased.sum(dim=(1, 2)) == 400).all()                      # 20 x 20 px at 128
    rows, cols = erased.any(dim=2), erased.any(dim=1)
    assert (rows.sum(1) == 20).all() and (cols.sum(1) == 20).all()
    assert torch.equal(out[:, 0], out[:, 2]) and (x == 0).all()


def test_dae_reference_noise_on_ct_is_shifted_and_unmasked(monkeypatch):
    """`reference_noise_shift: true, noise_mask: none` = the reference on CT: (n - 0.5) * 2 over the whole
    image, air included; the default masks zero-mean noise with the head mask."""
    from ichbench.methods import dae

    torch.manual_seed(0)
    x = torch.zeros(2, 3, 32, 32) - 1
    head = torch.zeros(2, 32, 32, dtype=torch.bool)
    head[:, 8:24, 8:24] = True
    seen = []
    real = dae.coarse_noise

    def spy(*a, **k):
        n = real(*a, **k)
        seen.append(n)
        return n

    monkeypatch.setattr(dae, "coarse_noise", spy)
    for params in ({}, {"reference_noise_shift": True, "noise_mask": "none"}):
        m = get_method("DAE")({"unet_width": 4, "unet_levels": 2, **params}, in_channels=3, image_size=32,
                              device=torch.device("cpu"))
        m.loss({"x": x, "head_mask": head})
    ours, ref = seen
    air = ~head[:, None].expand_as(ours)
    assert (ours[air] == 0).all() and abs(float(ours[~air].mean())) < 0.1
    assert (ref[air] != 0).all() and abs(float(ref.mean()) + 1.0) < 0.1       # mean -1 everywhere
    with pytest.raises(ValueError, match="noise_mask"):
        get_method("DAE")({"noise_mask": "brain"}, in_channels=3, image_size=32, device=torch.device("cpu"))


def test_constrained_ae_second_pass_updates_the_decoder_half_batchnorm_as_the_reference():
    """The reference's second `bottle_neck` call computes its decoding half too: that BatchNorm1d's running
    statistics see two batches per step (x's latent, then x^'s), the encoding half's as well."""
    torch.manual_seed(0)
    m = get_method("ConstrainedAE")({}, in_channels=3, image_size=32, device=torch.device("cpu"))
    calls = {}
    for name, mod in m.model.bottleneck.named_modules():
        if isinstance(mod, nn.BatchNorm1d):
            mod.register_forward_hook(lambda mod, i, o, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    assert len(calls) == 0 and sum(isinstance(x, nn.BatchNorm1d) for x in m.model.bottleneck.modules()) == 2
    m.model.train()
    m.loss({"x": torch.rand(4, 3, 32, 32) * 2 - 1})
    assert sorted(calls.values()) == [2, 2], calls
