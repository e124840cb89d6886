"""HiFi-GAN vocoder: log-mel back to waveform."""
