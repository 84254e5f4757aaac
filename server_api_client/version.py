"""The client's version, in a module of its own so the package can re-export the client without a cycle."""

__version__ = "0.1.0"
