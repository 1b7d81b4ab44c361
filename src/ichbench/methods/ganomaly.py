"""GANomaly (Akcay et al. 2018) on the shared autoencoder's parts (`nets.ganomaly`), as in the
MedIAnomaly reference:

generator loss      w_adv * mean (f_D(x) - f_D(x^))^2        (feature matching on D's conv features)
                  + w_rec * reconstruction  (mean squared error, the reference; `rec_loss: l1` = Akcay)
                  + w_lat * mean (z - z^)^2
discriminator loss  0.5 * (BCE(D(x), 1) + BCE(D(x^ detached), 0))   (on logits: autocast-safe)

Two Adam optimisers (the recipe's lr; `beta1` 0.9 as the other reconstruction rows, Akcay et al. used
0.5). One `training_step` = one generator step then one discriminator step; the discriminator is
re-initialised when its loss falls below `d_reinit_below` (1e-5). Slice score: mean (z - z^)^2 in eval
mode (the reference scores in train mode, where BatchNorm sees one batch); the figure map is
abs(x - x^), channel-averaged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..nets.ganomaly import GANomalyNet
from ._common import float32
from .ae import AutoEncoderMethod
from .base import register


@register
class GANomaly(AutoEncoderMethod):
    name = "GANomaly"
    paper = "Akcay et al. 2018, GANomaly"
    defaults = {"w_adv": 1.0, "w_rec": 50.0, "w_lat": 1.0, "rec_loss": "l2", "beta1": 0.9,
                "d_reinit_below": 1e-5}

    def build(self) -> torch.nn.Module:
        p = self.params
        if p["rec_loss"] not in ("l1", "l2"):
            raise ValueError(f"GANomaly: rec_loss must be 'l1' or 'l2', not {p['rec_loss']!r}")
        return GANomalyNet(self.in_channels, self.image_size, p["width"], p["latent_dim"], p["hidden"])

    def configure_optimizers(self):
        p = self.params
        betas = (p["beta1"], 0.999)
        return [torch.optim.Adam(self.model.generator.parameters(), lr=p["lr"], betas=betas,
                                 weight_decay=p["weight_decay"]),
                torch.optim.Adam(self.model.discriminator.parameters(), lr=p["lr"], betas=betas,
                                 weight_decay=p["weight_decay"])]

    # -- losses -------------------------------------------------------------------------------
    def _generator_loss(self, x: torch.Tensor):
        p = self.params
        rec, z, z_hat = self.model.generator(x)
        disc = self.model.discriminator
        f_real = disc(x)[1]
        f_fake = disc(rec)[1]
        with float32(x):
            adv = torch.mean((f_real.float() - f_fake.float()) ** 2)
            diff = x.float() - rec.float()
            recl = torch.mean(diff ** 2) if p["rec_loss"] == "l2" else torch.mean(diff.abs())
            lat = torch.mean((z.float() - z_hat.float()) ** 2)
            loss = p["w_adv"] * adv + p["w_rec"] * recl + p["w_lat"] * lat
        logs = {"adv": float(adv.detach()), "rec": float(recl.detach()), "lat": float(lat.detach())}
        return loss, logs, rec

    def _discriminator_loss(self, x: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        disc = self.model.discriminator
        real_logit = disc(x)[0]
        fake_logit = disc(fake)[0]
        with float32(x):
            real_logit, fake_logit = real_logit.float(), fake_logit.float()
            return 0.5 * (F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit)) +
                          F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit)))

    def loss(self, batch):
        """The generator's objective (what a training step minimises for the generator)."""
        loss, logs, _ = self._generator_loss(batch["x"])
        return loss, logs

    def reinit_discriminator(self) -> None:
        for m in self.model.discriminator.modules():
            if m is not self.model.discriminator and hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def training_step(self, batch, step):
        self.model.train()
        x = batch["x"]
        opt_g, opt_d = self.optimizers
        disc = self.model.discriminator
        # generator step (the discriminator only passes gradients through)
        disc.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        with self.autocast():
            loss_g, logs, rec = self._generator_loss(x)
        loss_g.backward()
        opt_g.step()
        disc.requires_grad_(True)
        # discriminator step
        opt_d.zero_grad(set_to_none=True)
        with self.autocast():
            loss_d = self._discriminator_loss(x, rec.detach())
        loss_d.backward()
        opt_d.step()
        ld = float(loss_d.detach())
        reinit = ld < self.params["d_reinit_below"]
        if reinit:
            self.reinit_discriminator()
        for s in self.schedulers:
            s.step()
        return {"loss": float(loss_g.detach()), **logs, "loss_d": ld, "d_reinit": float(reinit)}

    # -- scoring ------------------------------------------------------------------------------
    def score_map(self, batch):
        x = batch["x"]
        return (x - self.model(x).float()).abs()

    def score(self, batch):
        self.model.eval()
        x = batch["x"]
        with torch.no_grad(), self.autocast():
            rec, z, z_hat = self.model.generator(x)
        with float32(x):
            s = torch.mean((z.float() - z_hat.float()) ** 2, dim=1)
            m = (x.float() - rec.float()).abs().mean(dim=1)
        return s, m
