"""Shared parts of the self-supervised rows (no row is registered here).

SelfSupervisedMethod: owns the numpy Generator of the synthetic anomalies. It is seeded from the
training seed (train.py seeds torch before it builds the method, so `torch.initial_seed()` is the
run's seed) together with the hyper-parameter `synth_seed`; its state is part of `extra_state`, so
checkpoints carry it and a resumed run draws the same anomalies as an uninterrupted one.

PatchSegmentationMethod (one-stage rows: NSA, NSA-Intensity, FPI, FPI-Poisson, CutPaste; reference
MedIAnomaly `ssl/one_stage/train_med.py`): the reference's ResNet-18 encoder-decoder (`resnet18_enc_dec`)
trained with pixel-wise binary cross-entropy (on logits: the reference's sigmoid + BCELoss in one stable
op) against the pseudo-label map of a synthetic anomaly (`ichbench.anomalies.one_stage`); each training
slice is first rotated by U(-3, 3) degrees and shifted by up to `shift_pixels` (`rotate_shift`, the
reference's RandomRotation(3) + random crop); Adam, lr cosine-annealed to lr_min once per epoch
(CosineAnnealingLR(T_max=epochs) stepped per epoch); anomaly map = sigmoid of the output, slice score
= its mean (the base `score`).

EmbeddingGaussianMethod (two-stage rows: CutPaste 2-stage, AnatPaste; Li et al. 2021; MedIAnomaly
`ssl/two_stage`): every training slice is brightness/contrast-jittered (`image_jitter`, the reference's
whole-image ColorJitter(0.1), see `ichbench.anomalies.colorjitter`), then augmented; ResNet-18 + projection head
[512, 128] + linear classifier learn to tell the jittered batch from its augmented copy (cross-entropy).
The reference's recipe is the rows' own: SGD lr 0.03, momentum 0.9, weight decay 3e-5; 100 "epochs" of 256
update steps at batch 64 (`steps_per_epoch`: an epoch is a number of steps, as in Li et al., not a pass
over the data); the learning rate follows one cosine from lr to lr_min over the epochs, set once per epoch
as the reference's CosineAnnealingWarmRestarts(T_0 = epochs) stepped with the index of the epoch just done
(so epochs 1 and 2 both run at lr). These keys are in `own_recipe`: a recipe's `all` does not change them
(`ichbench.config.method_params`), only a recipe entry or `methods:` entry naming the row.
The update steps draw from every training slice; `train_first_n: 3000` draws them from the first 3000 in
manifest order only, as the reference's `Repeat(train_data, 3000)` loader does (its item i is slice i mod n).
After training, a Gaussian (mean and Ledoit-Wolf covariance) is fitted to the L2-normalised 512-d
embeddings of the training slices; the slice score is the Mahalanobis distance to it. Figure map: Grad-CAM
of that distance on the last ResNet stage (`cam_layer`), i.e. ReLU(sum_k w_k A_k) with w_k the spatial
mean of d(score)/dA_k, bilinearly upsampled to the input size; one backward pass per batch.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..anomalies import device as device_anomalies
from ..anomalies.colorjitter import color_jitter
from ..anomalies.one_stage import PatchSampler
from ..anomalies.two_stage import Synthesis
from ..nets.resnet import ResNetEncoderDecoder, ResNetProjectionClassifier
from .base import Method

#: hyper-parameters of the patch placement (one_stage_anomalies.PatchSampler), shared by the one-stage rows
PATCH_DEFAULTS = {"patch_base": 0.05, "patch_gamma_shape": 2.0, "patch_gamma_scale": 0.03,
                  "patch_min_half": 0.03, "patch_max_half": 0.40, "max_patches": 3, "extra_patch_p": 0.5,
                  "min_object_coverage": 0.7, "min_object_overlap": 0.7, "max_tries": 200}


def mahalanobis(emb: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """sqrt((e - mean)^T precision (e - mean)) for each row of (B, D) `emb`."""
    d = emb - mean
    return ((d @ precision) * d).sum(1).clamp_min(1e-12).sqrt()


class SelfSupervisedMethod(Method):
    group = "self-supervised"
    # synthesis: where the synthetic anomalies are made. cpu: the NumPy/OpenCV reference generators
    # (`one_stage_anomalies`, `anomalies`); device: their batched torch twins on the training device
    # (`device_anomalies`, no host round trip per step); auto: device on CUDA, cpu elsewhere.
    defaults = {"synth_seed": 0, "synthesis": "auto"}

    def __init__(self, params, in_channels, image_size, device):
        super().__init__(params, in_channels, image_size, device)
        if self.params["synthesis"] not in ("auto", "cpu", "device"):
            raise ValueError(f"{self.name}: synthesis must be auto, cpu or device, not {self.params['synthesis']!r}")
        self.rng = np.random.default_rng([int(self.params["synth_seed"]), torch.initial_seed()])
        self.generator = self.make_generator()
        self.synthesis = self.params["synthesis"]
        if self.synthesis == "auto":
            self.synthesis = "device" if self.device.type == "cuda" else "cpu"
        if self.synthesis == "device":
            # its own torch.Generator on the device, seeded from the same two numbers as `rng`
            seed = int(np.random.SeedSequence([int(self.params["synth_seed"]), torch.initial_seed()])
                       .generate_state(1, np.uint64)[0] % 2**63)
            self.generator = device_anomalies.OnDevice(self.make_device_generator(), self.device, seed)

    def make_generator(self) -> Callable[..., Synthesis]:
        raise NotImplementedError

    def make_device_generator(self):
        """The row's generator as a `device_anomalies` twin, built from the same hyper-parameters."""
        raise NotImplementedError

    @property
    def torch_generator(self) -> torch.Generator | None:
        """The device generator's RNG (synthesis: device), else None."""
        return getattr(self.generator, "torch_generator", None)

    def run_options(self) -> dict[str, Any]:
        return {**super().run_options(), "synthesis": self.synthesis}

    def synthesise(self, batch: dict[str, torch.Tensor]) -> Synthesis:
        with torch.no_grad():
            return self.generator(batch["x"], self.rng, head_mask=batch.get("head_mask"),
                                  brain_mask=batch.get("brain_mask"))

    def patch_sampler(self) -> PatchSampler:
        p = self.params
        return PatchSampler(base=p["patch_base"], gamma_shape=p["patch_gamma_shape"],
                            gamma_scale=p["patch_gamma_scale"], min_half=p["patch_min_half"],
                            max_half=p["patch_max_half"], max_patches=int(p["max_patches"]),
                            extra_patch_p=p["extra_patch_p"], min_object=p["min_object_coverage"],
                            min_overlap=p["min_object_overlap"], max_tries=int(p["max_tries"]))

    def cosine_schedule(self, steps_per_epoch: int, epochs: int) -> None:
        total = max(1, steps_per_epoch * epochs)
        self.schedulers = [torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizers[0], T_max=total,
                                                                      eta_min=self.params["lr_min"])]

    def extra_state(self) -> dict[str, Any]:
        out = {"rng": self.rng.bit_generator.state}
        if self.torch_generator is not None:
            out["torch_generator"] = self.torch_generator.get_state()
        return out

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "rng" in state:
            self.rng.bit_generator.state = state["rng"]
        if self.torch_generator is not None and state.get("torch_generator") is not None:
            # a CPU byte tensor, whatever map_location moved it to
            self.torch_generator.set_state(state["torch_generator"].cpu())


