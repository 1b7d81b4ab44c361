"""The training loop without per-step host reads, its options (channels_last, compile, synthesis on the
device) and exact resumption with the device generators."""
from __future__ import annotations

import contextlib
import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

import ichbench.training.train as train_mod
from ichbench.synthetic.toy import toy_head_slices
from ichbench.methods import REGISTRY, get_method
from ichbench.methods.dae import coarse_noise
from ichbench.training.train import load_trained, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 32
SMALL = {"width": 8, "hidden": 64, "unet_width": 4, "allow_random_vgg": True, "vgg_layer": "relu2_1"}
SELF_SUPERVISED = sorted(n for n, c in REGISTRY.items() if c.group == "self-supervised")
#: Tensor methods that read a value back to the host (a device sync on a GPU)
HOST_READS = ("item", "__float__", "__int__", "__bool__", "__index__", "tolist", "numpy")


@pytest.fixture(scope="module")
def data():
    x, head, brain = toy_head_slices(8, SIZE, seed=2)
    return {"x": torch.from_numpy(x), "head_mask": torch.from_numpy(head), "brain_mask": torch.from_numpy(brain)}


def small_params(name: str, **extra) -> dict:
    cls = get_method(name)
    p = {"batch_size": 4, "epochs": 1, **{k: v for k, v in SMALL.items() if k in cls.full_defaults()}}
    if cls.group == "self-supervised":
        p["synthesis"] = "device"
        if "steps_per_epoch" in cls.full_defaults():
            p["steps_per_epoch"] = 2
    return {**p, **extra}


class HostReadGuard:
    """Makes every host read of a tensor fail while armed (optimisers are let through: their step
    counters are host tensors on every device unless `capturable`), and counts the reads while not."""

    def __init__(self, monkeypatch):
        self.armed, self.count = False, 0
        originals = {k: getattr(torch.Tensor, k) for k in HOST_READS}

        def guarded(name):
            def read(*args, **kwargs):
                if self.armed:
                    raise AssertionError(f"host read in a training step: Tensor.{name}")
                return originals[name](*args, **kwargs)
            return read

        for k in HOST_READS:
            monkeypatch.setattr(torch.Tensor, k, guarded(k))

    @contextlib.contextmanager
    def disarmed(self):
        was, self.armed = self.armed, False
        try:
            yield
        finally:
            self.armed = was

    def let_optimisers_through(self, method) -> None:
        for opt in method.optimizers:
            step = opt.step

            def unguarded(*args, _step=step, **kwargs):
                with self.disarmed():
                    return _step(*args, **kwargs)
            opt.step = unguarded


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_no_training_step_reads_a_value_back_to_the_host(name, data, monkeypatch):
    """Every row, self-supervised rows with `synthesis: device`: the step's losses stay tensors."""
    torch.manual_seed(0)
    cls = get_method(name)
    m = cls(small_params(name), in_channels=3, image_size=SIZE, device=torch.device("cpu"))
    m.configure_schedulers(100, 1)            # GANomaly's once-per-epoch check is not reached here
    guard = HostReadGuard(monkeypatch)
    guard.let_optimisers_through(m)
    batch = {"x": data["x"][:4], **{k: data[k][:4] for k in cls.needs}}
    guard.armed = True
    logs = [m.training_step(batch, s) for s in range(2)]
    guard.armed = False
    assert "loss" in logs[0]
    for lg in logs:
        for k, v in lg.items():
            if k != "d_reinit":                # GANomaly's flag: a Python bool of the epoch-end check
                assert isinstance(v, torch.Tensor) and v.dim() == 0, (k, v)
    assert all(np.isfinite(float(v)) for lg in logs for v in lg.values())


def write_fold(tmp_path, data, n=8):
    q = np.clip(np.rint((data["x"][:n].numpy() + 1) * 127.5), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "s.npz", images=q, head_mask=data["head_mask"][:n].numpy(),
             brain_mask=data["brain_mask"][:n].numpy())
    pd.DataFrame({"patient_id": "p", "study_uid": "st", "series_uid": "se", "sop_uid": [f"u{i}" for i in range(n)],
                  "npz": str(tmp_path / "s.npz"), "slice_index": range(n), "part": "train", "label": 0,
                  "fold": 0}).to_csv(tmp_path / "fold.csv", index=False)
    return tmp_path / "fold.csv"


