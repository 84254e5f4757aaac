"""Errors of the credentials-file editor (agent.credfile, agent.credfile.safefs, agent.credfile.awsconfig).

    CredfileError                 base; .reason, .path (str | None), .line (1-based | None)
    ├── ParseError                the file cannot be parsed the way botocore parses it
    ├── ConflictError             a section with our profile name that is not ours, or duplicate sections
    │   └── DuplicateSectionError .section: a section name appears twice (botocore refuses the file)
    ├── UnsafePathError           symlink, foreign owner, loose permissions, hard link, not a regular file
    ├── MissingDirectoryError     a directory on the path (e.g. the home) does not exist
    └── ConcurrentChangeError     the file kept changing under us; nothing was written

Every error leaves the file byte-identical. Messages never contain a secret.
"""

from __future__ import annotations


class CredfileError(Exception):
    def __init__(self, reason: str, *, path: str | None = None, line: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = path
        self.line = line

    def __str__(self) -> str:
        where = self.path or ""
        if self.line is not None:
            where = f"{where}:line {self.line}" if where else f"line {self.line}"
        return f"{where}: {self.reason}" if where else self.reason

    def at(self, path: object) -> CredfileError:
        """Attach the file's path (used by the file-level functions); returns self."""
        self.path = str(path)
        return self


class ParseError(CredfileError):
    pass


class ConflictError(CredfileError):
    pass


class DuplicateSectionError(ConflictError):
    def __init__(self, section: str, *, path: str | None = None, line: int | None = None) -> None:
        super().__init__(f"section [{section}] appears more than once", path=path, line=line)
        self.section = section


class UnsafePathError(CredfileError):
    pass


class MissingDirectoryError(CredfileError):
    pass


class ConcurrentChangeError(CredfileError):
    pass
