"""Every registered self-supervised row on tiny data: shapes, learning, scoring, checkpoints."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.covariance import LedoitWolf

from ichbench.synthetic.toy import toy_head_slices
from ichbench.methods import REGISTRY, get_method
from ichbench.methods.selfsup import EmbeddingGaussianMethod, PatchSegmentationMethod, mahalanobis

ROWS = ("NSA", "NSA-Intensity", "FPI", "FPI-Poisson", "CutPaste", "CutPaste-2stage", "AnatPaste")
SELF_SUPERVISED = sorted(n for n, c in REGISTRY.items() if c.group == "self-supervised")
SIZE = 64
TINY = {"batch_size": 4, "epochs": 1, "precision": "fp32"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    x, head, brain = toy_head_slices(8, SIZE, seed=2)
    return {"x": torch.from_numpy(x), "head_mask": torch.from_numpy(head), "brain_mask": torch.from_numpy(brain)}


def batch_for(cls, data, idx=slice(None)):
    """Only the keys a row declares in `needs`, as the data loader gives them."""
    return {"x": data["x"][idx], **{k: data[k][idx] for k in cls.needs}}


def make(name, seed=0, **params):
    torch.manual_seed(seed)
    return get_method(name)({**TINY, **params}, in_channels=3, image_size=SIZE, device=torch.device("cpu"))


def test_all_rows_registered():
    assert set(ROWS) <= set(SELF_SUPERVISED)
    assert get_method("CutPaste-2stage").display == "CutPaste (2 stage)"
    assert "brain_mask" in get_method("AnatPaste").needs
    for name in ROWS[:5]:
        assert "head_mask" in get_method(name).needs


@pytest.mark.parametrize("name", SELF_SUPERVISED)
def test_forward_shapes(name, data):
    m = make(name)
    x = data["x"][:2]
    m.model.eval()
    with torch.no_grad():
        out = m.model(x)
    if isinstance(m, PatchSegmentationMethod):
        assert out.shape == (2, 1, SIZE, SIZE)
    else:
        emb, logits = out
        assert emb.shape == (2, 512) and logits.shape == (2, 2)


def _fixed_loss(m, batch):
    """The row's training objective (train-mode BatchNorm, as in training; 8 steps are too few for the
    running statistics) on one fixed synthetic batch (its own generator, a fixed seed)."""
    state = m.rng.bit_generator.state
    m.rng = np.random.default_rng(123)
    syn = m.synthesise(batch)
    m.rng.bit_generator.state = state
    if isinstance(m, PatchSegmentationMethod):
        fixed = {"x": syn.x, "label": syn.label}
    else:
        fixed = {"x": torch.cat([batch["x"], syn.x]),
                 "y": torch.cat([torch.zeros(len(syn.x)), torch.ones(len(syn.x))]).long()}
    m.model.train()
    with torch.no_grad():
        return float(m.loss(fixed)[0])


@pytest.mark.parametrize("name", SELF_SUPERVISED)
def test_training_lowers_the_loss_then_scores(name, data):
    m = make(name)
    m.configure_schedulers(steps_per_epoch=2, epochs=4)
    batches = [batch_for(type(m), data, slice(0, 4)), batch_for(type(m), data, slice(4, 8))]
    before = _fixed_loss(m, batches[0])
    logs = [m.training_step(batches[s % 2], s) for s in range(8)]
    after = _fixed_loss(m, batches[0])
    assert all(np.isfinite(float(lg["loss"])) for lg in logs)
    if isinstance(m, PatchSegmentationMethod):    # two-stage rows: tests/test_twostage.py (fixed pairs)
        assert after < before, (before, after, [round(lg["loss"], 3) for lg in logs])
    assert m.optimizers[0].param_groups[0]["lr"] < m.params["lr"]      # the cosine schedule ran

    m.fit_end(lambda: iter(batches))
    s, fmap = m.score(batches[0])
    assert s.shape == (4,) and torch.isfinite(s).all()
    assert fmap.shape == (4, SIZE, SIZE) and torch.isfinite(fmap).all()
    if isinstance(m, PatchSegmentationMethod):
        assert (fmap >= 0).all() and (fmap <= 1).all()
        assert torch.allclose(s, fmap.mean(dim=(1, 2)), atol=1e-6)    # slice score = mean of the map
    else:
        assert (s > 0).all() and (fmap >= 0).all()

    # model.pt round trip (torch.save as train.py does) reproduces the scores and the anomaly stream
    buf = io.BytesIO()
    torch.save({"state": m.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)["state"]
    m2 = make(name, seed=99)
    m2.configure_schedulers(steps_per_epoch=2, epochs=4)
    m2.load_state_dict(state)
    s2, fmap2 = m2.score(batches[0])
    assert torch.allclose(s, s2, rtol=1e-5, atol=1e-6) and torch.allclose(fmap, fmap2, rtol=1e-4, atol=1e-6)
    a, b = m.synthesise(batches[1]), m2.synthesise(batches[1])
    assert torch.equal(a.x, b.x) and torch.equal(a.label, b.label)
    assert m2.optimizers[0].param_groups[0]["lr"] == pytest.approx(m.optimizers[0].param_groups[0]["lr"])


def test_synthesis_is_seeded_by_the_training_seed(data):
    batch = batch_for(get_method("CutPaste"), data)
    x1 = make("CutPaste", seed=0).synthesise(batch).x
    assert torch.equal(x1, make("CutPaste", seed=0).synthesise(batch).x)
    assert not torch.equal(x1, make("CutPaste", seed=1).synthesise(batch).x)
    assert not torch.equal(x1, make("CutPaste", seed=0, synth_seed=1).synthesise(batch).x)


def test_mahalanobis_hand_computed():
    mean = np.array([1.0, -2.0, 0.5])
    cov = np.array([[2.0, 0.3, 0.0], [0.3, 1.0, -0.2], [0.0, -0.2, 0.5]])
    pts = np.array([[1.0, -2.0, 0.5], [2.0, 0.0, 0.0], [-1.0, -1.0, 1.5]])
    prec = np.linalg.inv(cov)
    want = [np.sqrt((p - mean) @ prec @ (p - mean)) for p in pts]
    # e.g. the second point by hand: d = (1, 2, -0.5)
    got = mahalanobis(torch.tensor(pts), torch.tensor(mean), torch.tensor(prec)).numpy()
    np.testing.assert_allclose(got[1:], want[1:], rtol=1e-10)
    assert got[0] < 1e-5


def test_two_stage_score_is_ledoit_wolf_mahalanobis(data):
    m = make("CutPaste-2stage")
    batches = [batch_for(type(m), data, slice(0, 4)), batch_for(type(m), data, slice(4, 8))]
    m.fit_end(lambda: iter(batches))
    m.model.eval()
    with torch.no_grad():
        e = torch.cat([m.model.embed(b["x"]) for b in batches]).double().numpy()
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    lw = LedoitWolf().fit(e)
    prec = np.linalg.inv(lw.covariance_)
    d = e - e.mean(0)
    want = np.sqrt(np.einsum("ij,jk,ik->i", d, prec, d))
    got = torch.cat([m.score(b)[0] for b in batches]).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert isinstance(m, EmbeddingGaussianMethod) and m.extra_state()["gaussian"]["precision"].shape == (512, 512)


def test_score_before_fit_end_fails(data):
    m = make("AnatPaste")
    with pytest.raises(RuntimeError, match="fit_end"):
        m.score(batch_for(type(m), data, slice(0, 2)))


@pytest.mark.parametrize("name", ["CutPaste", "AnatPaste"])
def test_shared_training_loop(name, data, tmp_path):
    """train.py end to end on an NPZ cache of 8 slices: model.pt, then scoring from it."""
    from ichbench.training.train import load_trained, train

    q = np.clip(np.rint((data["x"].numpy() + 1) * 127.5), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "s.npz", images=q, head_mask=data["head_mask"].numpy(), brain_mask=data["brain_mask"].numpy())
    pd.DataFrame({"patient_id": "p", "study_uid": "st", "series_uid": "se", "sop_uid": [f"u{i}" for i in range(8)],
                  "npz": str(tmp_path / "s.npz"), "slice_index": range(8), "part": "train", "label": 0,
                  "fold": 0}).to_csv(tmp_path / "fold.csv", index=False)
    steps = {"steps_per_epoch": 2} if issubclass(get_method(name), EmbeddingGaussianMethod) else {}
    rec = train(name, {**TINY, "epochs": 2, **steps}, tmp_path / "fold.csv", tmp_path / "out", device="cpu",
                progress=False)
    assert rec["epochs"] == 2
    method, _ = load_trained(tmp_path / "out" / "model.pt", device="cpu")
    s, fmap = method.score(batch_for(type(method), data, slice(0, 3)))
    assert torch.isfinite(s).all() and fmap.shape == (3, SIZE, SIZE)