def test_the_loop_reads_the_device_once_per_epoch(data, tmp_path, monkeypatch):
    """Host reads during a whole training (outside the optimiser): 1 epoch vs 3 epochs of 2 steps differ
    by exactly one read per epoch (the epoch's summed logs, one `tolist`), none per step."""
    fold = write_fold(tmp_path, data)
    counts, inside_optimiser = {}, [False]
    originals = {k: getattr(torch.Tensor, k) for k in HOST_READS}
    adam_step = torch.optim.Adam.step

    def counting(name):
        def read(*args, **kwargs):
            if not inside_optimiser[0]:          # Adam reads its host-side step counter: not a device sync
                seen.append(name)
            return originals[name](*args, **kwargs)
        return read

    def step(self, *args, **kwargs):
        inside_optimiser[0] = True
        try:
            return adam_step(self, *args, **kwargs)
        finally:
            inside_optimiser[0] = False

    for epochs in (1, 3):
        seen: list[str] = []
        with monkeypatch.context() as mp:
            for k in HOST_READS:
                mp.setattr(torch.Tensor, k, counting(k))
            mp.setattr(torch.optim.Adam, "step", step)
            train("VAE", small_params("VAE", epochs=epochs), fold, tmp_path / f"e{epochs}", device="cpu",
                  progress=False, checkpoint_every=0)
        counts[epochs] = len(seen)
    assert counts[3] - counts[1] == 2, counts
    h = pd.read_csv(tmp_path / "e3" / "history.csv")
    assert list(h.columns) == ["epoch", "loss", "mse", "kl", "seconds"] and len(h) == 3


def test_epoch_means_reads_all_sums_at_once():
    sums = {"loss": torch.tensor(3.0, dtype=torch.float64), "acc": torch.tensor(1.5, dtype=torch.float64),
            "flag": 1.0}
    assert train_mod.epoch_means(sums) == {"loss": 3.0, "acc": 1.5, "flag": 1.0}


class Killed(Exception):
    pass


def train_killed_after_first_checkpoint(name, params, fold, out, monkeypatch):
    real = train_mod._atomic_save

    def save_then_die(obj, path):
        real(obj, path)
        if path.name == "checkpoint.pt":
            raise Killed
    with monkeypatch.context() as mp:
        mp.setattr(train_mod, "_atomic_save", save_then_die)
        with pytest.raises(Killed):
            train(name, params, fold, out, device="cpu", progress=False, seed=3)
    assert (out / "checkpoint.pt").exists() and not (out / "model.pt").exists()


