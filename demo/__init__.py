"""`tripkey demo`: a client-side program that starts the real processes (emulated AWS, issuer,
agent) on loopback and talks to the issuer's API; it imports nothing of the issuer."""
