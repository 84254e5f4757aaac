"""Tripkey endpoint agent: plants canary credentials and records which process reads them."""

__version__ = "0.1.0"
