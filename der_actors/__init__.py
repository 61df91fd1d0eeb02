"""DER control plane headend: a trio actor system behind REST (Quart-Trio) and gRPC (purerpc)."""

__version__ = "0.1.0"
