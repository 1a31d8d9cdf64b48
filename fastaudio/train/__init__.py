"""Training: the VAE, CLAP and latent-diffusion stages behind `fastaudio train`."""
