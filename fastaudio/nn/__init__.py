"""Layers the models are built from; each dispatches to a Triton kernel or PyTorch."""
