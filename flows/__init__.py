"""Prefect flows composing the stage tasks: data_prep, train, evaluate_and_promote, pretrain and retrain."""

from neox.runtime.progress import quiet_library_bars

quiet_library_bars()  # here, so it runs before any flow module imports a library with bars
