"""Run benchmark modules (bench/bench_*.py) and print each one's rows as a table.

python -m bench                 # every bench module
python -m bench fanotify        # bench/bench_fanotify.py only
python -m bench --json          # one JSON object {module: rows} for scripts
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path
from typing import Any


def discover() -> list[str]:
    """Names (without the bench_ prefix) of every bench module, sorted."""
    folder = Path(__file__).resolve().parent
    return sorted(m.name.removeprefix("bench_") for m in pkgutil.iter_modules([str(folder)])
                  if m.name.startswith("bench_"))  # fmt: skip


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)"
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    numeric = [all(isinstance(row.get(c), int | float | None) for row in rows) for c in columns]

    def line(values: list[str]) -> str:
        padded = zip(values, widths, numeric, strict=True)
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in padded)

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("names", nargs="*", help=f"modules to run (default: all of {', '.join(discover())})")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args(argv)
    available = discover()
    unknown = [n for n in args.names if n not in available]
    if unknown:
        parser.error(f"unknown bench module(s) {', '.join(unknown)}; available: {', '.join(available)}")
    results: dict[str, list[dict[str, Any]]] = {}
    failed = False
    for name in args.names or available:
        module = importlib.import_module(f"bench.bench_{name}")
        started = time.monotonic()
        try:
            rows = module.run()
        except Exception as exc:  # one broken bench must not hide the others' numbers
            failed = True
            print(f"bench {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        results[name] = rows
        if not args.json:
            title = getattr(module, "TITLE", name)
            print(f"\n== {title} ({time.monotonic() - started:.1f} s)\n{format_table(rows)}")
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
