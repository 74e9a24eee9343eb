"""Training the project's own checkpoints (CPU-friendly, resumable)."""
