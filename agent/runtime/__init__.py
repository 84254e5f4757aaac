"""How the agent process runs: checks before it enrolls (preflight), the external deadman that kills
a stopped or wedged agent (deadman: systemd watchdog or pipe; supervisor: the killer without
systemd), and the Windows service entry (winservice)."""
