"""The help text of `tripkey-issuer`: the exit codes and an example for every command."""

from __future__ import annotations

from server_api_client.cli_conventions import BROKEN_PIPE_HELP

EPILOG = f"""\
settings come from defaults < --config FILE < TRIPKEY_* environment < flags; `--db` takes a URL
(sqlite:///PATH, postgresql://USER@HOST/DB) or a plain file path (an SQLite file).

exit codes:
  0    success
  1    runtime failure (database or AWS unreachable); `check`: a check failed
  2    usage or configuration error (the message names the key)
  3    no usable database: none there (only `serve` and `migrate` create one), no Tripkey schema in
       it, or another schema revision; pass the --db/--config that `serve` uses
  4    serve: cannot listen (address in use, port not allowed); choose another with --listen
  130  interrupted
  141  {BROKEN_PIPE_HELP}

examples:
  tripkey-issuer check --config /etc/tripkey/issuer.toml
  tripkey-issuer serve --config /etc/tripkey/issuer.toml
  tripkey-issuer token create --role enroll --label "mdm fleet A" --config /etc/tripkey/issuer.toml
  tripkey-issuer token list --all --json --config /etc/tripkey/issuer.toml
"""

CONFIG = "/etc/tripkey/issuer.toml"
EXAMPLES = {
    "serve": f"""\
examples:
  tripkey-issuer serve --config {CONFIG}
  tripkey-issuer serve --db /var/lib/tripkey-issuer/issuer.db --listen 127.0.0.1:8700
  tripkey-issuer serve --db sqlite:///tmp/t.db --aws-endpoint http://127.0.0.1:5000 --poll-interval 10
""",
    "check": f"""\
Everything `serve` needs, without starting it: settings (sinks included), the database (reachable,
schema revision), the listen address, AWS credentials for every account of the pool, detection.
Exit 0 when nothing failed (warnings allowed), 1 when a check failed, 2 when the settings do not load.

examples:
  tripkey-issuer check --config {CONFIG}
  tripkey-issuer check --config {CONFIG} --json | jq '.checks[] | select(.status != "ok")'
""",
    "migrate": f"""\
examples:
  tripkey-issuer migrate --config {CONFIG}
  tripkey-issuer migrate --db postgresql://tripkey@db.internal/tripkey --json
""",
    "config show": f"""\
examples:
  tripkey-issuer config show --config {CONFIG}
  TRIPKEY_POLL_INTERVAL=60 tripkey-issuer config show --config {CONFIG} --json
""",
    "token create": f"""\
examples:
  tripkey-issuer token create --role enroll --label "mdm fleet A" --config {CONFIG}
  tripkey-issuer token create --role responder --label "soc on-call" --config {CONFIG} --json
""",
    "token list": f"""\
examples:
  tripkey-issuer token list --config {CONFIG}
  tripkey-issuer token list --all --json --config {CONFIG}
""",
    "token revoke": f"""\
examples:
  tripkey-issuer token revoke tok_0123456789abcdef --config {CONFIG}
""",
}
