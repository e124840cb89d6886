"""Latent diffusion: the AudioLDM-style UNet (`model`), its training loop (`train`) and sampling (`sampling`)."""
