"""Prefect flows composing the stage tasks (filled in by the orchestration work)."""
