"""Mel-VAE training losses: reconstruction + transients + KL (AudioLDM weighting) + PatchGAN (hinge).

Follows the weighting of AudioLDM's `LPIPSWithDiscriminator` (taming/LDM lineage):

    nll   = sum_pixels(rec) / exp(logvar) + num_pixels * logvar        (per sample, then batch mean;
                                                                        logvar one scalar, fixed at
                                                                        logvar_init as upstream trains
                                                                        it, or learned: learn_logvar)
    kl    = mean over latent elements of KL(q(z|x) || N(0, I))          (per sample, then batch mean)
    G     = nll + kl_weight * kl + d_weight * disc_factor(step) * (-mean D(x_hat))
    D     = disc_factor(step) * hinge(D(x), D(x_hat))

AudioLDM's KL is a *mean* over latent elements (its DiagonalGaussianDistribution.kl), which is why its
kl_weight is 1000 rather than LDM's 1e-6 on a sum. d_weight is the adaptive weight of Esser et al. 2021:
||grad nll|| / ||grad G_adv|| at the decoder's last layer, clamped to [0, 1e4], times disc_weight.
disc_factor is 0 before `disc_start` (AudioLDM: 50 001). LPIPS has no weights we can use here, so its slot
holds a transient term: L1 between time- and frequency-differences of the log-mel images at several time
resolutions, which penalises smeared onsets and blurred partials that a plain L1 averages away.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LossConfig:
    pixel_weight: float = 1.0  # L1 on the log-mel image
    transient_weight: float = 1.0  # L1 on time/frequency differences (multi-resolution), per pixel
    transient_scales: tuple[int, ...] = (1, 2, 4)  # time pooling factors for the difference term
    kl_weight: float = 1000.0  # AudioLDM 16k_64 VAE config (on the per-element mean KL)
    logvar_init: float = 0.0
    # train the output log-variance: AudioLDM's and LDM's optimizers leave it out (it stays at logvar_init),
    # so kl_weight keeps its meaning; true lets it settle near log(reconstruction error), which lowers the KL's
    # effective weight (tta's default VAEs trained that way: their configs set it)
    learn_logvar: bool = False
    disc_start: int = 50_001  # optimizer step at which the discriminator switches on
    disc_weight: float = 0.5  # AudioLDM 16k_64 VAE config
    disc_factor: float = 1.0
    disc_num_layers: int = 3  # PatchGAN depth (pix2pix NLayerDiscriminator)
    disc_channels: int = 64  # first-layer width of the discriminator

    def __post_init__(self) -> None:
        for name in ("pixel_weight", "transient_weight", "kl_weight", "disc_weight", "disc_factor"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name}={getattr(self, name)} must be >= 0")
        if not isinstance(self.learn_logvar, bool):
            raise ValueError(f"loss.learn_logvar={self.learn_logvar!r} must be true or false")
        if self.disc_start < 0 or self.disc_num_layers < 1 or self.disc_channels < 1:
            raise ValueError("loss.disc_start must be >= 0, loss.disc_num_layers and loss.disc_channels >= 1")
        if not self.transient_scales or any(s < 1 for s in self.transient_scales):
            raise ValueError(f"loss.transient_scales={self.transient_scales} must be non-empty and >= 1")


def patchgan_min_size(num_layers: int) -> int:
    """The smallest image side NLayerDiscriminator(num_layers) takes: its 4x4 convolutions (stride 2 but for
    the last two) must leave at least one patch (3 layers: 24 frames, 0.24 s at a 10 ms hop)."""
    def out(n: int) -> int:
        for i in range(num_layers + 2):
            n = (n + 2 - 4) // (2 if i < num_layers else 1) + 1
            if n < 1:
                return 0
        return n

    size = 1
    while out(size) < 1:
        size += 1
    return size


class NLayerDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017) on (B, 1, frames, n_mels) images -> (B, 1, h, w) patch logits."""

    def __init__(self, in_channels: int = 1, channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, num_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < num_layers else 1  # the last hidden layer keeps the resolution
            layers += [
                nn.Conv2d(channels * prev, channels * mult, 4, stride, 1, bias=False),
                nn.BatchNorm2d(channels * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(channels * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.main(image)


def _init_weights(m: nn.Module) -> None:
    # DCGAN init, as the PatchGAN reference: conv N(0, 0.02), norm gain N(1, 0.02), bias 0
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def transient_distance(image: torch.Tensor, rec: torch.Tensor, scales: tuple[int, ...]) -> torch.Tensor:
    """Per-sample sum of |diff(x) - diff(x_hat)| over time and frequency at several time resolutions.

    image, rec: (B, 1, frames, n_mels) log-mel images. Each scale s averages s frames first (so onsets are
    compared at 10, 20, 40 ms ...) and is multiplied by s so every scale weighs like full resolution.
    Returns (B,).
    """
    out = image.new_zeros(image.shape[0])
    for s in scales:
        a, b = image, rec
        if s > 1:
            if a.shape[2] < 2 * s:
                continue
            a, b = F.avg_pool2d(a, (s, 1)), F.avg_pool2d(b, (s, 1))
        dt = (a.diff(dim=2) - b.diff(dim=2)).abs().sum(dim=(1, 2, 3))
        df = (a.diff(dim=3) - b.diff(dim=3)).abs().sum(dim=(1, 2, 3))
        out = out + s * (dt + df)
    return out / len(scales)


def kl_mean(posterior) -> torch.Tensor:
    """AudioLDM's KL: 0.5 * mean over (C, T', F') of mu^2 + var - 1 - logvar, per sample -> (B,)."""
    return 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).mean(dim=(1, 2, 3))


class VAELoss(nn.Module):
    """Holds the learned output log-variance and the discriminator; tracked as one checkpointed module."""

    config_class = LossConfig

    def __init__(self, config: LossConfig):
        super().__init__()
        self.config = config
        self.logvar = nn.Parameter(torch.tensor(float(config.logvar_init)))
        self.discriminator = NLayerDiscriminator(1, config.disc_channels, config.disc_num_layers)

    def disc_active(self, step: int) -> bool:
        """True from `disc_start` on (step = optimizer steps done so far) when the GAN has weight."""
        return step >= self.config.disc_start and self.config.disc_factor > 0

    def generator_loss(
        self,
        image: torch.Tensor,
        rec: torch.Tensor,
        posterior,
        *,
        step: int,
        last_layer: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Autoencoder objective on (B, 1, frames, n_mels) images; returns (loss, scalars for logging)."""
        c = self.config
        batch = image.shape[0]
        l1 = (image - rec).abs()
        rec_sum = c.pixel_weight * l1.sum(dim=(1, 2, 3))
        trans = transient_distance(image, rec, c.transient_scales)
        rec_sum = rec_sum + c.transient_weight * trans
        num_pixels = l1[0].numel()
        nll = (rec_sum / torch.exp(self.logvar) + num_pixels * self.logvar).sum() / batch
        kl = kl_mean(posterior).sum() / batch
        loss = nll + c.kl_weight * kl
        logs = {
            "l1": _num(l1.mean()),
            "transient": _num(trans.mean() / num_pixels),
            "kl": _num(kl),
            "nll": _num(nll),
            "logvar": _num(self.logvar),
        }
        if self.disc_active(step):
            g_loss = -self.discriminator(rec).mean()
            d_weight = self.adaptive_weight(nll, g_loss, last_layer)
            loss = loss + d_weight * c.disc_factor * g_loss
            logs.update(g_loss=_num(g_loss), d_weight=_num(d_weight))
        logs["ae_loss"] = _num(loss)
        return loss, logs

    def adaptive_weight(
        self, nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor | None
    ) -> torch.Tensor:
        """||d nll / d W|| / (||d g_loss / d W|| + 1e-4), clamped to [0, 1e4], times disc_weight."""
        if last_layer is None or not torch.is_grad_enabled():
            return torch.tensor(0.0, device=nll.device)
        nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
        g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        weight = torch.clamp(nll_grad.norm() / (g_grad.norm() + 1e-4), 0.0, 1e4).detach()
        return weight * self.config.disc_weight

    def discriminator_loss(
        self, image: torch.Tensor, rec: torch.Tensor, *, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Hinge loss of the PatchGAN on real vs detached reconstructions (zero before disc_start)."""
        logits_real = self.discriminator(image.detach())
        logits_fake = self.discriminator(rec.detach())
        factor = self.config.disc_factor if self.disc_active(step) else 0.0
        loss = factor * hinge_d_loss(logits_real, logits_fake)
        return loss, {
            "d_loss": _num(loss),
            "logits_real": _num(logits_real.mean()),
            "logits_fake": _num(logits_fake.mean()),
        }


def _num(t: torch.Tensor) -> float:
    return float(t.detach())
