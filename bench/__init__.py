"""Benchmarks that print tables: `python -m bench` runs every bench_* module, `python -m bench NAME` one.

A bench module exposes `run() -> list[dict]` (one dict per table row, same keys in every row) and
may set `TITLE`. Timing goals live here, not in unit tests.
"""