def rotate_shift(x: torch.Tensor, mask: torch.Tensor | None, rng: np.random.Generator | torch.Generator,
                 degrees: float, shift: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rotate each (square) slice by U(-degrees, degrees) about its centre and shift it by an integer
    U{-shift..shift} per axis, nearest neighbour (torchvision's RandomRotation default, so the slice stays
    on the 8-bit grid), air (-1) / False where nothing comes in. The mask moves with its slice. `rng`: a numpy
    Generator (the reference path) or a torch.Generator on x's device (synthesis: device, no host round trip)."""
    n, _, hh, ww = x.shape
    if (degrees <= 0 and shift <= 0) or n == 0:
        return x, mask
    if isinstance(rng, torch.Generator):     # synthesis: device: drawn and built on the device
        dev = x.device
        angle = torch.deg2rad((torch.rand(n, generator=rng, device=dev) * 2 - 1) * degrees)
        moves = (torch.randint(-shift, shift + 1, (n, 2), generator=rng, device=dev) if shift > 0
                 else torch.zeros((n, 2), dtype=torch.long, device=dev)).float()
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([cos, -sin, -2.0 * moves[:, 1] / ww], 1),
                             torch.stack([sin, cos, -2.0 * moves[:, 0] / hh], 1)], 1)
    else:
        angle = np.deg2rad(rng.uniform(-degrees, degrees, n))
        moves = rng.integers(-shift, shift + 1, (n, 2)) if shift > 0 else np.zeros((n, 2), np.int64)
        theta = np.zeros((n, 2, 3))
        theta[:, 0, 0], theta[:, 0, 1] = np.cos(angle), -np.sin(angle)
        theta[:, 1, 0], theta[:, 1, 1] = np.sin(angle), np.cos(angle)
        theta[:, 0, 2], theta[:, 1, 2] = -2.0 * moves[:, 1] / ww, -2.0 * moves[:, 0] / hh   # output <- input
    grid = F.affine_grid(torch.as_tensor(theta, dtype=torch.float32, device=x.device), [n, 1, hh, ww],
                         align_corners=False)
    stacked = torch.cat([x.float(), torch.ones_like(x[:, :1], dtype=torch.float32)]
                        + ([] if mask is None else [mask[:, None].float()]), 1)
    moved = F.grid_sample(stacked, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    inside = moved[:, x.shape[1]:x.shape[1] + 1] > 0.5
    out = torch.where(inside, moved[:, :x.shape[1]], torch.full_like(moved[:, :x.shape[1]], -1.0)).to(x.dtype)
    return out, None if mask is None else (moved[:, -1] > 0.5) & inside[:, 0]


class PatchSegmentationMethod(SelfSupervisedMethod):
    """One-stage rows: segment the synthetic anomaly pixel by pixel."""

    needs = ("head_mask",)
    # label_tol: grey levels of 0-255 (reference tol = 1); rotate_degrees / shift_pixels: the training
    # augmentation; synth_workers: CPU threads making the anomalies
    defaults = {"lr_min": 1e-6, **PATCH_DEFAULTS, "label_tol": 1.0, "label_median": 5, "rotate_degrees": 3.0,
                "shift_pixels": 2, "synth_workers": 4}

    def build(self) -> torch.nn.Module:
        return ResNetEncoderDecoder(self.in_channels)

    def label_options(self) -> dict:
        """Keyword arguments every one-stage generator takes."""
        p = self.params
        return {"patches": self.patch_sampler(), "tol": float(p["label_tol"]), "median_size": int(p["label_median"]),
                "workers": int(p["synth_workers"])}

    def device_patch_options(self) -> dict:
        """`label_options` for a `device_anomalies.DevicePatchExample` (the patch placement flattened)."""
        p = self.params
        return {"tol": float(p["label_tol"]), "median_size": int(p["label_median"]),
                **dataclasses.asdict(self.patch_sampler())}

    #: the row's generator: the NumPy/OpenCV reference (`one_stage_anomalies`) and its device twin
    #: (`device_anomalies`), both called with `generator_settings()` plus the shared patch and label options
    cpu_factory: Callable[..., Any]
    device_factory: Callable[..., Any]

    def generator_settings(self) -> dict:
        """The row's own generator keyword arguments, the same for both factories."""
        return {}

    def make_generator(self):
        return self.cpu_factory(**self.generator_settings(), **self.label_options())

    def make_device_generator(self):
        return self.device_factory(**self.generator_settings(), **self.device_patch_options())

    def configure_schedulers(self, steps_per_epoch: int, epochs: int) -> None:
        # the lr of epoch e is lr_min + (lr - lr_min)(1 + cos(pi e / epochs)) / 2, the closed form of the
        # reference's CosineAnnealingLR(T_max=epochs) stepped once per epoch; the base loop steps it per step
        lr, lr_min, spe = self.params["lr"], self.params["lr_min"], max(1, steps_per_epoch)

        def factor(step: int) -> float:
            e = step // spe
            return (lr_min + (lr - lr_min) * (1.0 + math.cos(math.pi * e / max(1, epochs))) / 2.0) / lr

        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(self.optimizers[0], factor)]

    def segmentation_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch the loss sees: each slice rotated and shifted, then given a synthetic anomaly
        (x, pixel label)."""
        p = self.params
        x, head = rotate_shift(batch["x"], batch.get("head_mask"), self.torch_generator or self.rng,
                               float(p["rotate_degrees"]), int(p["shift_pixels"]))
        syn = self.synthesise({**batch, "x": x, "head_mask": head})
        return {"x": syn.x, "label": syn.label}

    def training_step(self, batch, step):
        return super().training_step(self.segmentation_batch(batch), step)

    def loss(self, batch):
        logits = self.model(batch["x"]).float()
        return F.binary_cross_entropy_with_logits(logits, batch["label"].float()), {}

    def score_map(self, batch):
        return torch.sigmoid(self.model(batch["x"]).float())


def generator_from_params(cls, params: dict) -> Any:
    """A generator dataclass (CPU or device twin) built from the row's hyper-parameters of the same names."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in params.items() if k in names})


