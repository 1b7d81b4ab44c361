"""The reconstruction rows against the MedIAnomaly reference (Cai et al. 2024): parameter counts computed
here from the reference's layer definitions, and each row's training loss on a fixed tiny batch
recomputed by hand (numpy, float64) from the network's own outputs.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ichbench.methods import REGISTRY

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- parameter counts from the reference definitions ---------------------------------------------------
def conv(cin, cout, k, bias=False):
    return cin * cout * k * k + (cout if bias else 0)


def norm(c):                       # BatchNorm / GroupNorm: weight and bias
    return 2 * c


def linear(cin, cout):
    return cin * cout + cout


def reference_conv_encoder(c=3, w=16):
    """4 x [Conv 4x4 s2 p1, no bias -> BN -> ReLU]: c -> w -> 2w -> 4w -> 4w."""
    ch = [c, w, 2 * w, 4 * w, 4 * w]
    return sum(conv(a, b, 4) + norm(b) for a, b in zip(ch, ch[1:]))


def reference_conv_decoder(c_out=3, w=16):
    """3 x [ConvT 4x4 s2 p1, no bias -> BN -> ReLU] 4w -> 4w -> 2w -> w, then ConvT w -> c_out, no bias."""
    ch = [4 * w, 4 * w, 2 * w, w]
    return sum(conv(a, b, 4) + norm(b) for a, b in zip(ch, ch[1:])) + conv(w, c_out, 4)


def reference_ae(c=3, size=128, w=16, hidden=1024, latent=16, enc_out=None, c_out=None, bn=True):
    flat = 4 * w * (size // 16) ** 2
    enc_out = latent if enc_out is None else enc_out
    dense = (linear(flat, hidden) + (norm(hidden) if bn else 0) + linear(hidden, enc_out)
             + linear(latent, hidden) + (norm(hidden) if bn else 0) + linear(hidden, flat))
    return reference_conv_encoder(c, w) + dense + reference_conv_decoder(c if c_out is None else c_out, w)


def reference_ganomaly(c=3, size=128, w=16, hidden=1024, latent=16):
    """-> (generator, discriminator); `reconstruction/networks/ganomaly.py`: no BatchNorm1d anywhere."""
    flat = 4 * w * (size // 16) ** 2
    encoder = reference_conv_encoder(c, w) + linear(flat, hidden) + linear(hidden, latent)
    decoder = linear(latent, hidden) + linear(hidden, flat) + reference_conv_decoder(c, w)
    disc = reference_conv_encoder(c, w) + linear(flat, hidden) + linear(hidden, 1)
    return 2 * encoder + decoder, disc


def reference_unet(c=3, w=64, depth=5):
    """`reconstruction/networks/unet.py` UNet(c, n_classes=c): blocks of 2 x [WSConv 3x3 with bias, GroupNorm];
    up: ConvT 2x2 with bias + block(2a -> a); last 1x1 conv with bias."""
    def block(a, b):
        return conv(a, b, 3, True) + norm(b) + conv(b, b, 3, True) + norm(b)
    ch = [w * 2 ** i for i in range(depth)]
    down = block(c, ch[0]) + sum(block(a, b) for a, b in zip(ch, ch[1:]))
    up = sum(conv(b, a, 2, True) + block(2 * a, a) for a, b in zip(ch, ch[1:]))
    return down + up + conv(ch[0], c, 1, True)


AE_COUNT = reference_ae()
EXPECTED_COUNTS = {
    "AE": AE_COUNT, "AE-L1": AE_COUNT, "AE-Grad": AE_COUNT, "AE-SSIM": AE_COUNT, "AE-PL": AE_COUNT,
    "CeAE": AE_COUNT, "ConstrainedAE": AE_COUNT,
    "AE-U": reference_ae(c_out=6),
    "VAE": reference_ae(enc_out=32),
    "DAE": reference_unet(),
}


def test_reference_counts_are_the_known_numbers():
    # the arithmetic above, pinned: a change of the helpers cannot silently move the targets
    assert AE_COUNT == 8_646_736
    assert EXPECTED_COUNTS["AE-U"] == 8_647_504 and EXPECTED_COUNTS["VAE"] == 8_663_136
    assert reference_ganomaly() == (12_961_984, 4_303_969)
    assert reference_unet() == 31_043_651


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_parameter_count_matches_reference(name):
    extra = {"allow_random_vgg": True} if name == "AE-PL" else {}
    method = REGISTRY[name](extra, in_channels=3, image_size=128, device=CPU)
    assert n_params(method.model) == EXPECTED_COUNTS[name]


def test_ganomaly_parameter_counts_match_reference():
    net = REGISTRY["GANomaly"]({}, in_channels=3, image_size=128, device=CPU).model
    assert (n_params(net.generator), n_params(net.discriminator)) == reference_ganomaly()
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in net.modules())


def test_unet_layout_follows_reference():
    from ichbench.nets.unet import UNet, WSConv2d, median_divisor_groups

    assert [median_divisor_groups(c) for c in (64, 128, 256, 512, 1024)] == [8, 16, 16, 32, 32]
    net = UNet(3, 64, 5)
    kinds = [type(m).__name__ for m in net.down[0]]
    assert kinds == ["ReflectionPad2d", "WSConv2d", "SiLU", "GroupNorm"] * 2          # Swish before the norm
    assert [net.down[i][3].num_groups for i in range(5)] == [8, 16, 16, 32, 32]
    conv0 = net.down[0][1]
    assert conv0.padding == (0, 0) and conv0.bias is not None
    # weight standardisation by hand: (w - mean) / (unbiased std + 1e-5) over each filter
    g = torch.Generator().manual_seed(0)
    layer = WSConv2d(2, 3, 3)
    x = torch.randn(1, 2, 5, 5, generator=g)
    w = layer.weight.detach().double().numpy()
    mean = w.reshape(3, -1).mean(1)[:, None, None, None]
    std = w.reshape(3, -1).std(1, ddof=1)[:, None, None, None]
    ws = torch.from_numpy((w - mean) / (std + 1e-5)).float()
    torch.testing.assert_close(layer(x), F.conv2d(x, ws, layer.bias), rtol=1e-5, atol=1e-6)


# -- each row's loss on a fixed tiny batch, by hand ----------------------------------------------------
SIZE = 32
SMALL = {"width": 8, "hidden": 64, "unet_width": 4, "allow_random_vgg": True, "vgg_layer": "relu2_1"}


def tiny_batch():
    g = torch.Generator().manual_seed(1234)
    x = torch.rand(2, 3, SIZE, SIZE, generator=g) * 2 - 1
    mask = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    mask[:, 4:28, 6:26] = True
    return {"x": x, "head_mask": mask, "brain_mask": mask}


def build(name, **extra):
    known = REGISTRY[name].full_defaults()
    torch.manual_seed(0)
    method = REGISTRY[name]({k: v for k, v in {**SMALL, **extra}.items() if k in known},
                            in_channels=3, image_size=SIZE, device=CPU)
    # a few steps so that BatchNorm running statistics are not the initial ones, then eval mode:
    # the network is then a fixed function and the test can call it again
    b = tiny_batch()
    for step in range(2):
        method.training_step(b, step)
    method.model.eval()
    return method


def np64(t):
    return t.detach().double().numpy()


def loss_of(method, batch, seed=5):
    torch.manual_seed(seed)
    with torch.no_grad():
        return float(method.loss(batch)[0])


@pytest.mark.parametrize("name", ["AE", "AE-Grad"])
def test_mse_rows_by_hand(name):
    method, b = build(name), tiny_batch()
    x = np64(b["x"])
    with torch.no_grad():
        rec = np64(method.model(b["x"]))
    assert loss_of(method, b) == pytest.approx(np.mean((x - rec) ** 2), rel=1e-5)


def test_ae_l1_by_hand():
    method, b = build("AE-L1"), tiny_batch()
    with torch.no_grad():
        rec = np64(method.model(b["x"]))
    assert loss_of(method, b) == pytest.approx(np.mean(np.abs(np64(b["x"]) - rec)), rel=1e-5)


def test_ae_u_by_hand():
    method, b = build("AE-U"), tiny_batch()
    with torch.no_grad():
        out = np64(method.model(b["x"]))
    rec, logvar = out[:, :3], out[:, 3:]
    want = np.mean(10.0 * (np64(b["x"]) - rec) ** 2 * np.exp(-logvar) + logvar)
    assert loss_of(method, b) == pytest.approx(want, rel=1e-5)


def test_vae_by_hand():
    method, b = build("VAE"), tiny_batch()
    got = loss_of(method, b, seed=11)
    with torch.no_grad():
        mu, logvar = method.model.encode(b["x"])
        torch.manual_seed(11)
        eps = torch.randn(mu.shape)                             # the one draw of the loss
        z = np64(mu) + np.exp(0.5 * np64(logvar)) * np64(eps)
        rec = np64(method.model.decode(torch.from_numpy(z).float()))
    mu, logvar = np64(mu), np64(logvar)
    kl = np.mean(np.mean(-0.5 * (1 + logvar - mu ** 2 - np.exp(logvar)), axis=1))
    want = np.mean((np64(b["x"]) - rec) ** 2) + 0.005 * kl
    assert got == pytest.approx(want, rel=1e-5)


def test_constrained_ae_by_hand():
    method, b = build("ConstrainedAE"), tiny_batch()
    with torch.no_grad():
        z = method.model.encode(b["x"])
        rec = method.model.decode(z)
        z_rec = method.model.encode(rec)
    want = np.mean((np64(b["x"]) - np64(rec)) ** 2) + 1.0 * np.mean((np64(z) - np64(z_rec)) ** 2)
    assert loss_of(method, b) == pytest.approx(want, rel=1e-5)


def test_ceae_by_hand():
    method, b = build("CeAE"), tiny_batch()
    got = loss_of(method, b, seed=3)
    side = round(math.sqrt(0.024 * SIZE * SIZE))              # 5 px at 32 (20 px at 128)
    torch.manual_seed(3)
    y0 = torch.randint(0, SIZE - side + 1, (2, 1)).flatten().tolist()
    x0 = torch.randint(0, SIZE - side + 1, (2, 1)).flatten().tolist()
    masked = b["x"].clone()
    for i in range(2):
        masked[i, :, y0[i]:y0[i] + side, x0[i]:x0[i] + side] = -1.0
    with torch.no_grad():
        rec = np64(method.model(masked))
    assert got == pytest.approx(np.mean((np64(b["x"]) - rec) ** 2), rel=1e-5)


def _upsample_align_corners(a, size):
    """Bilinear resize of the last two axes with align_corners=True, by np.interp along each axis."""
    src = np.arange(a.shape[-1])
    pos = np.linspace(0, a.shape[-1] - 1, size)
    a = np.apply_along_axis(lambda r: np.interp(pos, src, r), -1, a)
    return np.apply_along_axis(lambda r: np.interp(pos, src, r), -2, a)


def test_dae_by_hand():
    method, b = build("DAE"), tiny_batch()
    assert method.params["noise_res"] == 16 and method.params["noise_std"] == 0.2
    got = loss_of(method, b, seed=21)
    torch.manual_seed(21)                                     # the loss's draws, in its order
    coarse = np64(torch.randn(2, 3, 16, 16)) * 0.2
    shift = int(torch.randint(0, SIZE, (1,))), int(torch.randint(0, SIZE, (1,)))
    noise = np.roll(_upsample_align_corners(coarse, SIZE), shift, axis=(-2, -1))
    noise = noise * b["head_mask"].numpy()[:, None]
    with torch.no_grad():
        rec = np64(method.model(b["x"] + torch.from_numpy(noise).float()))
    assert got == pytest.approx(np.mean((np64(b["x"]) - rec) ** 2), rel=1e-5)


def test_ae_ssim_by_hand():
    from skimage.metrics import structural_similarity

    method, b = build("AE-SSIM"), tiny_batch()
    with torch.no_grad():
        rec = np64(method.model(b["x"]))
    x01, r01 = np.clip((np64(b["x"]) + 1) / 2, 0, 1), np.clip((rec + 1) / 2, 0, 1)
    valid = np.stack([np.stack([structural_similarity(x01[i, c], r01[i, c], data_range=1.0, gaussian_weights=True,
                                                      sigma=1.5, use_sample_covariance=False, full=True)[1][5:-5, 5:-5]
                                for c in range(3)]) for i in range(2)])
    assert valid.shape == (2, 3, SIZE - 10, SIZE - 10)        # the borders are out of the loss
    assert loss_of(method, b) == pytest.approx(np.mean(1 - valid), rel=1e-4)
    # the map: the valid map upsampled to the image; the slice score is its mean
    s, m = method.score(b)
    up = F.interpolate(torch.from_numpy(1 - valid), size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(m.numpy(), up.mean(dim=1).numpy(), atol=1e-4)
    np.testing.assert_allclose(s.numpy(), up.mean(dim=(1, 2, 3)).numpy(), rtol=1e-4)


def _relative_distance(method, b, mean=None, var=None):
    """The reference's relative L1 on (normalised) VGG features, by hand from the VGG's outputs."""
    imean = np.array([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    istd = np.array([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    with torch.no_grad():
        rec = method.model(b["x"])
        fx, fr = (np64(method.vgg(torch.from_numpy(((np64(t) + 1) / 2 - imean) / istd).float())) for t in (b["x"], rec))
    if mean is not None:
        fx, fr = (fx - mean) / var, (fr - mean) / var
    return np.abs(fx - fr) / np.abs(fx).mean(axis=(1, 2, 3), keepdims=True)


def vgg_weights_file(tmp_path):
    from torchvision.models import vgg as tv_vgg
    """A weights file in torchvision's format (random values): AE-PL treats it as the ImageNet weights."""
    from ichbench.methods import ae_pl

    torch.manual_seed(1)
    state = {f"features.{k}": v for k, v in tv_vgg.make_layers(tv_vgg.cfgs["E"]).state_dict().items()}
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    return str(path)


