"""Training and evaluation machinery: checkpoints, optimiser, loop, metrics."""
