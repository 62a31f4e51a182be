"""latentstore: grade vertebral fractures on CT through a diffusion autoencoder's semantic latents."""

__version__ = "0.1.0"
