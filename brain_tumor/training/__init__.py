"""Training: the one loop for both models, the fast paths, resume, the model factory and the seen-index."""
