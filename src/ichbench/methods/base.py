"""The contract every Table 1 row fulfils, and the registry that finds rows by name.

A method owns its network (`self.model`), its training objective (`training_step`) and its anomaly
score (`score`: one slice score per image plus a pixel map for Figure 1). The shared training loop
(`ichbench.training.train`) feeds it batches and never needs to know which row it is training.

A batch is a dict of tensors on the method's device:
    x           float (B, C, S, S) in [-1, 1]    the windowed slices
    head_mask   bool  (B, S, S)                  non-air head region
    brain_mask  bool  (B, S, S)                  brain tissue inside the skull
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, ClassVar

import torch
from torch import nn

log = logging.getLogger(__name__)

REGISTRY: dict[str, type["Method"]] = {}
#: the `precision` hyper-parameter -> autocast dtype (None: no autocast, float32 throughout)
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


def register(cls: type["Method"]) -> type["Method"]:
    """Class decorator: make a method selectable by its Table 1 row name."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"method {cls.name!r} registered twice: by {REGISTRY[cls.name].__module__} and by "
                         f"{cls.__module__}")
    REGISTRY[cls.name] = cls
    return cls


def get_method(name: str) -> type["Method"]:
    """The class of a row: a registered one, else an installed plugin's entry point (`plugins`)."""
    if name in REGISTRY:
        return REGISTRY[name]
    from .plugins import entry_points, resolve

    if entry_points(name):
        return resolve(name)
    raise KeyError(f"unknown method {name!r}; registered: {', '.join(REGISTRY)}")


