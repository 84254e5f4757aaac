"""What an interpreter runs: `python3 /usr/bin/aws s3 ls` is the program `aws` in /usr/bin/aws.

Shared by classification (the program's names) and provenance (the file to examine). Interpreters
whose first non-option argument is the program: python, node, ruby, perl, php, shells, java -jar,
PowerShell -File. Inline code (`python -c`, `perl -e`, `node -e`) has no file; `python -m NAME`
names a module, found on disk only when it sits in the working directory (python puts the working
directory first on sys.path for -m, which is exactly where a planted fake would be).
"""

from __future__ import annotations

import fnmatch
import ntpath
import os
import posixpath
import re
from collections.abc import Sequence

INTERPRETERS = (
    "python*",
    "pypy*",
    "node",
    "nodejs",
    "deno",
    "bun",
    "ruby",
    "perl",
    "perl5*",
    "php*",
    "sh",
    "bash",
    "dash",
    "zsh",
    "ksh",
    "java",
    "osascript",
    "pwsh",
    "powershell",
)
# Python's -E/-I/-O are switches (no value), so they are deliberately absent from both sets.
CODE_FLAGS = frozenset({"-c", "-e", "--eval", "-p", "--print", "-command", "-Command"})
VALUE_FLAGS = frozenset(
    {"-W", "-X", "-Q", "-r", "--require", "-cp", "-classpath", "--class-path", "--import", "--loader", "-o"}
)
SCRIPT_SUFFIXES = frozenset(
    {".py", ".pyw", ".js", ".mjs", ".cjs", ".ts", ".jar", ".sh", ".bash", ".rb", ".pl", ".php", ".ps1"}
)

FILE, MODULE, INLINE = "file", "module", "inline"


def base_name(path: str | None) -> str | None:
    """Lower-case basename without a Windows .exe suffix (and without a deleted-file marker)."""
    if not path:
        return None
    path = path.removesuffix(" (deleted)")
    name = re.split(r"[\\/]", path)[-1].lower()
    return name.removesuffix(".exe") or None


def is_interpreter(names: Sequence[str | None]) -> bool:
    return any(n and fnmatch.fnmatchcase(n, pattern) for n in names for pattern in INTERPRETERS)


def script_argument(argv: Sequence[str]) -> tuple[str | None, str | None]:
    """(kind, argument) of what an interpreter's argv runs: (file, path), (module, name),
    (inline, None), or (None, None) when it runs nothing we can name (an interactive shell)."""
    args = iter(argv[1:])
    for arg in args:
        if arg in CODE_FLAGS:
            return INLINE, None
        if arg in ("-m", "-jar", "-File", "-file"):
            value = next(args, None)
            return (MODULE if arg == "-m" else FILE), value
        if arg in VALUE_FLAGS:
            next(args, None)
            continue
        if arg.startswith("-") and arg != "-":
            if arg.startswith("-m") and len(arg) > 2 and not arg.startswith("--"):  # python -mawscli
                return MODULE, arg[2:]
            continue
        return FILE, arg
    return None, None


def _module_file(name: str, cwd: str | None) -> str | None:
    if not cwd or not re.fullmatch(r"[A-Za-z_][\w.]*", name):
        return None
    stem = posixpath.join(cwd, *name.split("."))
    for candidate in (stem + ".py", posixpath.join(stem, "__main__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None


def script_of(
    argv: Sequence[str], exe: str | None, cwd: str | None
) -> tuple[str | None, str | None, str | None]:
    """(kind, name as given, path on disk or None) of what the interpreter `exe`/argv[0] runs;
    (None, None, None) for a program that is not an interpreter."""
    if not argv or not is_interpreter([base_name(exe), base_name(argv[0])]):
        return None, None, None
    kind, name = script_argument(argv)
    if kind == MODULE:
        return kind, name, _module_file(name, cwd) if name else None
    if kind != FILE or not name or name == "-":
        return kind, name, None
    windows = "\\" in name or (len(name) > 1 and name[1] == ":")
    paths = ntpath if windows else posixpath
    if not paths.isabs(name):
        if not cwd:
            return kind, name, None
        name_path = paths.join(cwd, name)
    else:
        name_path = name
    return kind, name, paths.normpath(name_path)


__all__ = [
    "FILE",
    "INLINE",
    "INTERPRETERS",
    "MODULE",
    "SCRIPT_SUFFIXES",
    "base_name",
    "is_interpreter",
    "script_argument",
    "script_of",
]
