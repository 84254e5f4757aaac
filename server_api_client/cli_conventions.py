"""What the three command lines (`tripkey`, `tripkey-agent`, `tripkey-issuer`) do the same way.

* An error is one sentence on stderr, ``<prog>: [error: ]<what and how to fix it>``. With ``--json``
  it is a JSON object instead, ``{"error": {"code": "<word>", "message": "<sentence>"},
  "exit_code": N}`` — the issuer API's error object plus the exit code (docs/schema.md, "Errors") —
  on stderr (for a script that reads errors) and on stdout (for one that parses only stdout): never a
  traceback. Usage errors found by argparse too (`ArgumentParser`, `parse_args`).
* Output into a pipe whose reader went away (``tripkey alerts show ID --json | head``) ends the
  command quietly with exit 141 (128 + SIGPIPE), as a shell utility killed by SIGPIPE would; the
  standard Python recipe: stdout is pointed at /dev/null so the interpreter's final flush cannot
  raise again.

Here, not in one tool, because the agent and the issuer both depend on this package already and
none of the three may import another's entry points.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn, TextIO

from server_api_client.terminal import visible

EXIT_BROKEN_PIPE = 141
BROKEN_PIPE_HELP = "the output's reader went away (e.g. `| head`); nothing else went wrong"


class HelpFormatter(argparse.HelpFormatter):
    """Wraps one-paragraph descriptions as usual; text with line breaks (examples, exit codes) stays
    exactly as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text.strip():
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, except that a usage error is the JSON error object when the command line asked for
    --json (main() sets `json_errors` before parsing); subcommand parsers inherit the class."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        if ArgumentParser.json_errors:
            report_error(self.prog, message, 2, as_json=True)
            sys.exit(2)
        super().error(message)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse `argv` (default: sys.argv[1:]), with JSON usage errors when it contains --json."""
    args = list(sys.argv[1:] if argv is None else argv)
    ArgumentParser.json_errors = "--json" in args
    try:
        return parser.parse_args(args)
    finally:
        ArgumentParser.json_errors = False


# Error codes every tool uses for the exit codes they share; each tool passes its own for the rest.
COMMON_ERROR_CODES = {2: "usage_error", 130: "interrupted", EXIT_BROKEN_PIPE: "broken_pipe"}


def error_object(message: str, exit_code: int, code: str | None = None) -> dict[str, object]:
    """The one error shape: the issuer API's `{"error": {"code", "message"}}` plus the exit code."""
    word = code or COMMON_ERROR_CODES.get(exit_code, "error")
    return {"error": {"code": word, "message": message}, "exit_code": exit_code}


def report_error(
    prog: str,
    message: str,
    exit_code: int,
    *,
    as_json: bool,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    label: str = "error",
    code: str | None = None,
) -> int:
    """Print the error the tool's way; return `exit_code` for `return report_error(...)`. `code` is
    the error's word in JSON (default: from the exit code, COMMON_ERROR_CODES, else "error")."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    if as_json:
        line = json.dumps(error_object(message, exit_code, code), sort_keys=True)
        err.write(line + "\n")
        out.write(line + "\n")
    else:
        # A message may quote a hostile name (a reader's argv, an id the user typed): made visible.
        err.write(f"{prog}: {label + ': ' if label else ''}{visible(message)}\n")
    return exit_code


def run_quietly_on_broken_pipe(main: Callable[[], int]) -> int:
    """Run `main` and flush stdout; a closed pipe is exit 141 without a traceback."""
    try:
        code = main()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a real file (a test's StringIO): nothing to silence
        pass


__all__ = [
    "BROKEN_PIPE_HELP",
    "COMMON_ERROR_CODES",
    "EXIT_BROKEN_PIPE",
    "ArgumentParser",
    "HelpFormatter",
    "error_object",
    "parse_args",
    "report_error",
    "run_quietly_on_broken_pipe",
]
