"""Acting with another thread's credentials: for the calling thread only, given back after."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from llsupervise.supervisor.perform.credentials import (
    access_credentials,
    acting_as,
    effective_capabilities,
    own_credentials,
)
from llsupervise.supervisor.perform.procfs import read_status

NOBODY = (b"65534", b"65534", b"", b"0000000000000000")


def _can_read(directory: int, name: str) -> bool:
    try:
        os.close(os.open(name, os.O_RDONLY, dir_fd=directory))
    except PermissionError:
        return False
    return True


def test_our_credentials_are_read_from_our_status() -> None:
    ours = own_credentials()
    assert ours is not None
    assert ours[0] == str(os.geteuid()).encode()
    assert ours == access_credentials(read_status(threading.get_native_id()))


def test_only_the_calling_thread_acts_as_another_and_gets_its_own_back(tmp_path: Path) -> None:
    secret = tmp_path / "root-only"
    secret.write_bytes(b"x")
    secret.chmod(0o600)
    tmp_path.chmod(0o777)  # anyone may search it and create in it
    # Names relative to it: the directories above are root's alone.
    directory = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    inside, done = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def other() -> None:
        before = (os.getgroups(), effective_capabilities())
        with acting_as(NOBODY):
            seen["inside"] = _can_read(directory, secret.name)
            seen["made by"] = _made_by(directory, "made")
            inside.set()
            done.wait()
        seen["after"] = _can_read(directory, secret.name)
        seen["given back"] = (os.getgroups(), effective_capabilities()) == before

    thread = threading.Thread(target=other)
    thread.start()
    inside.wait(30)  # the limit only keeps a broken test from hanging
    seen["meanwhile, another thread"] = _can_read(directory, secret.name)
    done.set()
    thread.join()
    os.close(directory)
    assert seen == {
        "inside": False,
        "made by": 65534,
        "meanwhile, another thread": True,
        "after": True,
        "given back": True,
    }


def _made_by(directory: int, name: str) -> int:
    os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=directory))
    return os.stat(name, dir_fd=directory).st_uid