class Method:
    """Base class of a Table 1 row. Subclasses set `name`, `group`, `defaults` and implement
    `build`, `loss` (or `training_step`) and `score_map` (or `score`)."""

    name: ClassVar[str]
    group: ClassVar[str]                     # "reconstruction" or "self-supervised"
    paper: ClassVar[str] = ""                # where the method comes from
    defaults: ClassVar[dict[str, Any]] = {}  # the method's hyper-parameters and their defaults
    #: extra batch keys this method needs ("head_mask", "brain_mask")
    needs: ClassVar[tuple[str, ...]] = ()
    #: keys of the row's own training recipe (its reference's): `recipes.<r>.all` leaves them alone
    own_recipe: ClassVar[tuple[str, ...]] = ()
    #: further top-level packages whose modules count in the row's code digest when its modules import them
    #: (its own package and ichbench always count; see training/digest.py)
    digest_packages: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: dict[str, Any], in_channels: int, image_size: int, device: torch.device):
        unknown = set(params) - set(self.full_defaults())
        if "amp" in unknown:
            raise ValueError(f"{self.name}: hyper-parameter `amp` was replaced by `precision` (fp32 | bf16)")
        if unknown:
            raise ValueError(f"{self.name}: unknown hyper-parameter(s) {sorted(unknown)}; "
                             f"known: {sorted(self.full_defaults())}")
        self.params = {**self.full_defaults(), **params}
        if self.params["precision"] not in PRECISIONS:
            raise ValueError(f"{self.name}: precision must be one of {sorted(PRECISIONS)}, "
                             f"not {self.params['precision']!r}")
        if str(self.params["channels_last"]).lower() not in ("auto", "true", "false"):
            raise ValueError(f"{self.name}: channels_last must be auto, true or false, "
                             f"not {self.params['channels_last']!r}")
        self.in_channels = in_channels
        self.image_size = image_size
        self.device = device
        self.notes: list[str] = []           # remarks that Table 1 must carry (e.g. random VGG weights)
        self.model: nn.Module = self.build().to(device)
        #: NHWC memory format for the network and its training inputs (`channels_last`)
        self.channels_last = self.use_channels_last()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._optimizers: list[torch.optim.Optimizer] | None = None     # built on first use (`optimizers`)
        self.schedulers: list[Any] = []
        self._compiled: dict[int, Callable] = {}      # id of a bound step function -> its compiled form
        self.compile_status = "off"                   # off | on | failed: <reason>

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The optimisers, built on first use: a score job never needs them (building one imports
        torch._dynamo, ~1.7 s of CPU)."""
        if self._optimizers is None:
            self._optimizers = self.configure_optimizers()
        return self._optimizers

    @optimizers.setter
    def optimizers(self, value: list[torch.optim.Optimizer]) -> None:
        self._optimizers = value

    # -- hyper-parameters shared by every row (training recipe) ------------------------------
    @classmethod
    def full_defaults(cls) -> dict[str, Any]:
        # max_train_slices: train on a seeded random subset of at most this many slices (None: all);
        # only for quick demos on a CPU, never for reported results. precision: fp32 (the references')
        # or bf16 (bfloat16 autocast, only where a recipe asks for it).
        # channels_last: auto (on for CUDA: NHWC suits its convolutions) | true | false. compile:
        # torch.compile the training step's forward/backward (falls back to eager with a warning).
        merged: dict[str, Any] = {"lr": 1e-3, "batch_size": 64, "epochs": 250, "weight_decay": 0.0,
                                  "precision": "fp32", "max_train_slices": None, "channels_last": "auto",
                                  "compile": False}
        for klass in reversed(cls.__mro__):
            merged.update(getattr(klass, "defaults", {}) if klass is not Method else {})
        return merged

    @classmethod
    def input_files(cls, params: dict[str, Any]) -> dict[str, str | None]:
        """Files the row reads besides the data (e.g. pretrained weights), name -> path or None when
        absent or unused: the workflow makes the existing ones inputs of the row's jobs."""
        return {}

    # -- to implement ---------------------------------------------------------------------------
    def build(self) -> nn.Module:
        raise NotImplementedError

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """-> (the loss to minimise, other values to log: 0-d tensors, never read back to the host here)."""
        raise NotImplementedError

    def score_map(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, C or 1, S, S) pixel anomaly map; higher = more anomalous."""
        raise NotImplementedError

    # -- training ---------------------------------------------------------------------------
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.model.parameters(), lr=self.params["lr"],
                                 weight_decay=self.params["weight_decay"], **self.optimizer_options())]

    def optimizer_options(self) -> dict[str, Any]:
        """Keyword arguments for every row's torch optimiser: `foreach=True` on a CPU, where torch's default
        is its per-tensor Python loop. The multi-tensor update does the same arithmetic in the same order, bit
        for bit (`tests/test_step_overhead.py`), in fewer calls (AE, 64 px, batch 16, alternating: Adam's step
        10.4 -> 10.0 ms of CPU, the whole step 1.3 % less). `fused=True` (2.3 against 12.6 ms in one run)
        rounds differently, so results would change. Other devices keep torch's default (foreach on CUDA)."""
        return {"foreach": True} if self.device.type == "cpu" else {}

    def configure_schedulers(self, steps_per_epoch: int, epochs: int) -> None:
        """Called once before training, when the number of steps is known."""

    def autocast(self):
        """bfloat16 autocast on the method's device when `precision` is bf16; else a no-op (float32)."""
        dtype = PRECISIONS[self.params["precision"]]
        if dtype is not None:
            return torch.autocast(self.device.type, dtype=dtype)
        return contextlib.nullcontext()

    def run_options(self) -> dict[str, Any]:
        """How this run trains, resolved (for run.json): memory format, compile state."""
        return {"channels_last": self.channels_last, "compile": self.compile_status}

    def use_channels_last(self) -> bool:
        """The `channels_last` hyper-parameter resolved: `auto` = on for CUDA (its cuDNN convolutions run
        NHWC natively, and bf16/TF32 kernels gain most), off elsewhere (CPU results stay bit-identical)."""
        v = str(self.params["channels_last"]).lower()
        return self.device.type == "cuda" if v == "auto" else v == "true"

    def to_memory_format(self, x: torch.Tensor) -> torch.Tensor:
        """A 4-d input in the network's memory format (a no-op without channels_last)."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def compiled(self, fn: Callable) -> Callable:
        """`fn` through torch.compile when the `compile` hyper-parameter is on; if compiling fails
        (no compiler, unsupported op), a clear warning and eager mode for the rest of the run."""
        if not self.params["compile"] or self.compile_status.startswith("failed"):
            return fn
        key = getattr(fn, "__func__", fn)
        if key not in self._compiled:
            try:
                self._compiled[key] = torch.compile(fn)
                self.compile_status = "on"
            except Exception as err:  # noqa: BLE001 - any compiler failure falls back to eager
                self._compile_failed(err)
                return fn
        compiled = self._compiled[key]

        def run(*args, **kwargs):
            if self.compile_status.startswith("failed"):
                return fn(*args, **kwargs)
            try:
                return compiled(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - torch.compile compiles lazily, at the first call
                self._compile_failed(err)
                return fn(*args, **kwargs)
        return run

    def _compile_failed(self, err: Exception) -> None:
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
        self.compile_status = f"failed: {reason}"
        log.warning("%s: torch.compile failed (%s); training continues without compiling (eager mode)",
                    self.name, reason)
        self.notes.append(f"compile: true fell back to eager mode ({reason})")

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """One optimisation step on a batch; returns the values to log as device tensors (0-d): nothing
        here reads a value back to the host, the training loop sums them on the device and reads the
        sums once per epoch."""
        self.model.train()
        opt = self.optimizers[0]
        opt.zero_grad(set_to_none=True)
        if self.channels_last:
            batch = {k: self.to_memory_format(v) if k == "x" else v for k, v in batch.items()}
        loss, logs = self.compiled(self._forward_backward)(batch)
        opt.step()
        for s in self.schedulers:
            s.step()
        return {"loss": loss, **logs}

    def _forward_backward(self, batch: dict[str, torch.Tensor]):
        with self.autocast():
            loss, logs = self.loss(batch)
        loss.backward()
        return loss.detach(), {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in logs.items()}

    def fit_end(self, train_batches: Callable[[], Any]) -> None:
        """Hook after the last epoch (e.g. fit a density on training embeddings)."""

    # -- scoring ----------------------------------------------------------------------------
    def score(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (slice_score (B,), figure map (B, S, S)). The paper's slice score is the mean of the
        pixel map over pixels and channels."""
        self.model.eval()
        with torch.no_grad(), self.autocast():
            m = self.score_map(batch).float()
        return m.mean(dim=(1, 2, 3)), m.mean(dim=1)

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(),
                "optimizers": [o.state_dict() for o in self.optimizers],
                "schedulers": [s.state_dict() for s in self.schedulers],
                "extra": self.extra_state()}

    def load_state_dict(self, state: dict[str, Any], with_optimizers: bool = True) -> None:
        self.model.load_state_dict(state["model"])
        if with_optimizers:
            for o, s in zip(self.optimizers, state.get("optimizers", [])):
                o.load_state_dict(s)
            for sch, s in zip(self.schedulers, state.get("schedulers", [])):
                sch.load_state_dict(s)
        self.load_extra_state(state.get("extra", {}))

    def extra_state(self) -> dict[str, Any]:
        """Non-parameter state a method keeps (e.g. a fitted Gaussian)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass
