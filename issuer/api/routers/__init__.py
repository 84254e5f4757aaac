"""One router per resource: enroll, devices, credentials, events, health (A1); alerts, ingest (E)."""
