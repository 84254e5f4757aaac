"""Detection of canary use: parsers (events), matching, the SQS / LookupEvents / last-used sources,
DB leases (locks) and the runner that drives them all (runner.DetectionRunner)."""
