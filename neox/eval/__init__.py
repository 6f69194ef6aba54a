"""Evaluation: lm-eval on our checkpoints, with offline task data built from the held-out split."""
