"""Code shared by the examples: decoding, the training loop, models and metrics."""
