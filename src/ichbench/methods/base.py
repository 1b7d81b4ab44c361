"""The contract every Table 1 row fulfils, and the registry that finds rows by name.

A method owns its network (`self.model`), its training objective (`training_step`) and its anomaly
score (`score`: one slice score per image plus a pixel map for Figure 1). The shared training loop
(`ichbench.train`) feeds it batches and never needs to know which row it is training.

A batch is a dict of tensors on the method's device:
    x           float (B, C, S, S) in [-1, 1]    the windowed slices
    head_mask   bool  (B, S, S)                  non-air head region
    brain_mask  bool  (B, S, S)                  brain tissue inside the skull
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, ClassVar

import torch
from torch import nn

REGISTRY: dict[str, type["Method"]] = {}
#: the `precision` hyper-parameter -> autocast dtype (None: no autocast, float32 throughout)
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


def register(cls: type["Method"]) -> type["Method"]:
    """Class decorator: make a method selectable by its Table 1 row name."""
    if cls.name in REGISTRY:
        raise ValueError(f"method {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def get_method(name: str) -> type["Method"]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; registered: {', '.join(REGISTRY)}") from None


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
        self.in_channels = in_channels
        self.image_size = image_size
        self.device = device
        self.notes: list[str] = []           # remarks that Table 1 must carry (e.g. random VGG weights)
        self.model: nn.Module = self.build().to(device)
        self._optimizers: list[torch.optim.Optimizer] | None = None     # built on first use (`optimizers`)
        self.schedulers: list[Any] = []

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
        merged: dict[str, Any] = {"lr": 1e-3, "batch_size": 64, "epochs": 250, "weight_decay": 0.0,
                                  "precision": "fp32", "max_train_slices": None}
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

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def score_map(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, C or 1, S, S) pixel anomaly map; higher = more anomalous."""
        raise NotImplementedError

    # -- training ---------------------------------------------------------------------------
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.model.parameters(), lr=self.params["lr"],
                                 weight_decay=self.params["weight_decay"])]

    def configure_schedulers(self, steps_per_epoch: int, epochs: int) -> None:
        """Called once before training, when the number of steps is known."""

    def autocast(self):
        """bfloat16 autocast on the method's device when `precision` is bf16; else a no-op (float32)."""
        dtype = PRECISIONS[self.params["precision"]]
        if dtype is not None:
            return torch.autocast(self.device.type, dtype=dtype)
        return contextlib.nullcontext()

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        """One optimisation step on a batch; returns the values to log."""
        self.model.train()
        opt = self.optimizers[0]
        opt.zero_grad(set_to_none=True)
        with self.autocast():
            loss, logs = self.loss(batch)
        loss.backward()
        opt.step()
        for s in self.schedulers:
            s.step()
        return {"loss": float(loss.detach()), **logs}

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
