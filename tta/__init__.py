"""tta: offline-first text-to-audio (mel-VAE latent diffusion conditioned on CLAP, HiFi-GAN vocoder).

Importing `tta` is cheap: nothing torch-heavy is imported here, so `tta --help` answers at once.
"""

__version__ = "0.1.0"
