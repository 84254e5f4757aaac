"""The help text of `tripkey-agent`: the exit codes and examples for every command."""

from __future__ import annotations

from server_api_client.cli_conventions import BROKEN_PIPE_HELP

EPILOG = f"""\
exit codes:
  0    success
  1    failure (not root where root is needed, enrollment refused, state unusable, unexpected error)
  2    usage or configuration error (the message names the key)
  3    partly done: at least one target is not planted / not removed / in conflict
  4    the issuer is unreachable (unplant: files cleaned but keys NOT revoked; it prints the command
       that finishes the job)
  5    not enrolled, or no planted credential to use (trigger)
  6    trigger: the AWS CLI (`aws`) is not installed
  7    trigger: the canary was NOT denied (its explicit deny is not in effect)
  8    trigger: AWS could not be reached at all (the self-test proved nothing)
  141  {BROKEN_PIPE_HELP}
  With --json, an error is a JSON object {{"error": {{"code": "...", "message": "..."}}, "exit_code": N}}
  on stderr (and stdout); docs/schema.md lists the codes.

configuration: --config FILE (TOML; default $TRIPKEY_CONFIG or /etc/tripkey/agent.toml),
TRIPKEY_<KEY> environment variables, then flags (flags win).
"""

EXAMPLES = {
    "run": ["tripkey-agent run --config /etc/tripkey/agent.toml   # normally started by systemd/launchd"],
    "status": ["tripkey-agent status", "tripkey-agent status --json | jq '.targets[].status'"],
    "reads": [
        "tripkey-agent reads --since 7d",
        "tripkey-agent reads --path /home/alice/.aws/credentials --limit 20 --json",
    ],
    "unplant": ["sudo tripkey-agent unplant", "sudo tripkey-agent unplant --no-revoke --json"],
    "plant-once": [
        "sudo tripkey-agent plant-once --config /etc/tripkey/agent.toml",
        "sudo tripkey-agent plant-once --set all_users=false --json",
    ],
    "check": ["tripkey-agent check", "tripkey-agent check --json"],
    "trigger": [
        "sudo tripkey-agent trigger",
        "sudo tripkey-agent trigger --target /home/alice/.aws/credentials --json",
    ],
    "tray": ["tripkey-agent tray", "tripkey-agent tray --show"],
    "service": [
        "tripkey-agent service   # (Windows) started by the Service Control Manager, never by hand",
        "tripkey-agent service --configure-recovery   # (Windows) what the MSI runs after installing",
    ],
    "sensors": [
        "sudo tripkey-agent sensors          # what can run here, and what `auto` picks and why",
        "sudo tripkey-agent sensors --live   # start it on a scratch file; a child `cat` reads it",
    ],
}
