"""What the agent tells the issuer: enrollment, the local spool, the uploader and heartbeat, and the
one module that builds every payload that leaves the host (payloads)."""
