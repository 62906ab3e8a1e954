"""selftune: a self-hosted LLM service that learns from its own use."""

__version__ = "0.1.0"
__all__ = ["__version__"]
