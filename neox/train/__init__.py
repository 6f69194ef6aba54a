"""Training: DeepSpeed on our GPT-NeoX, workers managed by Ray Train."""
