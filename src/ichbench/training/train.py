"""The shared training loop: one method on one fold's normal training slices.

    ichbench train --method AE --manifest results/splits/fold-0.csv --out results/models/AE/fold-0

Writes `model.pt` (weights, hyper-parameters, run record; no optimiser state), `history.csv` (loss per
epoch), `run.json` and, while running, `checkpoint.pt` (weights, optimiser and RNG states) every
`checkpoint_every` epochs but at most once per `checkpoint_seconds`, deleted once `model.pt` is written; a
rerun after a kill (time limit, pre-emption) resumes from it when it was written for the same method, hyper-parameters, code, seed and training
slices, and ends with the same weights as an uninterrupted run. `run.json` and the model's record
carry `resumed_from_epoch` (null for a run from scratch).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ..cohort.splits import read_manifest
from ..methods import REGISTRY, get_method
from ..methods.contract import dry_run
from ..methods.plugins import is_external, resolve, spec_of
from .data import DEFAULT_BUDGET_GB, DeviceBatches, open_slices, row_chunks
from .determinism import set_deterministic
from .digest import code_digest
from .modelfile import load_model_file
from .runinfo import environment_record

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """`auto`: CUDA where present, else CPU. `cpu`, `cuda`, `cuda:1`, `mps` force one."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for but CUDA is not available on this machine")
    return dev


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _data_digest(data, rows: pd.DataFrame) -> str:
    """Digest of the training slices (pixels and identity): a checkpoint only resumes on the same data."""
    h = hashlib.sha256()
    for chunk in row_chunks(data.images):       # the same digest for the in-memory and the store-read fold
        h.update(np.ascontiguousarray(chunk).data)
    h.update("\n".join(f"{a}#{b}" for a, b in zip(rows["npz"], rows["slice_index"])).encode())
    return h.hexdigest()[:16]


def _epoch_batches(batches: DeviceBatches, bs: int, gen: torch.Generator, drop_last: bool, steps: int | None,
                   first_n: int | None = None):
    """One epoch's batches: a pass over the data, or, for a method with `steps_per_epoch` (an epoch of
    that many update steps, as in Li et al. 2021), as many as that from consecutive shuffled passes.
    `first_n`: the passes cover only the first n training slices (the two-stage rows' `train_first_n`)."""
    if not steps:
        return batches.epoch(bs, gen, drop_last=drop_last, first_n=first_n)
    passes = (batches.epoch(bs, gen, drop_last=drop_last, first_n=first_n) for _ in itertools.count())
    return itertools.islice(itertools.chain.from_iterable(passes), int(steps))


class CheckpointClock:
    """Which epoch ends get a checkpoint: every `every`-th epoch (0: none) but the last, skipped while fewer
    than `seconds` have passed since the last checkpoint (or since the clock was made)."""

    def __init__(self, every: int, seconds: float = 0, clock: Callable[[], float] = time.monotonic):
        self.every, self.seconds, self.clock = int(every or 0), float(seconds or 0), clock
        self.last = clock()

    def due(self, epoch: int, epochs: int) -> bool:
        if not self.every or epoch % self.every or epoch >= epochs:
            return False
        now = self.clock()
        if now - self.last < self.seconds:
            return False
        self.last = now
        return True


def epoch_means(sums: dict[str, Any]) -> dict[str, float]:
    """The epoch's summed logs as Python floats: one read from the device for all of them."""
    keys = [k for k, v in sums.items() if isinstance(v, torch.Tensor)]
    values = torch.stack([sums[k].reshape(()) for k in keys]).tolist() if keys else []
    return {k: dict(zip(keys, values)).get(k, v) for k, v in sums.items()}


def build_method(name: str, params: dict[str, Any], in_channels: int, image_size: int, device: torch.device):
    cls = get_method(name)
    return cls(params, in_channels=in_channels, image_size=image_size, device=device)


