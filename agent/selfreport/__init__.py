"""The tray's "I opened it by mistake": the agent's local self-report server and the tray's client
(server: a Unix socket with SO_PEERCRED/LOCAL_PEERCRED; winpipe: the Windows named pipe)."""
