"""kill -9 at random moments while a child plants and unplants in a loop: the file is always whole.

After each SIGKILL the credentials file holds exactly the "without" or the "with" bytes (never a
mix, never missing, right owner and mode), and the next plant removes any temp file the killed
writer left behind.
"""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from agent.credfile.edit import CanaryCredential, plant_bytes, plant_file, unplant_file
from agent.credfile.safefs import temp_name_pattern
from tests.support.paths import REPO_ROOT, requires_root

pytestmark = requires_root

USER, GROUP = 12345, 12346
CRED = CanaryCredential("AKIAKILLKILLKILL0001", "kill/secret+1")
ORIGINAL = b"# keep me\r\n[work]\r\naws_access_key_id = AKIAWORK\r\naws_secret_access_key = w\r\nregion=x"
KILLS = 30

CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from agent.credfile.edit import CanaryCredential, plant_file, unplant_file
    path = Path(sys.argv[1])
    cred = CanaryCredential("AKIAKILLKILLKILL0001", "kill/secret+1")
    owned = {cred.access_key_id}
    first = True
    while True:
        plant_file(path, "canary", cred, owned, owner_uid=12345, owner_gid=12346)
        unplant_file(path, "canary", owned, owner_uid=12345, owner_gid=12346)
        if first:
            print("looping", flush=True)
            first = False
    """
)


def test_sigkill_never_leaves_a_partial_or_missing_file(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, USER, GROUP)
    path = home / ".aws" / "credentials"
    plant_file(path, "canary", CRED, {CRED.access_key_id}, owner_uid=USER, owner_gid=GROUP)
    unplant_file(path, "canary", {CRED.access_key_id}, owner_uid=USER, owner_gid=GROUP)
    path.write_bytes(ORIGINAL)
    allowed = {ORIGINAL, plant_bytes(ORIGINAL, "canary", CRED, {CRED.access_key_id})}
    pattern = temp_name_pattern("credentials")
    rng = random.Random(20261122)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    seen: set[bytes] = set()
    leftovers = 0
    for _ in range(KILLS):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path)], env=env, stdout=subprocess.PIPE, cwd=REPO_ROOT
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == b"looping\n", "child did not start looping"
            # Sleep a random part of a few write cycles, then kill without warning.
            time.sleep(rng.uniform(0.0, 0.05))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
        data = path.read_bytes()
        assert data in allowed
        seen.add(data)
        st = path.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_nlink) == (USER, GROUP, 0o600, 1)
        temps = [p for p in path.parent.iterdir() if pattern.fullmatch(p.name)]
        leftovers += len(temps)
        # The next write cleans what the killed writer left.
        plant_file(path, "canary", CRED, {CRED.access_key_id}, owner_uid=USER, owner_gid=GROUP)
        assert [p.name for p in path.parent.iterdir()] == ["credentials"]
        unplant_file(path, "canary", {CRED.access_key_id}, owner_uid=USER, owner_gid=GROUP)
        assert path.read_bytes() == ORIGINAL
    # Kills landed in both states; this guards against a child that never wrote.
    assert seen == allowed
    print(f"kills={KILLS} leftover temp files cleaned={leftovers}")
