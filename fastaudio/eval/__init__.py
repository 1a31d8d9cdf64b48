"""Evaluation: the paper's metrics (FD, KL, CLAP score, timing accuracy, VAE reconstruction) and
prompt-following measures independent of the generator (tempo, key, instrument family)."""