@pytest.fixture
def feature_stats(shared_data):
    """MedIAnomaly's VGG-19 feature statistics file, from ../shared/data (not shipped with the project)."""
    return shared_data / "medianomaly" / "vgg19_ILSVRC2012_object_detection_mean_var.pt"


def test_ae_pl_by_hand_with_the_reference_feature_normalisation(tmp_path, feature_stats):
    stats = torch.load(feature_stats, weights_only=True)
    mean, var = (np64(t) for t in stats["r21"])             # relu2_1: 128 channels
    assert mean.shape == (1, 128, 1, 1) and (var > 0).all()
    weights = vgg_weights_file(tmp_path)
    method, b = build("AE-PL", vgg_weights=weights, feature_stats=str(feature_stats)), tiny_batch()
    assert method.params["feature_normalization"] is True and method.notes == []
    want = _relative_distance(method, b, mean, var)
    assert loss_of(method, b) == pytest.approx(want.mean(), rel=1e-4)
    # not the identity: without the statistics the value differs
    assert abs(_relative_distance(method, b).mean() - want.mean()) > 1e-3 * want.mean()
    # the map: channel mean of the ratio, upsampled from S/4 (relu2_1) to S
    s, m = method.score(b)
    up = F.interpolate(torch.from_numpy(want.mean(axis=1, keepdims=True)), size=(SIZE, SIZE), mode="bilinear",
                       align_corners=False)
    np.testing.assert_allclose(m.numpy(), up[:, 0].numpy(), rtol=1e-4, atol=1e-6)

    raw = build("AE-PL", vgg_weights=weights, feature_normalization=False)
    assert loss_of(raw, b) == pytest.approx(_relative_distance(raw, b).mean(), rel=1e-4)
    # random weights (no file): the ImageNet statistics do not describe them, so no normalisation, and the note
    rand = build("AE-PL")
    assert "no ImageNet feature normalisation" in rand.notes[0]
    assert loss_of(rand, b) == pytest.approx(_relative_distance(rand, b).mean(), rel=1e-4)


