"""Read events and what happens to them on the host: the frozen ReadEvent/ProcessInfo (model), made
printable and bounded (bounds), redacted (redact, secrets), classified (classify) and recorded in the
local read log (readlog)."""
