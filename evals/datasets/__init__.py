"""Dataset adapters for the evaluation harness; see `base.py` for the shapes they produce."""
