"""Where and when canaries are planted: target discovery (users, targets), the planter that mints
and writes them, renewal and tamper schedules (schedule), and the watchdog-driven repair."""