@pytest.mark.parametrize("name", SELF_SUPERVISED)
def test_device_synthesis_trains_and_resumes_exactly(name, data, tmp_path, monkeypatch):
    fold = write_fold(tmp_path, data)
    params = small_params(name, epochs=2)
    train_killed_after_first_checkpoint(name, params, fold, tmp_path / "killed", monkeypatch)
    ckpt = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert ckpt["state"]["extra"]["torch_generator"].dtype == torch.uint8      # the device RNG is saved
    resumed = train(name, params, fold, tmp_path / "killed", device="cpu", progress=False, seed=3)
    straight = train(name, params, fold, tmp_path / "straight", device="cpu", progress=False, seed=3)
    assert resumed["resumed_from_epoch"] == 1 and straight["resumed_from_epoch"] is None
    a = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)["state"]
    b = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["state"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert torch.equal(a["extra"]["torch_generator"], b["extra"]["torch_generator"])
    h1 = pd.read_csv(tmp_path / "killed" / "history.csv").drop(columns="seconds")
    h2 = pd.read_csv(tmp_path / "straight" / "history.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(h1, h2)
    rec = json.loads((tmp_path / "straight" / "run.json").read_text())
    assert rec["synthesis"] == "device" and rec["channels_last"] is False and rec["compile"] == "off"


def test_a_different_device_seed_draws_different_anomalies(data, tmp_path):
    fold = write_fold(tmp_path, data)
    params = small_params("CutPaste", epochs=1)
    train("CutPaste", params, fold, tmp_path / "a", device="cpu", progress=False, seed=0)
    train("CutPaste", {**params, "synth_seed": 1}, fold, tmp_path / "b", device="cpu", progress=False, seed=0)
    ga = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["state"]["extra"]["torch_generator"]
    gb = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["state"]["extra"]["torch_generator"]
    assert not torch.equal(ga, gb)


@pytest.mark.parametrize("name", ["FPI", "CutPaste-2stage"])
def test_synthesis_auto_is_the_cpu_reference_on_a_cpu(name):
    torch.manual_seed(0)
    m = get_method(name)({"synthesis": "auto"}, in_channels=3, image_size=SIZE, device=torch.device("cpu"))
    assert m.synthesis == "cpu" and m.torch_generator is None and "torch_generator" not in m.extra_state()
    assert not m.channels_last and m.run_options() == {"channels_last": False, "compile": "off", "synthesis": "cpu"}
    with pytest.raises(ValueError, match="synthesis must be"):
        get_method(name)({"synthesis": "gpu"}, in_channels=3, image_size=SIZE, device=torch.device("cpu"))


def test_device_pairs_keep_unchanged_copies_with_weight_zero(data):
    """Two-stage rows on the device: a fixed-size batch, copies identical to their original weigh 0."""
    torch.manual_seed(0)
    m = get_method("AnatPaste")(small_params("AnatPaste"), in_channels=3, image_size=SIZE,
                                device=torch.device("cpu"))
    batch = {"x": data["x"][:4].clone(), "brain_mask": data["brain_mask"][:4].clone()}
    batch["x"][1] = -1.0                                # all air: whatever is pasted, air lands on air
    batch["brain_mask"][1] = False
    pairs = m.pairs(batch)
    assert pairs["x"].shape[0] == 8 and pairs["y"].tolist() == [0] * 4 + [1] * 4
    assert pairs["weight"].tolist() == [1, 1, 1, 1, 1, 0, 1, 1]
    # known logits (weights 0, bias (0, ln 3)): -log p = ln 4 for a normal slice, ln(4/3) for a copy
    with torch.no_grad():
        m.model.classifier.weight.zero_()
        m.model.classifier.bias.copy_(torch.tensor([0.0, np.log(3.0)]))
    loss, logs = m.loss(pairs)
    assert float(loss.detach()) == pytest.approx((4 * np.log(4.0) + 3 * np.log(4.0 / 3.0)) / 7, rel=1e-6)
    assert float(logs["accuracy"]) == pytest.approx(3 / 7)


def test_channels_last_option(data):
    torch.manual_seed(0)
    base = get_method("AE")(small_params("AE"), in_channels=3, image_size=SIZE, device=torch.device("cpu"))
    torch.manual_seed(0)
    nhwc = get_method("AE")(small_params("AE", channels_last=True), in_channels=3, image_size=SIZE,
                            device=torch.device("cpu"))
    assert not base.channels_last and nhwc.channels_last        # auto: off on a CPU
    conv = next(p for p in nhwc.model.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    batch = {"x": data["x"][:4]}
    la = [float(base.training_step(batch, s)["loss"]) for s in range(3)]
    lb = [float(nhwc.training_step(batch, s)["loss"]) for s in range(3)]
    np.testing.assert_allclose(la, lb, rtol=1e-4)               # the same training, another memory layout
    with pytest.raises(ValueError, match="channels_last"):
        get_method("AE")(small_params("AE", channels_last="yes"), in_channels=3, image_size=SIZE,
                         device=torch.device("cpu"))


def test_compile_that_fails_falls_back_to_eager_with_a_warning(data, monkeypatch, caplog):
    def broken(fn, *args, **kwargs):
        def call(*a, **k):
            raise RuntimeError("no C++ compiler found\nlong details")
        return call
    monkeypatch.setattr(torch, "compile", broken)
    torch.manual_seed(0)
    eager = get_method("AE")(small_params("AE"), in_channels=3, image_size=SIZE, device=torch.device("cpu"))
    torch.manual_seed(0)
    m = get_method("AE")(small_params("AE", compile=True), in_channels=3, image_size=SIZE,
                         device=torch.device("cpu"))
    batch = {"x": data["x"][:4]}
    with caplog.at_level(logging.WARNING):
        got = [float(m.training_step(batch, s)["loss"]) for s in range(2)]
    want = [float(eager.training_step(batch, s)["loss"]) for s in range(2)]
    assert got == want                                           # the failed call left nothing half-done
    assert m.compile_status == "failed: RuntimeError: no C++ compiler found"
    assert "torch.compile failed" in caplog.text and "eager" in caplog.text
    assert any("compile" in n for n in m.notes)


def test_dae_noise_roll_is_torch_roll():
    """The device-side roll of the DAE noise = torch.roll with the same draws (CPU results unchanged)."""
    x = torch.zeros(2, 3, 24, 20)
    torch.manual_seed(4)
    got = coarse_noise(x, 0.2, 4)
    torch.manual_seed(4)
    n = torch.randn(2, 3, 4, 4) * 0.2
    n = torch.nn.functional.interpolate(n, size=(24, 20), mode="bilinear", align_corners=True)
    shift = int(torch.randint(0, 24, (1,))), int(torch.randint(0, 20, (1,)))
    assert shift != (0, 0)
    assert torch.equal(got, torch.roll(n, shifts=shift, dims=(-2, -1)))


def test_load_trained_after_device_synthesis(data, tmp_path):
    fold = write_fold(tmp_path, data)
    train("FPI", small_params("FPI"), fold, tmp_path / "m", device="cpu", progress=False)
    method, rec = load_trained(tmp_path / "m" / "model.pt", device="cpu")
    assert rec["synthesis"] == "device" and method.synthesis == "device"



def test_checkpoint_clock_spaces_the_checkpoints():
    """checkpoint_every selects the epochs, checkpoint_seconds skips those too soon after the last one."""
    now = [0.0]
    clock = train_mod.CheckpointClock(1, 60, clock=lambda: now[0])
    got = []
    for epoch in range(1, 9):                 # epochs end 25 s apart: 25 50 75 100 125 150 175 200
        now[0] = 25.0 * epoch
        got.append(clock.due(epoch, 8))
    # 75 s (>= 60 since the start), then 150 s (75 since 75); epoch 8 is the last: model.pt, never a checkpoint
    assert [e for e, d in zip(range(1, 9), got) if d] == [3, 6]
    every2 = train_mod.CheckpointClock(2, 0, clock=lambda: 0.0)
    assert [e for e in range(1, 8) if every2.due(e, 7)] == [2, 4, 6]
    assert not any(train_mod.CheckpointClock(0, 0).due(e, 5) for e in range(1, 6))


def test_checkpoint_seconds_in_training(data, tmp_path, monkeypatch):
    """Through train(): 0 s writes a checkpoint after every epoch but the last; a minimum longer than the run
    writes none, and the model is still written."""
    fold = write_fold(tmp_path, data)

    def saved(checkpoint_seconds):
        epochs_saved = []
        real = train_mod._atomic_save

        def spy(obj, path):
            if path.name == "checkpoint.pt":
                epochs_saved.append(obj["epoch"])
            real(obj, path)
        with monkeypatch.context() as mp:
            mp.setattr(train_mod, "_atomic_save", spy)
            train("AE", small_params("AE", epochs=4), fold, tmp_path / f"c{checkpoint_seconds}", device="cpu",
                  progress=False, checkpoint_seconds=checkpoint_seconds)
        return epochs_saved

    assert saved(0) == [1, 2, 3]
    assert saved(10**6) == []
    assert (tmp_path / f"c{10**6}" / "model.pt").exists()
