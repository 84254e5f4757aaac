"""The Windows credentials-file writer (agent/credfile/safefs_win.py) with only its ACL calls faked.

The file handling (temp file, flush, os.replace, refusal of links and of a file changed under us)
is the real code on the real file system; what is faked is winacl.protect, the Win32 call that
makes a file owner-only, recorded so the tests see which path got which owner and when. The ACL
itself (SetNamedSecurityInfo) can only be checked on the Windows runner.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.credfile import safefs_win, winacl
from agent.credfile.errors import ConcurrentChangeError, MissingDirectoryError, UnsafePathError

SID = "S-1-5-21-3457937927-2839227994-823803824-1104"


@pytest.fixture
def protected(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, bool]]:
    """winacl.protect calls: (path, owner SID, whether the path already held the final bytes)."""
    calls: list[tuple[str, str, bool]] = []

    def protect(path: str | os.PathLike[str], owner_sid: str, **_: object) -> None:
        calls.append((os.fspath(path), owner_sid, Path(path).name == "credentials"))

    monkeypatch.setattr(winacl, "protect", protect)
    return calls


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    home = tmp_path / "Users" / "alice"
    home.mkdir(parents=True)
    return home


def test_creates_the_folder_and_file_owner_only_before_they_get_their_names(
    profile: Path, protected: list[tuple[str, str, bool]]
) -> None:
    uid = winacl.uid_for_sid(SID)
    path = profile / ".aws" / "credentials"
    assert safefs_win.update_file(path, lambda old: b"[x]\n", owner_uid=uid, create_parent=True)
    assert path.read_bytes() == b"[x]\n"
    folder, temp = protected
    assert folder == (str(profile / ".aws"), SID, False)
    assert temp[1] == SID and not temp[2] and Path(temp[0]).name.startswith(".credentials.tmp-")
    assert not Path(temp[0]).exists()  # moved over the file, not left behind
    assert safefs_win.read_file(path, owner_uid=uid) == b"[x]\n"
    assert uid >= winacl.UID_BASE and winacl.sid_for_uid(uid) == SID


def test_other_bytes_are_kept_and_nothing_is_written_when_nothing_changes(
    profile: Path, protected: list[tuple[str, str, bool]]
) -> None:
    uid = winacl.uid_for_sid(SID)
    (profile / ".aws").mkdir()
    path = profile / ".aws" / "credentials"
    path.write_bytes(b"[personal]\r\naws_access_key_id = AKIAPERSONAL\r\n")
    assert not safefs_win.update_file(path, lambda old: old, owner_uid=uid, create_parent=True)
    assert protected == []
    assert safefs_win.update_file(
        path, lambda old: (old or b"") + b"[canary]\r\n", owner_uid=uid, create_parent=True
    )
    assert path.read_bytes() == b"[personal]\r\naws_access_key_id = AKIAPERSONAL\r\n[canary]\r\n"


def test_links_are_refused_untouched(
    profile: Path, protected: list[tuple[str, str, bool]], tmp_path: Path
) -> None:
    uid = winacl.uid_for_sid(SID)
    secret = tmp_path / "secret"
    secret.write_bytes(b"system file")
    (profile / ".aws").mkdir()
    link = profile / ".aws" / "credentials"
    link.symlink_to(secret)
    with pytest.raises(UnsafePathError, match="symlink or junction"):
        safefs_win.update_file(link, lambda old: b"x", owner_uid=uid, create_parent=True)
    link.unlink()
    os.link(secret, link)
    with pytest.raises(UnsafePathError, match="2 hard links"):
        safefs_win.update_file(link, lambda old: b"x", owner_uid=uid, create_parent=True)
    assert secret.read_bytes() == b"system file" and protected == []
    other = profile / "elsewhere"
    other.mkdir()
    (profile / "junctioned").symlink_to(other)
    with pytest.raises(UnsafePathError, match="folder is a symlink"):
        safefs_win.update_file(
            profile / "junctioned" / "credentials", lambda old: b"x", owner_uid=uid, create_parent=True
        )


def test_a_file_changed_during_every_attempt_is_left_alone(
    profile: Path, protected: list[tuple[str, str, bool]]
) -> None:
    uid = winacl.uid_for_sid(SID)
    (profile / ".aws").mkdir()
    path = profile / ".aws" / "credentials"
    path.write_bytes(b"v0")
    version = iter(range(1, 100))

    def racing_edit(old: bytes | None) -> bytes:
        path.write_bytes(b"user wrote v%d" % next(version))  # the user saves meanwhile
        return b"ours"

    with pytest.raises(ConcurrentChangeError):
        safefs_win.update_file(path, racing_edit, owner_uid=uid, create_parent=True)
    assert path.read_bytes().startswith(b"user wrote")
    assert [p for p in path.parent.iterdir() if p.name != "credentials"] == []  # no temp left


def test_missing_profile_and_unknown_owner(tmp_path: Path, protected: list[tuple[str, str, bool]]) -> None:
    uid = winacl.uid_for_sid(SID)
    with pytest.raises(MissingDirectoryError):
        safefs_win.update_file(
            tmp_path / "gone" / ".aws" / "credentials", lambda o: b"x", owner_uid=uid, create_parent=True
        )
    assert safefs_win.read_file(tmp_path / "nobody" / ".aws" / "credentials", owner_uid=uid) is None
    with pytest.raises(LookupError, match="no Windows account"):
        safefs_win.read_file(tmp_path / "x", owner_uid=12345)
