"""Vocoders: log-mel back to waveform (HiFi-GAN, a Vocos-style inverse-STFT vocoder, Griffin-Lim with or
without a learned magnitude post-net)."""
