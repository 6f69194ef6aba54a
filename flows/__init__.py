"""Prefect flows composing the stage tasks: data_prep, train, evaluate_and_promote, pretrain and retrain."""
