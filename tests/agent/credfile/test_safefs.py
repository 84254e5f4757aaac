"""agent.credfile.safefs (through the editor's file functions): root writing into a user's home safely.

We are root: users are just uids (12345, 23456) given to os.chown, no /etc/passwd entries needed.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.credfile import safefs
from agent.credfile.edit import (
    CanaryCredential,
    ConcurrentChangeError,
    MissingDirectoryError,
    SectionStatus,
    UnsafePathError,
    inspect_file,
    plant_file,
    unplant_file,
)
from tests.support.paths import requires_root

pytestmark = requires_root

USER, GROUP = 12345, 12346
OTHER = 23456
CRED = CanaryCredential("AKIACANARYCANARY0001", "canary/secret+1")
OWNED = {CRED.access_key_id}
ORIGINAL = b"[work]\naws_access_key_id = AKIAWORK\naws_secret_access_key = w\n"


def plant(path: Path, uid: int = USER) -> object:
    return plant_file(path, "canary", CRED, OWNED, owner_uid=uid, owner_gid=GROUP)


def make_dir(path: Path, uid: int = USER, mode: int = 0o755) -> Path:
    path.mkdir()
    os.chown(path, uid, GROUP)
    path.chmod(mode)
    return path


def make_file(path: Path, data: bytes = ORIGINAL, uid: int = USER, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    os.chown(path, uid, GROUP)
    path.chmod(mode)
    return path


def snapshot(root: Path) -> dict[str, tuple[int, int, int, bytes | str | None]]:
    """Every entry under root: (uid, mode, nlink, bytes / link target / None for dirs)."""
    seen: dict[str, tuple[int, int, int, bytes | str | None]] = {}
    for entry in sorted(root.rglob("*")):
        st = entry.lstat()
        content: bytes | str | None = None
        if stat.S_ISLNK(st.st_mode):
            content = os.readlink(entry)
        elif stat.S_ISREG(st.st_mode):
            content = entry.read_bytes()
        seen[str(entry.relative_to(root))] = (st.st_uid, st.st_mode, st.st_nlink, content)
    return seen


@pytest.fixture
def cf_home(tmp_path: Path) -> Iterator[Path]:
    tmp_path.chmod(0o755)
    yield make_dir(tmp_path / "home")


def test_plant_creates_aws_dir_and_file_owned_by_the_user(cf_home: Path) -> None:
    path = cf_home / ".aws" / "credentials"
    result = plant(path)
    aws = (cf_home / ".aws").stat()
    assert (aws.st_uid, aws.st_gid, stat.S_IMODE(aws.st_mode)) == (USER, GROUP, 0o700)
    st = path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_nlink) == (USER, GROUP, 0o600, 1)
    assert path.read_bytes().startswith(b"[canary]\naws_access_key_id = AKIACANARYCANARY0001\n")
    assert result.action == "added"
    assert inspect_file(path, "canary", OWNED, owner_uid=USER, expected=CRED).status is SectionStatus.OURS
    assert unplant_file(path, "canary", OWNED, owner_uid=USER, owner_gid=GROUP) is True
    assert path.read_bytes() == b""
    assert unplant_file(path, "canary", OWNED, owner_uid=USER, owner_gid=GROUP) is False
    assert sorted(p.name for p in (cf_home / ".aws").iterdir()) == ["credentials"]


def test_existing_file_keeps_its_bytes_and_becomes_0600(cf_home: Path) -> None:
    aws = make_dir(cf_home / ".aws", mode=0o775)  # user-owned group-writable dir is the user's choice
    path = make_file(aws / "credentials", mode=0o644)
    plant(path)
    assert path.read_bytes().startswith(ORIGINAL)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    unplant_file(path, "canary", OWNED, owner_uid=USER, owner_gid=GROUP)
    assert path.read_bytes() == ORIGINAL
    assert (path.stat().st_uid, path.stat().st_gid) == (USER, GROUP)


def test_symlinked_credentials_file_is_never_written_through(cf_home: Path, tmp_path: Path) -> None:
    target = make_file(tmp_path / "root-owned-target", b"root: do not touch\n", uid=0, mode=0o644)
    aws = make_dir(cf_home / ".aws", mode=0o700)
    link = aws / "credentials"
    link.symlink_to(target)
    os.chown(link, USER, GROUP, follow_symlinks=False)
    before = snapshot(tmp_path)
    with pytest.raises(UnsafePathError, match="symlink") as info:
        plant(link)
    assert str(link) in str(info.value)
    with pytest.raises(UnsafePathError):
        unplant_file(link, "canary", OWNED, owner_uid=USER, owner_gid=GROUP)
    with pytest.raises(UnsafePathError):
        inspect_file(link, "canary", OWNED, owner_uid=USER)
    assert snapshot(tmp_path) == before
    assert target.read_bytes() == b"root: do not touch\n"


def test_symlinked_aws_dir_is_refused(cf_home: Path, tmp_path: Path) -> None:
    elsewhere = make_dir(tmp_path / "elsewhere", uid=0)
    make_file(elsewhere / "credentials", b"[x]\ny=1\n", uid=USER)
    (cf_home / ".aws").symlink_to(elsewhere)
    before = snapshot(tmp_path)
    with pytest.raises(UnsafePathError, match="symlink"):
        plant(cf_home / ".aws" / "credentials")
    assert snapshot(tmp_path) == before


def test_root_made_symlink_in_a_root_only_directory_is_followed(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    real = make_dir(tmp_path / "real", uid=0)
    home = make_dir(real / "alice")
    (tmp_path / "homes").symlink_to(real)  # like /home -> /data/home
    path = tmp_path / "homes" / "alice" / ".aws" / "credentials"
    plant(path)
    assert (home / ".aws" / "credentials").read_bytes().startswith(b"[canary]\n")


def test_user_made_symlink_above_the_file_is_refused(cf_home: Path) -> None:
    real = make_dir(cf_home / "real")
    (cf_home / "link").symlink_to(real)
    os.chown(cf_home / "link", USER, GROUP, follow_symlinks=False)
    with pytest.raises(UnsafePathError, match="symlink"):
        plant(cf_home / "link" / ".aws" / "credentials")
    assert list(real.iterdir()) == []


@pytest.mark.parametrize(("uid", "what"), [(OTHER, "uid 23456"), (0, "uid 0")])
def test_file_owned_by_someone_else_is_refused(cf_home: Path, uid: int, what: str) -> None:
    aws = make_dir(cf_home / ".aws")
    path = make_file(aws / "credentials", uid=uid)
    before = snapshot(cf_home)
    with pytest.raises(UnsafePathError, match=what):
        plant(path)
    assert snapshot(cf_home) == before


def test_hard_link_is_refused(cf_home: Path, tmp_path: Path) -> None:
    aws = make_dir(cf_home / ".aws")
    victim = make_file(tmp_path / "victim", b"precious\n", uid=USER)
    os.link(victim, aws / "credentials")
    before = snapshot(tmp_path)
    with pytest.raises(UnsafePathError, match="hard link"):
        plant(aws / "credentials")
    assert snapshot(tmp_path) == before


def test_directory_or_fifo_in_place_of_the_file_is_refused(cf_home: Path) -> None:
    aws = make_dir(cf_home / ".aws")
    make_dir(aws / "credentials")
    with pytest.raises(UnsafePathError, match="not a regular file"):
        plant(aws / "credentials")
    os.mkfifo(aws / "config")
    os.chown(aws / "config", USER, GROUP)
    done = threading.Event()

    def attempt() -> None:
        with pytest.raises(UnsafePathError, match="not a regular file"):
            plant(aws / "config")
        done.set()

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert done.is_set(), "a FIFO in place of the file must be refused, not block the agent"


def test_missing_home_is_a_clear_error_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "nohome" / ".aws" / "credentials"
    with pytest.raises(MissingDirectoryError) as info:
        plant(path)
    assert str(tmp_path / "nohome") in str(info.value)
    assert "home" in str(info.value)
    assert not (tmp_path / "nohome").exists()
    assert unplant_file(path, "canary", OWNED, owner_uid=USER, owner_gid=GROUP) is False
    assert inspect_file(path, "canary", OWNED, owner_uid=USER).status is SectionStatus.ABSENT


def test_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    home = make_dir(tmp_path / "home", uid=OTHER)
    with pytest.raises(UnsafePathError, match="uid 23456"):
        plant(home / ".aws" / "credentials")
    assert list(home.iterdir()) == []


def test_group_writable_root_dir_is_refused_but_sticky_tmp_like_dir_is_fine(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    loose = make_dir(tmp_path / "loose", uid=0, mode=0o775)
    make_dir(loose / "home")
    with pytest.raises(UnsafePathError, match="writable by group/others"):
        plant(loose / "home" / ".aws" / "credentials")
    sticky = make_dir(tmp_path / "sticky", uid=0, mode=0o1777)
    make_dir(sticky / "home")
    plant(sticky / "home" / ".aws" / "credentials")
    other_sticky = make_dir(tmp_path / "other-sticky", uid=OTHER, mode=0o1777)
    make_dir(other_sticky / "home")
    with pytest.raises(UnsafePathError):
        plant(other_sticky / "home" / ".aws" / "credentials")


def test_relative_or_dotdot_paths_are_refused(cf_home: Path) -> None:
    with pytest.raises(UnsafePathError):
        plant(Path("relative/credentials"))
    with pytest.raises(UnsafePathError, match=r"'\.\.'"):
        plant(cf_home / ".." / "home" / "credentials")


def test_leftover_temp_files_are_cleaned_only_if_ours(cf_home: Path) -> None:
    aws = make_dir(cf_home / ".aws")
    path = make_file(aws / "credentials")
    ours = make_file(aws / ".credentials.tmp-0123456789ab", b"partial")
    ours_root = make_file(aws / ".credentials.tmp-ba9876543210", b"partial", uid=0)
    not_ours_uid = make_file(aws / ".credentials.tmp-aaaaaaaaaaaa", b"x", uid=OTHER)
    not_pattern = make_file(aws / ".credentials.tmp-notours", b"x")
    plant(path)
    assert not ours.exists() and not ours_root.exists()
    assert not_ours_uid.exists() and not_pattern.exists()


def test_a_concurrent_edit_is_not_lost(cf_home: Path) -> None:
    aws = make_dir(cf_home / ".aws")
    path = make_file(aws / "credentials")
    calls: list[bytes | None] = []

    def edit(old: bytes | None) -> bytes:
        calls.append(old)
        if len(calls) == 1:  # the user saves the file between our read and our rename
            make_file(aws / "x", ORIGINAL + b"[mine]\nk=v\n").rename(path)
        assert old is not None
        return old + b"[added]\nz=1\n"

    assert safefs.update_file(path, edit, owner_uid=USER, owner_gid=GROUP, create_parent=False)
    assert path.read_bytes() == ORIGINAL + b"[mine]\nk=v\n[added]\nz=1\n"
    assert len(calls) == 2
    assert sorted(p.name for p in aws.iterdir()) == ["credentials"]


def test_a_file_that_keeps_changing_gives_up_without_writing(cf_home: Path) -> None:
    aws = make_dir(cf_home / ".aws")
    path = make_file(aws / "credentials")
    counter = iter(range(100))

    def edit(old: bytes | None) -> bytes:
        make_file(aws / "x", f"[u{next(counter)}]\n".encode()).rename(path)
        return b"[never]\n"

    with pytest.raises(ConcurrentChangeError):
        safefs.update_file(path, edit, owner_uid=USER, owner_gid=GROUP, create_parent=False)
    assert path.read_bytes() == b"[u2]\n"
    assert sorted(p.name for p in aws.iterdir()) == ["credentials"]


def test_read_file_refuses_what_update_refuses(cf_home: Path, tmp_path: Path) -> None:
    aws = make_dir(cf_home / ".aws")
    (aws / "credentials").symlink_to(make_file(tmp_path / "t", b"x", uid=USER))
    with pytest.raises(UnsafePathError):
        safefs.read_file(aws / "credentials", owner_uid=USER)
    assert safefs.read_file(aws / "missing", owner_uid=USER) is None


def test_before_replace_sees_the_new_version_before_anyone_can_open_it(cf_home: Path) -> None:
    """The hook gets the fsync'd temp file's fd while the old version is still at the path; the
    inode it gets is the one that ends up there (so a sensor can watch it before it is visible)."""
    aws = make_dir(cf_home / ".aws")
    path = make_file(aws / "credentials")
    seen: list[tuple[int, bytes, bytes, int]] = []

    def before_replace(fd: int) -> None:
        st = os.fstat(fd)
        assert (st.st_uid, stat.S_IMODE(st.st_mode), st.st_nlink) == (USER, 0o600, 1)
        temp = Path(os.readlink(f"/proc/self/fd/{fd}"))  # write-only fd: read the temp by its name
        seen.append((st.st_ino, temp.read_bytes(), path.read_bytes(), os.stat(path).st_ino))

    old_inode = os.stat(path).st_ino
    assert safefs.update_file(
        path, lambda old: ORIGINAL + b"[new]\n", owner_uid=USER, owner_gid=GROUP, create_parent=False,
        before_replace=before_replace,
    )  # fmt: skip
    ((new_inode, new_bytes, visible_then, inode_then),) = seen
    assert new_bytes == ORIGINAL + b"[new]\n" and visible_then == ORIGINAL and inode_then == old_inode
    assert os.stat(path).st_ino == new_inode != old_inode
    # plant_file/unplant_file pass it through
    calls: list[int] = []
    plant_file(path, "canary", CRED, OWNED, owner_uid=USER, owner_gid=GROUP, before_replace=calls.append)
    unplant_file(path, "canary", OWNED, owner_uid=USER, owner_gid=GROUP, before_replace=calls.append)
    assert len(calls) == 2 and path.read_bytes() == ORIGINAL + b"[new]\n"


def test_before_replace_that_raises_replaces_nothing_and_leaves_no_temp(cf_home: Path) -> None:
    aws = make_dir(cf_home / ".aws")
    path = make_file(aws / "credentials")

    def refuse(fd: int) -> None:
        raise OSError(28, "No space left on device (fanotify marks)")

    with pytest.raises(OSError, match="No space"):
        safefs.update_file(
            path,
            lambda old: b"[x]\n",
            owner_uid=USER,
            owner_gid=GROUP,
            create_parent=False,
            before_replace=refuse,
        )
    assert path.read_bytes() == ORIGINAL
    assert sorted(p.name for p in aws.iterdir()) == ["credentials"]


def test_before_replace_is_called_again_for_a_retry(cf_home: Path) -> None:
    """The file changed between our read and the rename: the retry's temp file is a new inode too."""
    aws = make_dir(cf_home / ".aws")
    path = make_file(aws / "credentials")
    inodes: list[int] = []

    def before_replace(fd: int) -> None:
        inodes.append(os.fstat(fd).st_ino)
        if len(inodes) == 1:  # the user saves the file right now
            make_file(aws / "x", ORIGINAL + b"[mine]\n").rename(path)

    assert safefs.update_file(
        path, lambda old: (old or b"") + b"[added]\n", owner_uid=USER, owner_gid=GROUP, create_parent=False,
        before_replace=before_replace,
    )  # fmt: skip
    assert len(inodes) == 2 and os.stat(path).st_ino == inodes[1]
    assert path.read_bytes() == ORIGINAL + b"[mine]\n[added]\n"
