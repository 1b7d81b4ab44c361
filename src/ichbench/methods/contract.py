"""The contract of a row, checked: on its class as it is loaded (`check_class`), by a dry run of one training
step, `fit_end` and scoring on two slices before training starts (`dry_run`), and on every scoring batch
(`check_score_batch`). Each failure is a ContractError naming the row and what is wrong.

The dry run works on its own instance and restores the random number generators afterwards, so a run with the
check trains exactly as one without it. `docs/your-method.md` describes the contract.
"""
from __future__ import annotations

import io
import math
import random
import re
from typing import Any

import numpy as np
import torch

from .base import PRECISIONS, Method

GROUPS = ("reconstruction", "self-supervised")
MASK_KEYS = ("head_mask", "brain_mask")
#: a row name is a folder name and a Snakemake wildcard value
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class ContractError(ValueError):
    """A row that does not implement the contract of `ichbench.methods.Method`."""


def _overrides(cls: type, *names: str) -> bool:
    return any(getattr(cls, n) is not getattr(Method, n) for n in names)


def check_class(cls: type) -> None:
    """What can be checked without building the row: its name, group, defaults, `needs` and methods."""
    name = getattr(cls, "name", None)
    label = f"row {name!r} ({cls.__module__}.{cls.__qualname__})"
    if not isinstance(name, str) or not NAME.match(name):
        raise ContractError(f"{label}: `name` must be letters, digits and _ . + - (a folder name), not {name!r}")
    problems = []
    if getattr(cls, "group", None) not in GROUPS:
        problems.append(f"`group` must be one of {list(GROUPS)}, not {getattr(cls, 'group', None)!r}")
    defaults = cls.__dict__.get("defaults", {})
    if not isinstance(defaults, dict) or not all(isinstance(k, str) for k in defaults):
        problems.append("`defaults` must be a dict of hyper-parameter names to values")
    elif "class" in defaults:
        problems.append("`class` is not a hyper-parameter name (config uses it to name the row's class)")
    needs = getattr(cls, "needs", ())
    if not isinstance(needs, tuple) or not set(needs) <= set(MASK_KEYS):
        problems.append(f"`needs` must be a tuple of {list(MASK_KEYS)}, not {needs!r}")
    if not _overrides(cls, "build"):
        problems.append("it does not implement build() (the network)")
    if not _overrides(cls, "loss", "training_step"):
        problems.append("it implements neither loss() nor training_step()")
    if not _overrides(cls, "score_map", "score"):
        problems.append("it implements neither score_map() nor score()")
    if problems:
        raise ContractError(f"{label} breaks the row contract: " + "; ".join(problems))


def _finite(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value.detach().float()).all())
    return isinstance(value, (int, float)) and math.isfinite(value)


def _step(name: str, what: str, fn, *args):
    try:
        return fn(*args)
    except ContractError:
        raise
    except KeyError as exc:
        raise ContractError(f"row {name!r}: {what} failed: batch key {exc} missing; a row that reads "
                            f"head_mask or brain_mask must list it in `needs`") from None
    except Exception as exc:  # noqa: BLE001 - whatever the row's code raises, said with the row's name
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ContractError(f"row {name!r}: {what} failed: {type(exc).__name__}: {first}") from None


