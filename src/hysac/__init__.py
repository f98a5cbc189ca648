"""hysac: safety-aware vision-language embeddings in hyperbolic space."""
