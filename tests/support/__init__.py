"""Shared test helpers and fixtures (fixtures are registered as plugins by tests/conftest.py)."""
