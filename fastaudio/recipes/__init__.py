"""Training recipes shipped with fastaudio: the configs that trained the default model."""
