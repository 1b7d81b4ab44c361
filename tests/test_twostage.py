"""What makes the two-stage rows (CutPaste 2-stage, AnatPaste) those rows: the reference's network and
recipe, the whole-image ColorJitter, AnatPaste's per-image blur, the loss by hand; and the precision and
determinism switches of the training loop, as run.json records them."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision.transforms.functional as TF

from ichbench.anomalies import two_stage as an
from ichbench import config
from ichbench.anomalies import colorjitter
from ichbench.synthetic.toy import toy_head_slices
from ichbench.training.data import DeviceBatches, SliceSet
from ichbench.methods import get_method
from ichbench.methods.base import Method
from ichbench.training.train import _epoch_batches, train

SIZE = 64
TWO_STAGE = ("CutPaste-2stage", "AnatPaste")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    x, head, brain = toy_head_slices(8, SIZE, seed=2)
    return {"x": torch.from_numpy(x), "head_mask": torch.from_numpy(head), "brain_mask": torch.from_numpy(brain)}


def make(name, seed=0, **params):
    torch.manual_seed(seed)
    return get_method(name)({"batch_size": 4, "epochs": 1, **params}, in_channels=3, image_size=SIZE,
                            device=torch.device("cpu"))


def batch_of(name, data, n=4):
    return {"x": data["x"][:n], **{k: data[k][:n] for k in get_method(name).needs}}


# -- the network ------------------------------------------------------------------------------------------
def _conv(cin, cout, k):
    return cin * cout * k * k


def _bn(c):
    return 2 * c


def reference_projection_net_parameters(in_channels=3, head_layers=(512, 128), classes=2) -> int:
    """MedIAnomaly `ssl/two_stage/model.py: ProjectionNet(head_layers=[512, 128])`, counted from its
    definition: torchvision ResNet-18 with fc = Identity, then per head layer Linear + BatchNorm1d (+ ReLU),
    then Linear(128, 2)."""
    n = _conv(in_channels, 64, 7) + _bn(64)                                   # stem
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):             # 4 stages of 2 basic blocks
        n += _conv(cin, cout, 3) + _bn(cout) + _conv(cout, cout, 3) + _bn(cout)
        if stride != 1 or cin != cout:
            n += _conv(cin, cout, 1) + _bn(cout)                            # downsample shortcut
        n += 2 * (_conv(cout, cout, 3) + _bn(cout))
        cin = cout
    for width in head_layers:
        n += cin * width + width + _bn(width)
        cin = width
    return n + cin * classes + classes


def test_parameter_count_matches_the_reference():
    assert reference_projection_net_parameters() == 11_506_370
    for name in TWO_STAGE:
        m = make(name)
        assert sum(p.numel() for p in m.model.parameters()) == reference_projection_net_parameters()
        head = [type(layer).__name__ for layer in m.model.head]
        assert head == ["Linear", "BatchNorm1d", "ReLU"] * 2
        assert m.model.classifier.in_features == 128 and m.model.classifier.out_features == 2


# -- the recipe ------------------------------------------------------------------------------------------
def test_reference_recipe_is_the_rows_own_default():
    for name in TWO_STAGE:
        m = make(name)
        p = m.params
        assert (p["lr"], p["momentum"], p["weight_decay"]) == (0.03, 0.9, 3e-5)
        assert (p["steps_per_epoch"], p["precision"]) == (256, "fp32")
        opt = m.optimizers[0]
        assert isinstance(opt, torch.optim.SGD)
        g = opt.param_groups[0]
        assert (g["lr"], g["momentum"], g["weight_decay"]) == (0.03, 0.9, 3e-5)
        full = get_method(name).full_defaults()
        assert (full["epochs"], full["steps_per_epoch"], full["batch_size"]) == (100, 256, 64)


def test_recipe_all_does_not_change_the_rows_own_recipe():
    cfg = config.load(config.ROOT / "config.yaml")
    cfg["recipes"]["only-all"] = {"all": {"lr": 0.001, "epochs": 250, "weight_decay": 0.0, "batch_size": 32}}
    cfg["recipe"] = "only-all"
    ae = config.method_params(cfg, "AE")
    assert (ae["lr"], ae["epochs"], ae["batch_size"]) == (0.001, 250, 32)
    for name in TWO_STAGE:
        p = config.method_params(cfg, name)
        assert (p["lr"], p["epochs"], p["steps_per_epoch"], p["weight_decay"]) == (0.03, 100, 256, 3e-5)
        assert p["batch_size"] == 32                 # not part of the own recipe: the shared one applies
    # naming the row changes it
    cfg["recipes"]["only-all"]["AnatPaste"] = {"lr": 0.1, "epochs": 3}
    p = config.method_params(cfg, "AnatPaste")
    assert (p["lr"], p["epochs"]) == (0.1, 3)
    # the paper recipe: 100 x 256 steps at SGD 0.03 for these rows, Adam 1e-3 x 250 epochs for the rest
    cfg["recipe"] = "paper"
    assert config.method_params(cfg, "CutPaste-2stage")["lr"] == 0.03
    assert config.method_params(cfg, "CutPaste-2stage")["epochs"] == 100
    assert config.method_params(cfg, "AE")["precision"] == "fp32"


def test_learning_rate_follows_the_references_per_epoch_cosine():
    """CosineAnnealingWarmRestarts(T_0 = epochs).step(e) after epoch e: epoch k >= 1 runs at the value of
    epoch k - 1, epochs 0 and 1 at lr."""
    m = make("CutPaste-2stage")
    m.configure_schedulers(steps_per_epoch=2, epochs=4)
    opt, lrs = m.optimizers[0], []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        m.schedulers[0].step()
    want = [0.03 * (1 + math.cos(math.pi * max(e - 1, 0) / 4)) / 2 for e in (0, 0, 1, 1, 2, 2, 3, 3)]
    np.testing.assert_allclose(lrs, want, rtol=1e-12)
    # torch's own scheduler, stepped as the reference steps it, gives the same values per epoch
    sgd = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.03)
    ref = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(sgd, 4)
    per_epoch = []
    for e in range(4):
        per_epoch.append(sgd.param_groups[0]["lr"])
        sgd.step()
        ref.step(e)
    np.testing.assert_allclose(lrs[::2], per_epoch, rtol=1e-12)


def test_an_epoch_is_a_number_of_steps():
    images = np.zeros((5, 3, 8, 8), np.uint8)
    images[:, 0, 0, 0] = np.arange(5)
    data = SliceSet(images, {}, pd.DataFrame({"i": range(5)}))
    batches = DeviceBatches(data, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    got = list(_epoch_batches(batches, 2, gen, drop_last=True, steps=7))
    assert len(got) == 7 and all(b["x"].shape[0] == 2 for b in got)
    ids = [torch.round((b["x"][:, 0, 0, 0] + 1) * 127.5).long().tolist() for b in got]
    # consecutive shuffled passes: every 2 batches (4 of the 5 slices, drop_last) hold distinct slices
    for k in range(0, 6, 2):
        assert len(set(ids[k] + ids[k + 1])) == 4
    assert len(list(_epoch_batches(batches, 2, gen, drop_last=True, steps=None))) == 2   # one pass


# -- the augmentations -------------------------------------------------------------------------------------
def test_colorjitter_matches_torchvision_on_each_window():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(3, 3, 16, 16, generator=g)
    bright, contrast = torch.tensor([0.9, 1.07, 1.1]), torch.tensor([1.1, 0.93, 0.9])
    first = torch.tensor([True, False, True])
    got = colorjitter.adjust(u, bright, contrast, first)
    for i in range(3):
        for c in range(3):           # each window as a grey image, as torchvision treats the reference's
            v = u[i, c:c + 1]
            if first[i]:
                want = TF.adjust_contrast(TF.adjust_brightness(v, float(bright[i])), float(contrast[i]))
            else:
                want = TF.adjust_brightness(TF.adjust_contrast(v, float(contrast[i])), float(bright[i]))
            torch.testing.assert_close(got[i, c:c + 1], want, rtol=0, atol=1e-6)
    b, c, f = colorjitter.draw(np.random.default_rng(0), 1000, 0.1, 0.1)
    assert 0.9 <= b.min() and b.max() <= 1.1 and 0.9 <= c.min() and c.max() <= 1.1 and 0.4 < f.float().mean() < 0.6


@pytest.mark.parametrize("name", TWO_STAGE)
def test_every_training_image_is_jittered_before_the_paste(name, data):
    m = make(name, jitter=0.0)
    batch = batch_of(name, data)
    rng_state = m.rng.bit_generator.state
    pairs = m.pairs(batch)
    # the same draws by hand: the jitter first, then the generator on the jittered slices
    m.rng.bit_generator.state = rng_state
    jittered = colorjitter.color_jitter(batch["x"], m.rng, 0.1)
    syn = m.generator(jittered, m.rng, head_mask=batch.get("head_mask"), brain_mask=batch.get("brain_mask"))
    n = len(batch["x"])
    assert torch.equal(pairs["x"][:n], jittered)
    assert (pairs["x"][:n] != batch["x"]).flatten(1).any(1).all(), "an image left without jitter"
    changed = (syn.x != jittered).flatten(1).any(1)
    assert torch.equal(pairs["x"][n:], syn.x[changed])
    assert pairs["y"].tolist() == [0] * n + [1] * int(changed.sum())
    # outside the pasted region the augmented copy is the jittered slice, not the raw one
    for i in torch.nonzero(changed)[:, 0].tolist():
        out = ~syn.region[i]
        assert torch.equal(syn.x[i][:, out], jittered[i][:, out])


def test_anatpaste_blur_width_is_drawn_per_image(data, monkeypatch):
    seen = []
    real = an.gaussian_blur_each

    def spy(m, sigmas):
        seen.append(np.asarray(sigmas, dtype=float))
        return real(m, sigmas)

    monkeypatch.setattr(an, "gaussian_blur_each", spy)
    x, brain = data["x"], data["brain_mask"]
    an.AnatPaste()(x, np.random.default_rng(0), brain_mask=brain)
    (sig,) = seen
    assert sig.shape == (len(x),)
    assert (sig >= 0).all() and (sig <= 14 / 224 * SIZE).all()
    assert len(np.unique(sig)) == len(x), "one blur width for several images"


def test_blur_each_is_a_gaussian_blur_per_image():
    g = torch.Generator().manual_seed(1)
    m = (torch.rand(3, 32, 32, generator=g) > 0.7).float()
    sig = np.array([0.0, 1.0, 2.5])
    got = an.gaussian_blur_each(m, sig)
    for i, s in enumerate(sig):
        # up to the truncation (3 sigma of the widest image here, of each image's own there)
        torch.testing.assert_close(got[i], an.gaussian_blur(m[i:i + 1], float(s))[0], rtol=0, atol=1e-3)


def test_anatpaste_inset_shape_is_smaller_than_the_box(data):
    x, brain = data["x"], torch.ones_like(data["brain_mask"])
    kw = dict(area_min=0.1, area_max=0.1, aspect_min=1.0, aspect_max=1.0, alpha_min=1.0, alpha_max=1.0,
              ellipse_p=0.0, blur_min=0.0, blur_max=0.0, jitter=0.0)
    full = an.AnatPaste(margin=0.0, **kw)(x, np.random.default_rng(0), brain_mask=brain)
    inset = an.AnatPaste(margin=4 / SIZE, **kw)(x, np.random.default_rng(0), brain_mask=brain)
    side = round(math.sqrt(0.1 * SIZE * SIZE))                     # 20 px box; 4 px margin -> 12 px
    assert (full.region.flatten(1).sum(1) == side * side).all()
    assert (inset.region.flatten(1).sum(1) == (side - 8) ** 2).all()


# -- the loss, by hand -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TWO_STAGE)
def test_loss_equals_cross_entropy_by_hand(name, data):
    m = make(name)
    batch = batch_of(name, data, 8)
    state = m.rng.bit_generator.state
    pairs = m.pairs(batch)
    y = pairs["y"].numpy()
    n0, n1 = int((y == 0).sum()), int((y == 1).sum())
    assert n0 == 8 and n1 > 0

    # 1) a classifier with known logits (weights 0, bias (0, ln 3)): softmax (1/4, 3/4) for every slice,
    #    so -log p = ln 4 for a normal slice and ln(4/3) for an augmented one
    with torch.no_grad():
        m.model.classifier.weight.zero_()
        m.model.classifier.bias.copy_(torch.tensor([0.0, math.log(3.0)]))
    m.model.train()
    loss, logs = m.loss(pairs)
    want = (n0 * math.log(4.0) + n1 * math.log(4.0 / 3.0)) / (n0 + n1)
    assert float(loss.detach()) == pytest.approx(want, rel=1e-6)
    assert logs["accuracy"] == pytest.approx(n1 / (n0 + n1))

    # 2) a random classifier: the training step's loss = mean over slices of log sum_j exp(l_j) - l_y,
    #    with the logits of the network before the step (train-mode BatchNorm, as in the step)
    torch.manual_seed(5)
    torch.nn.init.normal_(m.model.classifier.weight, std=0.5)
    torch.nn.init.normal_(m.model.classifier.bias, std=0.5)
    m.model.train()
    with torch.no_grad():
        logits = m.model(pairs["x"])[1].double().numpy()
    lse = np.log(np.exp(logits).sum(1))
    by_hand = float(np.mean(lse - logits[np.arange(len(y)), y]))
    m.rng.bit_generator.state = state         # the step draws the same jitter and pastes
    step = m.training_step(batch, 0)
    assert step["loss"] == pytest.approx(by_hand, rel=1e-5)


@pytest.mark.parametrize("name", TWO_STAGE)
def test_training_fits_a_fixed_set_of_pairs(name, data):
    """Random pairs at batch 4 are too noisy for a few steps to show learning; one fixed set is not."""
    m = make(name)
    m.configure_schedulers(steps_per_epoch=8, epochs=1)
    fixed = m.pairs(batch_of(name, data, 8))

    def loss():
        m.model.train()
        with torch.no_grad():
            return float(m.loss(fixed)[0])

    before = loss()
    for s in range(8):
        Method.training_step(m, fixed, s)
    assert loss() < 0.8 * before


# -- precision and determinism -----------------------------------------------------------------------------
def test_precision_is_float32_unless_a_recipe_says_bf16():
    m = make("CutPaste-2stage")
    x = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    m.model.eval()
    with torch.no_grad(), m.autocast():
        assert m.model(x)[1].dtype == torch.float32
    m16 = make("CutPaste-2stage", precision="bf16")
    m16.model.eval()
    with torch.no_grad(), m16.autocast():
        assert m16.model(x)[1].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        make("AE", precision="fp16")
    with pytest.raises(ValueError, match="`amp` was replaced by `precision`"):
        make("AE", amp=False)
    cfg = config.load(config.ROOT / "config.yaml")
    cfg["recipes"]["demo"]["all"]["precision"] = "half"
    with pytest.raises(config.ConfigError, match="precision"):
        config.method_params(cfg, "AE")
    cfg["recipe"] = "paper-bf16"
    assert config.method_params(cfg, "AE-U")["precision"] == "bf16"


def test_ae_u_log_variance_stays_float32_under_bf16():
    m = get_method("AE-U")({"precision": "bf16"}, in_channels=3, image_size=SIZE, device=torch.device("cpu"))
    x = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    m.model.train()
    with m.autocast():
        hidden = m.model.decoder.layers[:-1](m.model.bottleneck.decode(m.model.encode(x)))
        out = m.model(x)
    assert hidden.dtype == torch.bfloat16 and out.dtype == torch.float32      # the output layer is float32
    layer = m.model.decoder.layers[-1].layer
    want = layer(hidden.float())                                              # the same layer, no autocast
    torch.testing.assert_close(m.model.decoder.layers[-1](hidden), want)


@pytest.fixture
def restore_determinism():
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
              os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]
    if before[4] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = before[4]


def _fold(tmp_path, data):
    q = np.clip(np.rint((data["x"].numpy() + 1) * 127.5), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "s.npz", images=q, head_mask=data["head_mask"].numpy(), brain_mask=data["brain_mask"].numpy())
    pd.DataFrame({"patient_id": "p", "study_uid": "st", "series_uid": "se", "sop_uid": [f"u{i}" for i in range(8)],
                  "npz": str(tmp_path / "s.npz"), "slice_index": range(8), "part": "train", "label": 0,
                  "fold": 0}).to_csv(tmp_path / "fold.csv", index=False)
    return tmp_path / "fold.csv"


def test_run_json_records_precision_steps_and_determinism(data, tmp_path, restore_determinism):
    fold = _fold(tmp_path, data)
    params = {"batch_size": 4, "epochs": 1, "steps_per_epoch": 3}
    rec = train("CutPaste-2stage", params, fold, tmp_path / "a", device="cpu", progress=False)
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["precision"] == "fp32" and run["steps_per_epoch"] == 3 and rec["steps_per_epoch"] == 3
    assert run["deterministic"]["requested"] is False
    assert len(pd.read_csv(tmp_path / "a" / "history.csv")) == 1

    train("CutPaste-2stage", params, fold, tmp_path / "b", device="cpu", progress=False, deterministic=True)
    det = json.loads((tmp_path / "b" / "run.json").read_text())["deterministic"]
    assert det == {"requested": True, "use_deterministic_algorithms": True, "warn_only": True,
                   "cudnn_deterministic": True, "cudnn_benchmark": False,
                   "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}
    assert torch.are_deterministic_algorithms_enabled() and os.environ["CUBLAS_WORKSPACE_CONFIG"]
    # CPU training is deterministic either way: the same weights
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["state"]["model"]
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["state"]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_train_rule_passes_the_switch():
    from ichbench.cli import build_parser

    a = build_parser().parse_args(["train", "--method", "AE", "--manifest", "m", "--out", "o", "--deterministic"])
    assert a.deterministic is True
    rule = (config.ROOT / "workflow" / "rules" / "train.smk").read_text()
    assert 'config["train"]["deterministic"]' in rule and "{params.deterministic}" in rule
    assert config.load(config.ROOT / "config.yaml")["train"]["deterministic"] is False


# -- docs/DEVIATIONS.md and Table 1's notes ------------------------------------------------------------------
def test_every_row_has_a_deviations_section_and_table1_points_there():
    from ichbench.evaluation import deviations
    from ichbench.methods import REGISTRY

    doc = (config.ROOT / deviations.DOC).read_text()
    headings = {line[4:].strip() for line in doc.splitlines() if line.startswith("### ")}
    assert set(REGISTRY) <= headings
    assert "## Protocol / training loop" in doc and "## Precision" in doc

    rec = {"notes": ["trained on 96 of 500 slices per fold (max_train_slices)"],
           "params": {"precision": "bf16", "steps_per_epoch": 256}}
    assert deviations.notes("CutPaste-2stage", rec) == (
        "trained on 96 of 500 slices per fold (max_train_slices); bf16 autocast; epoch = 256 steps; "
        "differences: docs/DEVIATIONS.md#cutpaste-2stage")
    assert deviations.notes("AE", {"params": {"precision": "fp32"}}) == "differences: docs/DEVIATIONS.md#ae"


def test_table1_notes_column_points_at_the_deviations(tmp_path):
    from ichbench.evaluation.aggregate import table1

    rng = np.random.default_rng(0)
    scores = pd.DataFrame({"method": "AnatPaste", "fold": 0, "part": "test", "label": [0, 1] * 10,
                           "score": rng.random(20)})
    scores.to_csv(tmp_path / "s.csv", index=False)
    rec = {"group": "self-supervised", "epochs": 100, "notes": [], "params": {"steps_per_epoch": 256}}
    table, _ = table1([str(tmp_path / "s.csv")], {"AnatPaste": rec}, ["AnatPaste"], "paper")
    assert table["notes"].tolist() == ["epoch = 256 steps; differences: docs/DEVIATIONS.md#anatpaste"]


# -- the reference's first-3000 loader (issue 22) -----------------------------------------------------------
def test_first_n_passes_cover_only_the_first_slices():
    images = np.zeros((6, 3, 8, 8), np.uint8)
    images[:, 0, 0, 0] = np.arange(6)
    batches = DeviceBatches(SliceSet(images, {}, pd.DataFrame({"i": range(6)})), torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    got = list(_epoch_batches(batches, 2, gen, drop_last=True, steps=9, first_n=4))
    ids = [torch.round((b["x"][:, 0, 0, 0] + 1) * 127.5).long().tolist() for b in got]
    assert len(got) == 9 and set(sum(ids, [])) == {0, 1, 2, 3}
    for k in range(0, 8, 2):                     # each pass of the 4 is a permutation of them
        assert sorted(ids[k] + ids[k + 1]) == [0, 1, 2, 3]


def test_train_first_n_steps_on_the_first_slices_and_fits_the_gaussian_on_all(data, tmp_path, monkeypatch):
    from ichbench.methods.selfsup import EmbeddingGaussianMethod

    fold = _fold(tmp_path, data)
    stored = np.load(tmp_path / "s.npz")["images"]
    seen, fitted = [], []
    real_step, real_fit = EmbeddingGaussianMethod.training_step, EmbeddingGaussianMethod.fit_end

    def step(self, batch, k):
        seen.append(batch["x"].clone())
        return real_step(self, batch, k)

    def fit(self, train_batches):
        fitted.append(sum(b["x"].shape[0] for b in train_batches()))
        return real_fit(self, train_batches)

    monkeypatch.setattr(EmbeddingGaussianMethod, "training_step", step)
    monkeypatch.setattr(EmbeddingGaussianMethod, "fit_end", fit)
    params = {"batch_size": 2, "epochs": 1, "steps_per_epoch": 6, "train_first_n": 3}
    rec = train("CutPaste-2stage", params, fold, tmp_path / "a", device="cpu", progress=False)
    from ichbench.inputs.windowing import dequantise

    codes = dequantise(torch.from_numpy(stored))
    for x in seen:
        for img in x:
            hits = [i for i in range(len(codes)) if torch.equal(codes[i], img)]
            assert hits and hits[0] < 3, "an update step saw a slice after the first 3"
    assert fitted == [len(stored)]
    assert any("first 3 of 8" in n for n in rec["notes"])


# -- AnatPaste's halo and empty anatomy (issue 22) ----------------------------------------------------------
def _flat_paste(gen_cls, halo, brain):
    x = torch.full((4, 3, SIZE, SIZE), 0.5)
    kw = dict(area_min=0.1, area_max=0.1, aspect_min=1.0, aspect_max=1.0, alpha_min=1.0, alpha_max=1.0,
              ellipse_p=0.0, blur_min=0.1, blur_max=0.1, margin=0.0, jitter=0.0, halo=halo)
    g = gen_cls(**kw)
    rng = np.random.default_rng(0) if gen_cls is an.AnatPaste else torch.Generator().manual_seed(0)
    return x, g(x, rng, brain_mask=brain)


@pytest.mark.parametrize("device_twin", [False, True], ids=["cpu", "device"])
def test_anatpaste_halo_is_black_outside_the_patch_as_the_reference(device_twin):
    from ichbench.anomalies.device import DeviceAnatPaste

    cls = DeviceAnatPaste if device_twin else an.AnatPaste
    brain = torch.ones(4, SIZE, SIZE, dtype=torch.bool)
    x, syn = _flat_paste(cls, "black", brain)
    # a flat slice: the patch equals what it covers, so only the black layer past the box can change pixels
    changed = (syn.x != x).any(1)
    assert changed.any() and (syn.x <= x + 1e-6).all()
    dark = (syn.x - x).mean(1)
    torch.testing.assert_close(dark[changed], syn.label[:, 0][changed] * -1.5)   # x + m (-1 - x), x = 0.5
    lab = syn.label[:, 0]
    inside = lab >= 0.999 * lab.amax((1, 2), keepdim=True)           # the box's centre: the patch, unchanged
    assert inside.any() and not changed[inside].any()
    x, plain = _flat_paste(cls, "image", brain)
    assert torch.equal(plain.x, x)                                    # blended toward the moved flat slice
    with pytest.raises(ValueError, match="halo"):
        cls(halo="grey")


@pytest.mark.parametrize("device_twin", [False, True], ids=["cpu", "device"])
def test_anatpaste_without_anatomy_pastes_anywhere(device_twin, data):
    from ichbench.anomalies.device import DeviceAnatPaste

    x = data["x"][:4]
    none = torch.zeros(4, SIZE, SIZE, dtype=torch.bool)
    if device_twin:
        syn = DeviceAnatPaste()(x, torch.Generator().manual_seed(0), brain_mask=none)
    else:
        syn = an.AnatPaste()(x, np.random.default_rng(0), brain_mask=none)
    assert syn.region.any(dim=(1, 2)).all(), "a slice without brain got no paste (the reference pastes anywhere)"
    assert ((syn.x != x).any(1) & ~syn.region).sum() == 0
