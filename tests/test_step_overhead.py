"""What a row's training step costs beyond its bare loop (issue 24 item 5): the CPU optimisers' multi-tensor
update changes no number, the one-stage generators keep one thread pool per process, and the bench times
ours, the bare loop and the fair bare loop in turn."""
from __future__ import annotations

import itertools
import os
import time

import pytest
import torch

from ichbench.anomalies import one_stage
from ichbench.bench import throughput as bench
from ichbench.methods import REGISTRY
from ichbench.synthetic.toy import toy_head_slices

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 32
SMALL = {"width": 8, "hidden": 64, "unet_width": 4, "allow_random_vgg": True, "vgg_layer": "relu2_1"}


@pytest.fixture(scope="module")
def batch():
    x, head, brain = toy_head_slices(4, SIZE, seed=3)
    return {"x": torch.from_numpy(x), "head_mask": torch.from_numpy(head), "brain_mask": torch.from_numpy(brain)}


def trained(name: str, batch, foreach: bool | None, steps: int = 3):
    cls = REGISTRY[name]
    params = {"batch_size": 4, "epochs": 1, "weight_decay": 1e-4,
              **{k: v for k, v in SMALL.items() if k in cls.full_defaults()}}
    if "steps_per_epoch" in cls.full_defaults():
        params["steps_per_epoch"] = 2
    torch.manual_seed(0)
    method = cls(params, in_channels=3, image_size=SIZE, device=torch.device("cpu"))
    if foreach is not None:                 # the optimisers as torch's default builds them on a CPU
        opts = method.configure_optimizers()
        for o in opts:
            for g in o.param_groups:
                g["foreach"] = foreach
        method.optimizers = opts
    method.configure_schedulers(2, 1)
    for step in range(steps):
        method.training_step(batch, step)
    return method


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_cpu_optimisers_are_multi_tensor_and_bit_identical_to_the_loop(name, batch):
    ours = trained(name, batch, None)
    assert all(g["foreach"] is True for o in ours.optimizers for g in o.param_groups)
    loop = trained(name, batch, False)
    a, b = ours.model.state_dict(), loop.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{name}: {k} differs between foreach and the per-tensor loop"
    for oa, ob in zip(ours.optimizers, loop.optimizers):
        for sa, sb in zip(oa.state_dict()["state"].values(), ob.state_dict()["state"].values()):
            for k in sa:
                assert torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])), f"{name}: optimiser {k}"


def test_cpu_optimiser_options_leave_other_devices_at_torchs_default():
    method = REGISTRY["AE"]({"width": 8, "hidden": 64}, in_channels=3, image_size=SIZE, device=torch.device("cpu"))
    assert method.optimizer_options() == {"foreach": True}
    method.device = torch.device("cuda")        # only the option is asked for: nothing runs on it
    assert method.optimizer_options() == {}


def test_one_stage_generators_keep_their_thread_pool(batch):
    gen = REGISTRY["CutPaste"]({"synth_workers": 2}, in_channels=3, image_size=SIZE,
                               device=torch.device("cpu")).generator
    import numpy as np

    first = gen(batch["x"], np.random.default_rng(0), head_mask=batch["head_mask"])
    pool = one_stage.thread_pool(2)
    again = gen(batch["x"], np.random.default_rng(0), head_mask=batch["head_mask"])
    assert one_stage.thread_pool(2) is pool and (os.getpid(), 2) in one_stage._POOLS
    assert torch.equal(first.x, again.x) and torch.equal(first.label, again.label)
    serial = REGISTRY["CutPaste"]({"synth_workers": 1}, in_channels=3, image_size=SIZE,
                                  device=torch.device("cpu")).generator
    one = serial(batch["x"], np.random.default_rng(0), head_mask=batch["head_mask"])
    assert torch.equal(first.x, one.x) and torch.equal(first.label, one.label)


def test_segmentation_batch_is_what_the_step_trains_on(batch):
    """The fair bare loop of a one-stage row makes its batch with the row's own `segmentation_batch`."""
    method = REGISTRY["NSA"]({"batch_size": 4}, in_channels=3, image_size=SIZE, device=torch.device("cpu"))
    state = method.rng.bit_generator.state
    made = method.segmentation_batch(batch)
    assert set(made) == {"x", "label"} and made["x"].shape == batch["x"].shape
    assert made["label"].shape == (4, 1, SIZE, SIZE)
    seen = {}
    method.loss = lambda b: (seen.update(b) or method.model(b["x"]).float().mean(), {})
    method.rng.bit_generator.state = state
    method.training_step(batch, 0)
    assert torch.equal(seen["x"], made["x"]) and torch.equal(seen["label"], made["label"])
    assert bench.made_batch(method, batch).keys() == made.keys()


def test_paired_rates_alternate_the_loops():
    calls: list[str] = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    got = bench.paired_rates(fns, images=4, dev=torch.device("cpu"), seconds=0.0, rounds=3)
    assert set(got) == {"a", "b"} and all(r > 0 and cpu >= 0 for r, cpu in got.values())
    # a timed warm-up call each, then one block per round, the order reversed every other round; calls
    # slower than the time given: 2 rounds
    assert calls == ["a", "b", "a", "b", "b", "a"]
    # calls of ~2 ms with 0.3 s given: 3 rounds of blocks of several calls (a | b, b | a, a | b)
    calls.clear()
    slow = {k: (lambda k=k: (time.sleep(0.002), calls.append(k))) for k in ("a", "b")}
    bench.paired_rates(slow, images=4, dev=torch.device("cpu"), seconds=0.3, rounds=3)
    runs = [(k, len(list(g))) for k, g in itertools.groupby(calls[2:])]
    assert calls[:2] == ["a", "b"] and [k for k, _ in runs] == ["a", "b", "a", "b"]
    (_, na), (_, nb2), (_, na2), (_, nb) = runs
    assert max(na, nb) > 1 and na2 == 2 * na and nb2 == 2 * nb
