"""neox-pipeline: the GPT-NeoX library (model, config, Hugging Face interop, CLI)."""
