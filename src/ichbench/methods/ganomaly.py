"""GANomaly (Akcay et al. 2018) on the shared autoencoder's parts (`nets.ganomaly`), as in the
MedIAnomaly reference:

generator loss      w_adv * mean (f_D(x) - f_D(x^))^2        (feature matching on D's dense features,
                                                          the ReLU output of its Linear 4w(S/16)^2 -> 1024)
                  + w_rec * reconstruction  (mean squared error, the reference; `rec_loss: l1` = Akcay)
                  + w_lat * mean (z - z^)^2
discriminator loss  0.5 * (BCE(sigmoid D(x), 1) + BCE(sigmoid D(x^ detached), 0))   (computed from the
                    logits: the same value, autocast-safe)

Two Adam optimisers (the recipe's lr; `beta1` 0.9 as the reference, Akcay et al. used 0.5). One
`training_step` = one generator step then one discriminator step. As in the reference, when the
discriminator's loss averaged over an epoch (summed on the device, read once at the epoch's last step)
falls below `d_reinit_below` (1e-5), it is re-initialised
the reference's way (`weights_init`: conv weights ~ N(0, 0.02), BatchNorm weights ~ N(1, 0.02) and biases 0;
its Linear layers and BatchNorm running statistics are left as they are). The epoch length comes from
`configure_schedulers`; without it (a bare `training_step` loop) every step is checked. Slice score:
mean (z - z^)^2 in eval mode (the reference scores in train mode, where BatchNorm sees one image); the
figure map is abs(x - x^), channel-averaged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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

    def __init__(self, params, in_channels, image_size, device):
        super().__init__(params, in_channels, image_size, device)
        self._steps_per_epoch = 1            # set by configure_schedulers
        # the discriminator's loss summed over the current epoch, on the device (read once, at its end)
        self._d_sum: torch.Tensor | float = 0.0
        self._d_count = 0

    def build(self) -> torch.nn.Module:
        p = self.params
        if p["rec_loss"] not in ("l1", "l2"):
            raise ValueError(f"GANomaly: rec_loss must be 'l1' or 'l2', not {p['rec_loss']!r}")
        return GANomalyNet(self.in_channels, self.image_size, p["width"], p["latent_dim"], p["hidden"])

    def configure_optimizers(self):
        p = self.params
        betas = (p["beta1"], 0.999)
        return [torch.optim.Adam(self.model.generator.parameters(), lr=p["lr"], betas=betas,
                                 weight_decay=p["weight_decay"], **self.optimizer_options()),
                torch.optim.Adam(self.model.discriminator.parameters(), lr=p["lr"], betas=betas,
                                 weight_decay=p["weight_decay"], **self.optimizer_options())]

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
        logs = {"adv": adv.detach(), "rec": recl.detach(), "lat": lat.detach()}
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

    def configure_schedulers(self, steps_per_epoch: int, epochs: int) -> None:
        self._steps_per_epoch = max(1, int(steps_per_epoch))

    def reinit_discriminator(self) -> None:
        """The reference's `weights_init` applied to the discriminator (draws from the torch global RNG)."""
        with torch.no_grad():
            for m in self.model.discriminator.modules():
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                    m.weight.normal_(0.0, 0.02)
                elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.weight.normal_(1.0, 0.02)
                    m.bias.zero_()

    def training_step(self, batch, step):
        self.model.train()
        x = batch["x"]
        opt_g, opt_d = self.optimizers
        disc = self.model.discriminator
        # generator step (the discriminator only passes gradients through)
        disc.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        x = self.to_memory_format(x)
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
        ld = loss_d.detach()
        # the reference tests the epoch's mean discriminator loss after each epoch: summed on the device
        # (float64, as a Python float sum), read back once, at the epoch's last step
        self._d_sum = self._d_sum + ld.double()
        self._d_count += 1
        reinit = False
        if self._d_count >= self._steps_per_epoch:
            reinit = float(self._d_sum) / self._d_count < self.params["d_reinit_below"]
            self._d_sum, self._d_count = 0.0, 0
            if reinit:
                self.reinit_discriminator()
        for s in self.schedulers:
            s.step()
        return {"loss": loss_g.detach(), **logs, "loss_d": ld, "d_reinit": float(reinit)}

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
