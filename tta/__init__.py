"""tta: offline-first text-to-audio (mel-VAE latent diffusion conditioned on CLAP, HiFi-GAN vocoder).

Importing `tta` is cheap: nothing torch-heavy is imported here, so `tta --help` answers at once.
"""

__version__ = "0.1.0"


class UsageError(ValueError):
    """A bad combination of command-line flags (one flag needs or excludes another): `tta` prints one line and
    exits 2, where bad input (a file, a value) exits 1."""
