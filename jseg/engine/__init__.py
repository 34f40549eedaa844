"""Training and evaluation: the loop (trainer), its work dir, evaluation and metrics, the
optimiser and learning-rate schedule, and mixed precision."""