class EmbeddingGaussianMethod(SelfSupervisedMethod):
    """Two-stage rows: classify normal vs augmented, then score embeddings with a Gaussian."""

    defaults = {"lr": 0.03, "momentum": 0.9, "weight_decay": 3e-5, "lr_min": 0.0, "epochs": 100,
                "steps_per_epoch": 256, "batch_size": 64, "head_layers": [512, 128], "image_jitter": 0.1,
                "area_min": 0.02, "area_max": 0.15, "aspect_min": 0.3, "aspect_max": 3.3,
                "cam_layer": "layer4", "train_first_n": None}
    #: the reference's own recipe: kept when a recipe sets these keys under `all`
    own_recipe = ("lr", "momentum", "weight_decay", "lr_min", "epochs", "steps_per_epoch")

    def __init__(self, params, in_channels, image_size, device):
        super().__init__(params, in_channels, image_size, device)
        if self.params["cam_layer"] not in ("layer3", "layer4"):
            raise ValueError(f"{self.name}: cam_layer must be 'layer3' or 'layer4'")
        self.gaussian: dict[str, torch.Tensor] | None = None

    def build(self) -> torch.nn.Module:
        return ResNetProjectionClassifier(self.in_channels, tuple(int(n) for n in self.params["head_layers"]))

    def configure_optimizers(self):
        p = self.params
        return [torch.optim.SGD(self.model.parameters(), lr=p["lr"], momentum=p["momentum"],
                                weight_decay=p["weight_decay"], **self.optimizer_options())]

    def configure_schedulers(self, steps_per_epoch: int, epochs: int) -> None:
        lr, lr_min, per, total = self.params["lr"], self.params["lr_min"], max(1, steps_per_epoch), max(1, epochs)

        def factor(step: int) -> float:     # epoch e runs at the cosine value of epoch e - 1 (e >= 1)
            done = max(step // per - 1, 0)
            return (lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * done / total))) / lr

        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(self.optimizers[0], factor)]

    def pairs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The classification batch: the jittered slices (label 0), then their augmented copies (label 1)."""
        gen = self.torch_generator
        with torch.no_grad():
            if gen is not None:
                x = device_anomalies.color_jitter(batch["x"], gen, float(self.params["image_jitter"]))
            else:
                x = color_jitter(batch["x"], self.rng, float(self.params["image_jitter"]))
        syn = self.synthesise({**batch, "x": x})
        # an augmented copy identical to its original (e.g. air pasted on air) would teach noise
        changed = (syn.x != x).flatten(1).any(1)
        zeros = torch.zeros(len(x), dtype=torch.long, device=x.device)
        if gen is not None:
            # synthesis: device: dropping them would make the batch size data-dependent (a host sync per
            # step); they stay in the batch with loss weight 0 instead (BatchNorm still sees them)
            return {"x": torch.cat([x, syn.x]), "y": torch.cat([zeros, zeros + 1]),
                    "weight": torch.cat([torch.ones_like(changed, dtype=torch.float32), changed.float()])}
        aug = syn.x[changed]
        return {"x": torch.cat([x, aug]), "y": torch.cat([zeros, torch.ones(len(aug), dtype=torch.long,
                                                                             device=x.device)])}

    def training_step(self, batch, step):
        return super().training_step(self.pairs(batch), step)

    def loss(self, batch):
        _, logits = self.model(batch["x"])
        logits = logits.float()
        if "weight" in batch:      # synthesis: device (see `pairs`)
            w = batch["weight"]
            hits = (logits.argmax(1) == batch["y"]).float()
            ce = F.cross_entropy(logits, batch["y"], reduction="none")
            return (ce * w).sum() / w.sum(), {"accuracy": ((hits * w).sum() / w.sum()).detach()}
        acc = (logits.argmax(1) == batch["y"]).float().mean()
        return F.cross_entropy(logits, batch["y"]), {"accuracy": acc.detach()}

    # -- the Gaussian on training embeddings -----------------------------------------------------
    def fit_end(self, train_batches) -> None:
        self.model.eval()
        embs = []
        with torch.no_grad(), self.autocast():
            for batch in train_batches():
                embs.append(self.model.embed(batch["x"]).float().cpu())
        e = F.normalize(torch.cat(embs).double(), dim=1).numpy()
        from sklearn.covariance import LedoitWolf   # here: only the end of training needs it

        lw = LedoitWolf().fit(e)
        self.gaussian = {"mean": torch.from_numpy(lw.location_.copy()),
                         "precision": torch.from_numpy(lw.precision_.copy())}

    def _stat_dtype(self) -> torch.dtype:
        return torch.float32 if self.device.type == "mps" else torch.float64

    def slice_score(self, emb: torch.Tensor) -> torch.Tensor:
        if self.gaussian is None:
            raise RuntimeError(f"{self.name}: no Gaussian fitted yet (fit_end has not run)")
        dt = self._stat_dtype()
        g = {k: v.to(emb.device, dt) for k, v in self.gaussian.items()}
        return mahalanobis(F.normalize(emb.to(dt), dim=1), g["mean"], g["precision"])

    def score(self, batch):
        self.model.eval()
        x = batch["x"]
        with torch.enable_grad():
            with self.autocast():
                l3, l4 = self.model.encoder.forward_maps(x)
            fmap = l3 if self.params["cam_layer"] == "layer3" else l4
            d = self.slice_score(l4.float().mean(dim=(2, 3)))
            (grad,) = torch.autograd.grad(d.sum(), fmap)
        fmap, grad = fmap.detach().float(), grad.float()
        cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * fmap).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return d.detach().float(), cam.detach()

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "gaussian": self.gaussian}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        self.gaussian = state.get("gaussian")