def test_ae_pl_feature_stats_file_errors(tmp_path, feature_stats, monkeypatch):
    from ichbench.methods.ae_pl import AEPL, default_feature_stats_path, default_vgg_path, load_feature_stats

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    assert default_feature_stats_path().parent == default_vgg_path().parent      # looked for beside the weights
    with pytest.raises(FileNotFoundError, match="feature_stats"):
        load_feature_stats(None, "relu4_2", 512)
    mean, var = load_feature_stats(feature_stats, "relu4_2", 512)
    assert mean.shape == var.shape == (1, 512, 1, 1)
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_feature_stats(tmp_path / "nowhere.pt", "relu4_2", 512)
    bad = tmp_path / "bad.pt"
    torch.save({"r11": (torch.zeros(1, 64, 1, 1), torch.ones(1, 64, 1, 1))}, bad)
    with pytest.raises(ValueError, match="no statistics for layer 'relu4_2'"):
        load_feature_stats(bad, "relu4_2", 512)
    with pytest.raises(ValueError, match="not a \\(mean, var\\) pair of 128"):
        load_feature_stats(_save(tmp_path, {"r21": (torch.zeros(3), torch.ones(3))}), "relu2_1", 128)
    assert AEPL.input_files({"vgg_weights": str(tmp_path / "missing.pth")}) == {
        "vgg_weights": None, "feature_stats": None}
    assert AEPL.input_files({"vgg_weights": str(bad)}) == {
        "vgg_weights": str(bad), "feature_stats": str(default_feature_stats_path())}
    assert AEPL.input_files({"vgg_weights": str(bad), "feature_normalization": False}) == {
        "vgg_weights": str(bad), "feature_stats": None}


