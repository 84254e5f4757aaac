"""Tripkey issuer: mints canary AWS credentials, keeps the registry, detects use, raises alerts."""

__version__ = "0.1.0"
