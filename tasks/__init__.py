"""Prefect tasks: one thin task per pipeline stage (filled in by the orchestration work)."""