def _save(tmp_path, obj):
    path = tmp_path / "stats.pt"
    torch.save(obj, path)
    return path


def test_ganomaly_losses_by_hand():
    method, b = build("GANomaly"), tiny_batch()
    x = b["x"]
    with torch.no_grad():
        rec, z, z_hat = method.model.generator(x)
        logit_real, f_real = method.model.discriminator(x)
        logit_fake, f_fake = method.model.discriminator(rec)
    assert f_real.shape == (2, 64)                             # the dense features (hidden = 64 here)
    want_g = (1 * np.mean((np64(f_real) - np64(f_fake)) ** 2) + 50 * np.mean((np64(x) - np64(rec)) ** 2)
              + 1 * np.mean((np64(z) - np64(z_hat)) ** 2))
    assert loss_of(method, b) == pytest.approx(want_g, rel=1e-5)
    p_real, p_fake = 1 / (1 + np.exp(-np64(logit_real))), 1 / (1 + np.exp(-np64(logit_fake)))
    want_d = 0.5 * (np.mean(-np.log(p_real)) + np.mean(-np.log(1 - p_fake)))
    with torch.no_grad():
        assert float(method._discriminator_loss(x, rec)) == pytest.approx(want_d, rel=1e-5)
    s, _ = method.score(b)
    np.testing.assert_allclose(s.numpy(), np.mean((np64(z) - np64(z_hat)) ** 2, axis=1), rtol=1e-5)