def train(method_name: str, params: dict[str, Any], manifest: str | os.PathLike, out_dir: str | os.PathLike, *,
          device: str = "auto", seed: int = 0, checkpoint_every: int = 1, threads: int | None = None,
          progress: bool = True, deterministic: bool = False, checkpoint_seconds: float = 0,
          in_memory: str | bool = "auto", memory_budget_gb: float = DEFAULT_BUDGET_GB,
          method_class: str | None = None, check_contract: bool | None = None) -> dict[str, Any]:
    """Train one method on the `train` part of a fold manifest; returns the run record.
    `method_class`: `module:attribute` of a row from outside the package (config `class:`).
    `check_contract`: a dry run of the row's contract on two training slices before training (None: for rows
    from outside the package only; it leaves the random number generators as they were).
    `deterministic`: deterministic kernels (`ichbench.training.determinism`; slower on a GPU).
    Checkpoints: at the end of every `checkpoint_every`-th epoch (0: none), skipped while fewer than
    `checkpoint_seconds` have passed since the last one (or since training started); 0 writes every one.
    `in_memory` (auto | true | false), `memory_budget_gb`: load the slices, or gather each batch from the
    slice store (`training.data.open_slices`); the same batches and weights either way."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    determinism = set_deterministic(deterministic)
    gen = seed_everything(seed)
    rows = read_manifest(manifest)
    train_rows = rows[rows["part"] == "train"]
    if train_rows.empty:
        raise ValueError(f"{manifest}: the fold has no training slices")
    if (train_rows["label"] != 0).any():
        raise ValueError(f"{manifest}: training slices must all be normal")
    cls = resolve(method_name, method_class, where="given by --class") if method_class else get_method(method_name)
    limit = {**cls.full_defaults(), **params}.get("max_train_slices")
    subset_note = None
    if limit and len(train_rows) > int(limit):
        subset_note = f"trained on {int(limit)} of {len(train_rows)} slices per fold (max_train_slices)"
        keep = np.sort(np.random.default_rng(seed).choice(len(train_rows), int(limit), replace=False))
        log.warning("training on a random subset of %d of the %d training slices (max_train_slices)",
                    int(limit), len(train_rows))
        train_rows = train_rows.iloc[keep]
    data = open_slices(train_rows, in_memory=in_memory, memory_budget_gb=memory_budget_gb,
                       where=f"{manifest} (training slices)")
    n, c, s, _ = data.images.shape
    batches = DeviceBatches(data, dev, mask_keys=cls.needs)
    if check_contract or (check_contract is None and is_external(method_name)):
        dry_run(cls, params, batches.batch(torch.arange(min(2, n))))
        log.info("%s: contract checked on %d training slices (one step, fit_end, score)", method_name, min(2, n))
    method = build_method(method_name, params, c, s, dev)
    if subset_note:
        method.notes.append(subset_note)
    p = method.params
    epochs, bs = int(p["epochs"]), int(p["batch_size"])
    # train_first_n (two-stage rows, the reference's Repeat(train_data, 3000)): update steps draw from the
    # first n training slices in manifest order only; fit_end still sees them all
    first_n = int(p["train_first_n"]) if p.get("train_first_n") else None
    pool = min(n, first_n) if first_n else n
    if first_n and n > first_n:
        method.notes.append(f"update steps on the first {first_n} of {n} training slices (train_first_n)")
    drop_last = pool > bs
    fixed_steps = p.get("steps_per_epoch")
    steps_per_epoch = int(fixed_steps) if fixed_steps else (pool // bs if drop_last else 1)
    method.configure_schedulers(steps_per_epoch, epochs)

    ckpt_path = out_dir / "checkpoint.pt"
    # What a checkpoint must match to be resumed from: a checkpoint left by a killed run of other settings,
    # other code (Snakemake reruns the job when either changes) or other data (e.g. new windows, same
    # file names) is ignored and training starts over.
    fingerprint = {"method": method_name, "params": p, "code": code_digest(method_name), "seed": seed,
                   "data": _data_digest(data, train_rows), "deterministic": bool(deterministic),
                   "options": {k: v for k, v in method.run_options().items() if k != "compile"}}
    history: list[dict[str, Any]] = []
    start_epoch, resumed_from = 0, None
    if ckpt_path.exists():
        ckpt = load_model_file(ckpt_path, map_location=dev, what="checkpoint")
        if ckpt.get("fingerprint") == fingerprint and 0 < ckpt.get("epoch", 0) < epochs:
            method.load_state_dict(ckpt["state"])
            start_epoch, resumed_from = ckpt["epoch"], ckpt["epoch"]
            history = ckpt["history"]
            # RNG states are CPU byte tensors whatever map_location moved them to
            gen.set_state(ckpt["generator"].cpu())
            torch.set_rng_state(ckpt["torch_rng"].cpu())
            if dev.type == "cuda" and ckpt.get("cuda_rng") is not None:
                torch.cuda.set_rng_state_all([st.cpu() for st in ckpt["cuda_rng"]])
            log.info("resuming %s from %s after epoch %d of %d", method_name, ckpt_path, start_epoch, epochs)
        else:
            log.warning("ignoring %s: it belongs to other settings, code or data; training from the start",
                        ckpt_path)
        del ckpt

    log.info("training %s on %d slices (%dx%dx%d) on %s: %d epochs, batch %d", method_name, n, c, s, s, dev,
             epochs, bs)
    t0 = time.perf_counter()
    checkpoints = CheckpointClock(checkpoint_every, checkpoint_seconds)
    seen = 0
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, epochs):
        te = time.perf_counter()
        sums: dict[str, Any] = {}
        count = 0
        bar = tqdm(_epoch_batches(batches, bs, gen, drop_last, fixed_steps, first_n), total=steps_per_epoch,
                   file=sys.stderr,
                   desc=f"{method_name} epoch {epoch + 1}/{epochs}", disable=not progress, mininterval=5)
        for batch in bar:
            logs = method.training_step(batch, step)
            step += 1
            count += 1
            seen += batch["x"].shape[0]
            # summed where they are (device tensors, float64 like a Python float sum): no host sync per step
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + (v.detach().double() if isinstance(v, torch.Tensor) else float(v))
        bar.close()
        record = {"epoch": epoch + 1, **{k: v / max(count, 1) for k, v in epoch_means(sums).items()},
                  "seconds": round(time.perf_counter() - te, 3)}
        if not all(np.isfinite(v) for v in record.values()):
            raise FloatingPointError(f"{method_name}: non-finite loss at epoch {epoch + 1}: {record}")
        history.append(record)
        log.info("epoch %d/%d %s", epoch + 1, epochs,
                 " ".join(f"{k}={v:.5g}" for k, v in record.items() if k != "epoch"))
        pd.DataFrame(history).to_csv(out_dir / "history.csv", index=False)
        if checkpoints.due(epoch + 1, epochs):
            _atomic_save({"method": method_name, "params": p, "fingerprint": fingerprint, "epoch": epoch + 1,
                          "state": method.state_dict(),
                          "history": history, "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                          "cuda_rng": torch.cuda.get_rng_state_all() if dev.type == "cuda" else None}, ckpt_path)

    method.fit_end(lambda: batches.epoch(bs, shuffle=False))
    elapsed = time.perf_counter() - t0
    record = {
        "method": method_name, **({"class": spec_of(method_name)} if spec_of(method_name) else {}),
        "group": cls.group, "params": p, "code_digest": code_digest(method_name),
        "epochs": epochs, "train_slices": n, "image_shape": [c, s, s], "device": str(dev),
        "torch": str(torch.__version__), "python": platform.python_version(), **environment_record(dev), "seed": seed,
        "resumed_from_epoch": resumed_from, "train_seconds": round(elapsed, 2),
        "slices_per_second": round(seen / elapsed, 1) if elapsed > 0 else None,
        "notes": method.notes,
        "precision": p["precision"], "steps_per_epoch": steps_per_epoch, "deterministic": determinism,
        **method.run_options(),     # channels_last, compile (off | on | failed: why), synthesis (cpu | device)
    }
    # model.pt: weights (+ a method's fitted extra state) and the run record, not the optimiser state
    # (about twice the weights for Adam), which only resuming needs and which lives in checkpoint.pt.
    weights = {k: v for k, v in method.state_dict().items() if k not in ("optimizers", "schedulers")}
    _atomic_save({"record": record, "state": weights}, out_dir / "model.pt")
    (out_dir / "run.json").write_text(json.dumps(record, indent=2, default=str))
    pd.DataFrame(history).to_csv(out_dir / "history.csv", index=False)
    if ckpt_path.exists():     # a finished run is never resumed (the checkpoint is only read for epoch < epochs)
        ckpt_path.unlink()
    return record


def load_trained(model_path: str | os.PathLike, device: str = "auto"):
    """-> (method ready for scoring, run record)."""
    dev = resolve_device(device)
    blob = load_model_file(model_path, map_location=dev)
    rec = blob["record"]
    if rec.get("class") and rec["method"] not in REGISTRY:
        # a row from outside the package: its class, named by the record, imported from the Python path
        resolve(rec["method"], rec["class"], where=f"named by the run record of {model_path}")
    c, s, _ = rec["image_shape"]
    method = build_method(rec["method"], rec["params"], c, s, dev)
    method.load_state_dict(blob["state"], with_optimizers=False)
    method.model.eval()
    return method, rec
