"""Alerts: one per credential incident (service), host context (enrich), a verdict hint (verdict),
the JSON shape (serialize) and delivery to sinks with retries (sinks, delivery)."""