def test_ganomaly_reinitialises_after_an_epoch_the_reference_way():
    method = build("GANomaly", d_reinit_below=1e9)            # every epoch mean is "collapsed"
    method.configure_schedulers(steps_per_epoch=3, epochs=1)
    b = tiny_batch()
    disc = method.model.discriminator
    flags = []
    for step in range(3):
        lin_before = disc.features[1].weight.detach().clone()
        conv_before = disc.conv.layers[0][0].weight.detach().clone()
        flags.append(method.training_step(b, step)["d_reinit"])
    assert flags == [0.0, 0.0, 1.0]                            # checked once, at the epoch's end
    conv_w = disc.conv.layers[0][0].weight.detach()
    assert 0.015 < float(conv_w.std()) < 0.025 and not torch.equal(conv_w, conv_before)
    bn = disc.conv.layers[0][1]
    assert float(bn.bias.detach().abs().max()) == 0.0 and abs(float(bn.weight.detach().mean()) - 1) < 0.02
    # the reference's weights_init leaves the Linear layers alone: only the last optimiser step moved them
    assert float((disc.features[1].weight.detach() - lin_before).abs().max()) < 5e-3


@pytest.mark.slow                                             # two snakemake dry runs: ~20 s of CPU
def test_ae_pl_jobs_take_the_vgg_weights_and_statistics_as_inputs(tmp_path, monkeypatch):
    """A dry run: without the VGG-19 weights file AE-PL's train and score jobs read neither file; once it exists,
    it and the statistics file are inputs (and the job params change, so a run with random weights reruns)."""
    import yaml
    from test_pipeline import run_snakemake, tiny_config

    from ichbench.methods.ae_pl import default_feature_stats_path

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_config({"AE-PL": {"allow_random_vgg": True}})))
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def job_inputs():
        out = run_snakemake(tmp_path, "-n", "results/scores/AE-PL/fold-0.csv")
        text = out.stdout + out.stderr
        return {rule: re.search(rf"rule {rule}:\n\s+input: (.*)\n", text).group(1).split(", ")
                for rule in ("train", "score")}

    stats = str(default_feature_stats_path())
    before = job_inputs()
    assert all(stats not in files and not any("vgg19-dcbb9e9d" in f for f in files) for files in before.values())
    assert stats == str(hub / "vgg19_ILSVRC2012_object_detection_mean_var.pt")   # looked for beside the weights
    hub.mkdir(parents=True)
    (hub / "vgg19-dcbb9e9d.pth").write_bytes(b"")
    # weights without the statistics: the plan stops on the missing file before any job runs
    out = run_snakemake(tmp_path, "-n", "results/scores/AE-PL/fold-0.csv", check=False)
    assert out.returncode != 0 and "vgg19_ILSVRC2012_object_detection_mean_var.pt" in out.stdout + out.stderr
    (hub / "vgg19_ILSVRC2012_object_detection_mean_var.pt").write_bytes(b"")
    after = job_inputs()
    assert all(str(hub / "vgg19-dcbb9e9d.pth") in files and stats in files for files in after.values())
