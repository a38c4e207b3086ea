"""The interface tells the person when a request got no answer from its filesystem (the
program was told EIO): here, a path the program placed in a page of a hung FUSE file, whose
read held a serving thread (see test_serving_stalls). asyncio (textual's pilot)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from fuse_server import MAPPED_NAME, hanging_fuse
from pilot_wait import until
from supervised import make_tree, policy

from llsupervise.supervisor.perform import stalls as stall_watch
from llsupervise.tui.app import build_app
from llsupervise.tui.session import LocalSession

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="root, FUSE"),
]

SCRIPT = r"""
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(sys.argv[1], os.O_RDONLY)
m = mmap.mmap(fd, 4096, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
r = libc.open(ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(m))), os.O_RDONLY)
print("stuck call:", r, ctypes.get_errno(), flush=True)
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_stalled_request_is_told_to_the_person(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stall_watch, "STALL_SECONDS", 0.5)
    root = Path(os.path.realpath(tmp_path))
    make_tree(root)
    monkeypatch.chdir(root)
    with hanging_fuse(root / "fuse") as server:
        mountpoint = server.mountpoint
        static = f'[[path_beneath]]\nallowed_access = ["read_file"]\nparent = ["{mountpoint}"]\n'
        doc = policy(root, extra_static=static)
        argv = [sys.executable, "-c", SCRIPT, str(server.mountpoint / MAPPED_NAME.decode())]
        app = build_app(LocalSession(doc, argv, forward_signals=False))
        async with app.run_test(size=(100, 30)) as pilot:

            def told() -> list[str]:
                title = "a filesystem did not answer"
                return [n.message for n in app._notifications if n.title == title]

            await until(pilot, lambda: bool(told()), "the notice")
            server.close()  # the program's exit may wait for the memory map the read held
            await until(pilot, lambda: app.model.status.exit_status is not None, "the exit")
    pid = app.model.status.pid
    assert told() == [
        f"openat (pid {pid}) got no answer from its filesystem in time: the program was told EIO"
    ]
    assert app.model.status.exit_status == 0
