"""steermoe: find the experts of a Mixture-of-Experts LLM that carry unsafe behaviour and fine-tune only those.

Importing this package is cheap: heavy dependencies (torch, transformers, Great Expectations,
DeepSpeed) are imported by the modules that need them, and Prefect and MLflow never are.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
