"""Read events and what happens to them on the host: the frozen ReadEvent/ProcessInfo (model), made
printable and bounded (bounds), redacted (redact, secrets), the reader's provenance (provenance,
probe, packages, scripts), classified in a way a name cannot fool (classify, trust) and recorded in
the local read log (readlog)."""
