"""The one Python client of the Tripkey issuer HTTP API."""