def check_score_batch(name: str, slice_score: Any, fig_map: Any, n: int, size: int | None = None) -> None:
    """What `score` returns for a batch of n slices: slice scores (n,), float; a map (n, S, S), float."""
    if not isinstance(slice_score, torch.Tensor) or not isinstance(fig_map, torch.Tensor):
        raise ContractError(f"row {name!r}: score() must return (slice scores, map) as two tensors, "
                            f"not ({type(slice_score).__name__}, {type(fig_map).__name__})")
    if tuple(slice_score.shape) != (n,):
        raise ContractError(f"row {name!r}: score() returned slice scores of shape {tuple(slice_score.shape)} "
                            f"for a batch of {n} slices; expected ({n},), one score per slice")
    if not slice_score.is_floating_point():
        raise ContractError(f"row {name!r}: score() returned slice scores of dtype {slice_score.dtype}; "
                            f"expected a floating-point tensor")
    if fig_map.ndim != 3 or fig_map.shape[0] != n or (size is not None and tuple(fig_map.shape[1:]) != (size, size)):
        want = f"({n}, {size}, {size})" if size is not None else f"({n}, S, S)"
        raise ContractError(f"row {name!r}: score() returned a map of shape {tuple(fig_map.shape)}; expected "
                            f"{want}, one map per slice at the slices' size")
    if not fig_map.is_floating_point():
        raise ContractError(f"row {name!r}: score() returned a map of dtype {fig_map.dtype}; expected a "
                            f"floating-point tensor")


def _check_state(name: str, method: Method) -> None:
    """The weights and extra state must survive torch.save and the safe loader that score jobs use."""
    state = {k: v for k, v in method.state_dict().items() if k not in ("optimizers", "schedulers")}
    buf = io.BytesIO()
    try:
        torch.save(state, buf)
        buf.seek(0)
        torch.load(buf, weights_only=True)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ContractError(f"row {name!r}: its state (state_dict / extra_state) must hold only tensors and plain "
                            f"values (dict, list, str, numbers), which model.pt can be read back from: "
                            f"{first[:300]}") from None


def dry_run(cls: type[Method], params: dict[str, Any], batch: dict[str, torch.Tensor]) -> None:
    """Build the row on the batch's device, run one training step, fit_end and score on `batch` (two or
    more slices: x (B, C, S, S) and the masks the row `needs`), and check what comes back. The caller's
    random number generators are left as they were."""
    name = cls.name
    x = batch["x"]
    n, c, s = x.shape[0], x.shape[1], x.shape[-1]
    device = x.device
    params = {**params, "compile": False}
    if params.get("precision", "fp32") not in PRECISIONS:
        params["precision"] = "fp32"
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            method = _step(name, "building the row (its __init__ / build())", cls, params, c, s, device)
            if not isinstance(method.model, torch.nn.Module):
                raise ContractError(f"row {name!r}: build() must return a torch.nn.Module, "
                                    f"not {type(method.model).__name__}")
            n_params = sum(p.numel() for p in method.model.parameters() if p.requires_grad)
            if n_params == 0:
                raise ContractError(f"row {name!r}: the network from build() has no trainable parameters")
            logs = _step(name, "training_step()", method.training_step, batch, 0)
            if not isinstance(logs, dict) or "loss" not in logs:
                raise ContractError(f"row {name!r}: training_step() must return a dict with a 'loss' entry, "
                                    f"not {type(logs).__name__} {sorted(logs) if isinstance(logs, dict) else ''}")
            bad = [k for k, v in logs.items() if not _finite(v) or (isinstance(v, torch.Tensor) and v.numel() != 1)]
            if bad:
                raise ContractError(f"row {name!r}: training_step() logged non-finite or non-scalar values for "
                                    f"{bad} on two random slices")
            if all(p.grad is None for p in method.model.parameters()):
                raise ContractError(f"row {name!r}: the training step computed no gradient for any network "
                                    f"parameter (does the loss depend on self.model?)")
            _step(name, "fit_end()", method.fit_end, lambda: iter([batch]))
            score, fig_map = _step(name, "score()", _score, method, batch)
            check_score_batch(name, score, fig_map, n, s)
            if not _finite(score):
                raise ContractError(f"row {name!r}: score() returned NaN or infinite slice scores")
            if not _finite(fig_map):
                raise ContractError(f"row {name!r}: score() returned a map with NaN or infinite values")
            _check_state(name, method)
            del method
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _score(method: Method, batch):
    out = method.score(batch)
    if not isinstance(out, tuple) or len(out) != 2:
        raise ContractError(f"row {method.name!r}: score() must return a tuple (slice scores, map), "
                            f"not {type(out).__name__}")
    return out
