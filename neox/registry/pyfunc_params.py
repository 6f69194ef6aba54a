"""The params the registered pyfunc takes, with their defaults: its MLflow signature and its code read them here."""

PARAMS = {"max_new_tokens": 32, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": -1, "stop": [""], "chat": True}
