"""relay: a real-time event relay speaking Socket.IO, with an HTTP API for backends."""

__version__ = "0.1.0"

__all__ = ["__version__"]
