"""Mel-spectrogram KL autoencoder: the latent space the diffusion model lives in."""
