"""Fleet simulation: N simulated agents against issuer replicas behind HAProxy on PostgreSQL.

`python -m bench.fleet` (or `make bench-fleet`); `--help` lists the knobs. See bench/fleet/run.py.
"""
