"""Prefect tasks: one thin task per pipeline stage, each calling the library (`neox`) and reporting to the UI."""
